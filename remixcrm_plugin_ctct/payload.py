"""From a RemixCRM client record to a ``sign_up_form`` body. Pure functions, no I/O.

The field names and limits are those of ``ContactCreateOrUpdateInput`` in Constant Contact's
own OpenAPI document (``tests/test_payload.py`` checks them against it). Nothing else is sent.
"""

import logging
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from . import fieldmap
from .config.fields import FieldMap

log = logging.getLogger("remixcrm_plugin_ctct")

EMAIL_MAX = 50
ID_MAX = 256  # a client or lead id longer than this is cut: it only names the client in logs and `status`
# body field -> (client key, maxLength in the vendor schema)
TEXT_FIELDS = {
    "first_name": ("first_name", 50),
    "last_name": ("last_name", 50),
    "phone_number": ("phone", 25),
    "company_name": ("company", 50),
    "job_title": ("job_title", 50),
}
# deliberately loose: Constant Contact is the judge of deliverability; we only refuse
# what can never be an address (and would come back as a 400 that no retry fixes)
_BY_HAND = (
    "fix the address in RemixCRM, then add the client to the list in Constant Contact by hand: "
    "editing a client fires no hook"
)
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")
# email_opt_in as hosts spell it (SQLite-backed hosts store booleans as 0/1); compared stripped, lower-case
_OPT_IN_WORDS = {
    **dict.fromkeys(("1", "true", "yes", "y", "on", "t"), True),
    **dict.fromkeys(("0", "false", "no", "n", "off", "f"), False),
    # not asked for by anyone yet, but plainly a "no": reading them as unknown could push
    **dict.fromkeys(
        ("nope", "never", "declined", "unsubscribed", "opt-out", "opted-out", "optout", "opted out"), False
    ),
}
_OPT_IN_FIX = "set it to true or false in RemixCRM"
# shown as they are in a log line; anything else is quoted and escaped, so it cannot pose as log text
_PLAIN = re.compile(r"[\w.@:+#*/-]+")


class Contact(NamedTuple):
    """A client ready to send: every field stripped, checked and within its limit.

    A NamedTuple rather than a frozen dataclass: one is built per hook call, and the
    dataclass's per-field ``object.__setattr__`` would cost the host microseconds."""

    client_id: str
    email: str
    fields: dict  # body fields except email_address and list_memberships
    email_opt_in: bool | None = None


@dataclass(frozen=True)
class Skipped:
    """A client that will not be sent, and why (already phrased for the log)."""

    client_id: str
    reason: str
    level: int = logging.WARNING


def read(record, key):
    """``record[key]`` for a mapping, ``record.key`` for an object; None when absent, or when
    reading it raises (a lazy ORM attribute of a detached record): a field we cannot read must
    not cost the whole event."""
    return _safe(_getter(record), [])(key)


def _safe(get, failed: list):
    """``get`` that returns None instead of raising, noting the key in ``failed``."""

    def safe_get(key):
        try:
            return get(key)
        except Exception as e:
            failed.append(f"{key} ({type(e).__name__})")
            return None

    return safe_get


def _getter(record):
    if isinstance(record, dict):  # the common case first: a plain dict, no ABC check
        return record.get
    if isinstance(record, Mapping):
        return record.get
    return lambda key: getattr(record, key, None)


