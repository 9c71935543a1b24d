"""Our table of the config, ``[email_marketing.constant_contact]``: the validated settings (each default
stated once, here) and how the table is parsed into them."""

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import values
from .fields import FieldMap
from .messages import SECTION, SETTINGS_PATH, show

PROVIDERS = ("constant_contact", "mailchimp", "none")
DEFAULT_API_BASE_URL = "https://api.cc.email/v3"
DEFAULT_TOKEN_URL = "https://authz.constantcontact.com/oauth2/default/v1/token"
DEFAULT_STATE_SCHEMA = "remixcrm_ctct"
ACTIVE, INACTIVE, INVALID = "active", "inactive", "invalid"
SENDERS = ("thread", "process")  # where delivery runs: threads in the host's process, or one helper process
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class Settings:
    """The ``[email_marketing.constant_contact]`` table, validated. Secrets stay out of repr."""

    list_id: str
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    token_expires_at: dt.datetime | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    api_base_url: str = DEFAULT_API_BASE_URL
    token_url: str = DEFAULT_TOKEN_URL
    max_age_hours: float = 72.0
    retention_days: float = 30.0
    requests_per_second: float = 4.0
    daily_quota: int = 10_000
    consent_guard: bool = True
    restore_deleted: bool = False
    dry_run: bool = False
    # shared state for several hosts (see config/state.py); None: the SQLite files in the data dir
    state_url: str | None = field(default=None, repr=False)  # may hold a password
    state_schema: str = DEFAULT_STATE_SCHEMA
    # clients whose consent RemixCRM never recorded: "implicit" (bulk import: permission implicit,
    # never re-subscribes), "skip" (not sent) or "explicit" (sign_up_form after a lookup)
    unknown_consent: str = "implicit"
    import_window_seconds: float = 3.0  # how long the first due import row waits for company
    # the list each event joins (None: list_id), and the lists a converted lead leaves
    client_created_list_id: str | None = None
    lead_converted_list_id: str | None = None
    remove_from_list_ids: tuple[str, ...] = ()
    optout_poll_minutes: float = 15.0  # how often the worker brings the suppression mirror up to date; 0: never
    sender: str = SENDERS[0]


@dataclass(frozen=True)
class LoadedConfig:
    """One reading of the file: ``active`` with settings, ``inactive`` or ``invalid`` with why.
    ``sender`` is read even from an otherwise broken table: a host told to keep delivery out of
    its process must never start sender threads because some other key is wrong."""

    status: str
    message: str
    path: Path
    settings: Settings | None = None
    # [email_marketing.constant_contact.fields], read also when the rest is invalid (the hook still
    # records events then, with their fields); its problems are ERRORs that pause nothing
    fields: FieldMap = ()
    warnings: tuple[str, ...] = ()
    sender: str = Settings.sender


def _defaults(*keys: str) -> dict[str, Any]:
    return {key: Settings.__dataclass_fields__[key].default for key in keys}


# the optional numeric and true/false keys; their defaults are the dataclass's, stated once
NUMBERS: dict[str, float] = _defaults(
    "max_age_hours",
    "retention_days",
    "requests_per_second",
    "daily_quota",
    "import_window_seconds",
    "optout_poll_minutes",
)
UNKNOWN_CONSENT = ("implicit", "skip", "explicit")
SWITCHES: dict[str, bool] = _defaults("consent_guard", "restore_deleted", "dry_run")


def section(marketing: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """``email_marketing.constant_contact`` of the ``[email_marketing]`` table, {} if absent."""
    table = marketing.get("constant_contact")
    if table is None:
        return {}
    if not isinstance(table, dict):
        problems.append(f"{SECTION} must be a table ([{SECTION}] with its keys below it; got {show(table)})")
        return {}
    return table


def parse_section(table: dict[str, Any], problems: list[str], require_list: bool = True) -> Settings | None:
    """The settings, or None with what is wrong appended to ``problems``. ``require_list=False``:
    a missing list is not a problem (``login`` and ``refresh`` need no list), its id is then ""."""
    said = len(problems)
    list_id = values.text(table, "list_id", problems)
    if not require_list:
        list_id = list_id or ""
    elif list_id is None:
        if len(problems) == said:  # (a wrongly typed one is named already)
            problems.append(
                f"{SECTION}.list_id is missing: set it in {SETTINGS_PATH} → List ID "
                "(the list's UUID from Constant Contact)"
            )
    elif not _UUID.fullmatch(list_id):
        problems.append(
            f"{SECTION}.list_id {show(list_id)} is not a UUID: copy the list's id from Constant Contact "
            f"into {SETTINGS_PATH} → List ID"
        )
    # a missing token is not a config error: `remixcrm-ctct login` may have put one in the token store
    access_token = values.text(table, "access_token", problems, secret=True, token=True)
    api_base_url = values.url(
        values.text(table, "api_base_url", problems) or DEFAULT_API_BASE_URL, "api_base_url", problems
    )
    token_url = values.url(values.text(table, "token_url", problems) or DEFAULT_TOKEN_URL, "token_url", problems)
    expires_at = values.expiry(table.get("token_expires_at"), problems)
    refresh_token = values.text(table, "refresh_token", problems, secret=True, token=True)
    client_id = values.text(table, "client_id", problems, token=True)
    client_secret = values.text(table, "client_secret", problems, secret=True, token=True)
    numbers = {key: values.number(table, key, default, problems) for key, default in NUMBERS.items()}
    switches = {key: values.switch(table, key, default, problems) for key, default in SWITCHES.items()}
    url = values.state_url(table, problems)
    schema = values.state_schema(table, DEFAULT_STATE_SCHEMA, problems)
    unknown_consent = values.choice(table, "unknown_consent", UNKNOWN_CONSENT, problems)
    event_lists = {key: _list_key(table, key, problems) for key in EVENT_LISTS}
    removals = _removals(table, problems, [found or list_id for found in event_lists.values()])
    sender = sender_of(table, problems)
    if problems or list_id is None:
        return None
    return Settings(
        list_id,
        access_token,
        refresh_token,
        expires_at,
        client_id,
        client_secret,
        api_base_url,
        token_url,
        numbers["max_age_hours"],
        numbers["retention_days"],
        numbers["requests_per_second"],
        int(numbers["daily_quota"]),
        **switches,
        state_url=url,
        state_schema=schema,
        unknown_consent=unknown_consent,
        import_window_seconds=numbers["import_window_seconds"],
        client_created_list_id=event_lists["client_created_list_id"],
        lead_converted_list_id=event_lists["lead_converted_list_id"],
        remove_from_list_ids=removals,
        optout_poll_minutes=numbers["optout_poll_minutes"],
        sender=sender,
    )


EVENT_LISTS = ("client_created_list_id", "lead_converted_list_id")
MAX_REMOVALS = 50  # ListActivityRemoveContacts.list_ids: "up to 50"


def _list_key(table: dict[str, Any], key: str, problems: list[str]) -> str | None:
    """An optional list id: a UUID, or None (the event joins list_id)."""
    found = values.text(table, key, problems)
    if found is not None and not _UUID.fullmatch(found):
        problems.append(
            f"{SECTION}.{key} {show(found)} is not a UUID: copy the list's id from Constant Contact "
            f"(Contacts → Lists → the list's URL), or leave it out to use list_id"
        )
        return None
    return found


def _removals(table: dict[str, Any], problems: list[str], joined: list[str | None]) -> tuple[str, ...]:
    """``remove_from_list_ids``: the lists a converted lead leaves; one id or an array of ids,
    none of them a list some event joins (that would add and remove the contact at once)."""
    key = "remove_from_list_ids"
    raw = table.get(key)
    if raw is None or raw == "" or raw == []:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        problems.append(f'{SECTION}.{key} must be an array of list ids, such as ["…"] (got {show(raw)})')
        return ()
    ids = list(dict.fromkeys(i.strip() for i in items if i.strip()))
    bad = [i for i in ids if not _UUID.fullmatch(i)]
    if bad:
        problems.append(f"{SECTION}.{key}: {show(bad[0])} is not a UUID: copy the list's id from Constant Contact")
        return ()
    if len(ids) > MAX_REMOVALS:
        problems.append(f"{SECTION}.{key} holds {len(ids)} lists; Constant Contact takes at most {MAX_REMOVALS}")
        return ()
    both = [i for i in ids if i.lower() in {j.lower() for j in joined if j}]
    if both:
        problems.append(
            f"{SECTION}.{key}: {both[0]} is also the list a client_created or lead_converted event joins "
            "(client_created_list_id or lead_converted_list_id, else list_id); a converted lead would join and "
            "leave it at once: remove it from one of them"
        )
        return ()
    return tuple(ids)


def sender_of(table: dict[str, Any], problems: list[str] | None = None) -> str:
    """``sender``: "thread" (the default) or "process"; a wrong value is a problem and reads as the default."""
    return values.choice(table, "sender", SENDERS, [] if problems is None else problems)