def shown(value, limit: int = 80) -> str:
    """A user-supplied value as a log line may carry it: as is when it is a plain word (``101``,
    ``t1-5``), else quoted and escaped like ``repr`` (a newline cannot forge a log line, a control
    character cannot rewrite the terminal) and cut to ``limit`` characters (a 5 MB id does not
    make a 5 MB log line). Never raises."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = str(value)
        except Exception:  # e.g. an int of more than 4300 digits; a __str__ that raises
            return f"<a {type(value).__name__} that cannot be shown>"
    if len(text) <= limit and _PLAIN.fullmatch(text):
        return text
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def clean_text(value: str) -> str:
    """``value`` with lone UTF-16 surrogates (which no UTF-8 encoder accepts: a SQLite bind or a
    journal write would fail on them) replaced by U+FFFD; a valid surrogate pair becomes its
    character. The common case (ASCII) costs one ``isascii``."""
    if value.isascii():
        return value
    try:
        value.encode()
        return value
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _encodable(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode()
        return True
    except UnicodeEncodeError:
        return False


def an_id(raw, lead_of: str | None = None) -> str:
    """An id as it is recorded: text, valid UTF-8, at most ``ID_MAX`` characters (a longer one is
    cut, with one WARNING): it names the client, and a line of the journal must stay small.
    ``lead_of``: the client id, when ``raw`` is the id of the lead it came from."""
    if raw is None:
        return "?"
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = str(raw)
        except Exception:  # an int of more than 4300 digits; a __str__ that raises
            text = shown(raw)
    text = clean_text(text)
    if len(text) > ID_MAX:
        cut = text[:ID_MAX]
        whose = "client" if lead_of is None else f"client {shown(lead_of)}: lead"
        log.warning(
            "%s id %s is recorded cut to its first %d characters (RemixCRM ids should be short)",
            whose,
            shown(text),
            ID_MAX,
        )
        text = cut
    return text


def opt_in_from(value) -> tuple[bool | None, bool]:
    """``email_opt_in`` as (True | False | None for unknown, understood). Booleans; the numbers
    1/0; the words true/false, yes/no, y/n, on/off, t/f, 1/0 (any case, stripped); None or ""
    mean unknown. Anything else is not understood and is unknown: never read as consent.
    A NumPy scalar (a host whose records pass through pandas) counts as its plain value:
    ``numpy.bool_(False)`` is a "no", and read as unknown it would be imported. Never raises."""
    try:
        return _opt_in(value)
    except Exception:  # a hostile object (its class, module or isinstance() raise): never consent
        return None, False


def _opt_in(value) -> tuple[bool | None, bool]:
    if value is True or value is False or value is None:
        return value, True
    module = type(value).__module__  # an exact str: a module object equal to everything is no NumPy
    if type(module) is str and module == "numpy" and not isinstance(value, (str, bytes)):  # numpy.str_ is a str
        kind = getattr(getattr(value, "dtype", None), "kind", "b")  # (what raises here: opt_in_from says unknown)
        if not isinstance(kind, str) or kind not in "biuf":
            return None, False  # a date, a duration (its .item() may be a plain int), an object
        plain = value.item()
        if type(plain) in (bool, int, float):
            return _opt_in(plain)
        return None, False
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    if isinstance(value, str):
        word = value.strip().lower()
        if not word:
            return None, True
        found = _OPT_IN_WORDS.get(word)
        if found is not None:
            return found, True
        try:
            value = float(word) if len(word) <= 32 else None  # "0.0", "1.00": a number stored as text
        except ValueError:
            return None, False
    if isinstance(value, numbers.Number):  # int, float, Decimal (bool was handled above)
        try:
            if value == 0:
                return False, True
            if value == 1:
                return True, True
        except Exception:
            pass
    return None, False


def mask_email(email) -> str:
    """``j***@example.com``: enough to recognise in a log, not enough to harvest."""
    if not isinstance(email, str) or "@" not in email:
        return "<no valid email>"
    local, _, domain = email.strip().rpartition("@")
    return f"{local[:1]}***@{domain}"


def contact_from_client(client, field_map: FieldMap = ()) -> Contact | Skipped:
    """Validate and normalise a client record, with the keys ``field_map`` maps (see
    :mod:`.fieldmap`); never raises."""
    if client is None:
        return Skipped("?", "the hook was called with client=None; RemixCRM must pass the client record")
    failed: list[str] = []  # keys whose reading raised: treated as absent, named in one WARNING
    get = _safe(_getter(client), failed)
    client_id = an_id(get("id"))
    raw_opt_in = get("email_opt_in")
    opt_in, understood = opt_in_from(raw_opt_in)
    if not understood:
        log.warning(
            "client %s: email_opt_in is a %s that means neither yes nor no (use true/false, yes/no or 1/0); "
            "treated as unknown consent, never as consent: %s",
            shown(client_id),
            type(raw_opt_in).__name__,
            _OPT_IN_FIX,
        )
    raw_email = get("email")
    email = str.strip(raw_email) if isinstance(raw_email, str) else ""  # str's own: a subclass may override
    valid = email and len(email) <= EMAIL_MAX and EMAIL_PATTERN.match(email) and _encodable(email)
    if opt_in is False and not valid:
        return Skipped(client_id, declined(client_id), logging.INFO)
    if not email:
        return Skipped(client_id, f"client {shown(client_id)} has no email address; not sent ({_BY_HAND})")
    if not valid:
        why = (
            f"is longer than {EMAIL_MAX} characters, Constant Contact's limit"
            if len(email) > EMAIL_MAX
            else "is not a valid address"
            if _encodable(email)
            else "is not a valid address (it holds a broken character, a lone UTF-16 surrogate)"
        )
        masked = shown(mask_email(email))
        return Skipped(client_id, f"client {shown(client_id)}: email {masked} {why}; not sent ({_BY_HAND})")

    fields = {}
    for body_key, (client_key, limit) in TEXT_FIELDS.items():
        value = get(client_key)
        if value is None or isinstance(value, bool) or (isinstance(value, float) and value != value):
            continue  # NaN: how pandas-backed hosts spell "no value"; never a name "nan"
        if isinstance(value, (bytes, bytearray)):  # a driver's raw column: its text, not "b'...'"
            value = bytes(value).decode("utf-8", "replace")
        try:
            value = str.strip(value if isinstance(value, str) else str(value))
        except Exception as e:  # an int of more than 4300 digits; a __str__ that raises
            failed.append(f"{client_key} ({type(e).__name__})")
            continue
        if not value:
            continue
        if len(value) > limit:
            log.warning(
                "client %s: %s is %d characters, Constant Contact allows %d; sending it truncated",
                shown(client_id),
                client_key,
                len(value),
                limit,
            )
            value = value[:limit].rstrip()
        fields[body_key] = clean_text(value)
    if field_map:
        fields.update(fieldmap.mapped(get, client_id, field_map, shown))
    if failed:
        log.warning(
            "client %s: could not read %s; sent without it (check the client record in RemixCRM)",
            shown(client_id),
            ", ".join(failed),
        )
    return Contact(client_id, email, fields, opt_in)


def declined(client_id: str) -> str:
    return f"client {shown(client_id)} declined marketing email (email_opt_in is False); not sent"


def sign_up_body(contact: Contact, list_ids: str | list[str], custom_ids: Mapping[str, str] | None = None) -> dict:
    """The JSON body for ``POST /contacts/sign_up_form``: only properties the vendor's schema
    defines (a stored name it does not know is never sent). ``custom_ids``: custom field name ->
    custom_field_id, as resolved at send time."""
    fields = contact.fields
    body = {"email_address": contact.email, **{k: fields[k] for k in TEXT_FIELDS if k in fields}}
    body.update(fieldmap.sign_up_fields(fields, custom_ids or {}))
    body["list_memberships"] = [list_ids] if isinstance(list_ids, str) else list(list_ids)
    return body
