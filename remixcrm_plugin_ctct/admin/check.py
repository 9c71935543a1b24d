"""``remixcrm-ctct check``: would sending work with this setup? One line per fact, with the fix.

Reads the config as the plugin does, then asks Constant Contact (or the sandbox) the cheapest
questions: is the token alive, does it have the scope, does the list exist. Prints no secret.
"""

import datetime as dt
import json
import tempfile
import time
from collections.abc import Callable

from .. import config, runtime
from ..ctct import client, oauth
from ..ctct.token_manager import REAUTH_FIX, NeedsReauth, TokenUnavailable, describe_expiry
from ..store import outbox_admin
from ..store.interfaces import StoreUnavailable
from ..store.postgres.outbox import PgOutbox
from . import check_mapping
from .check_mapping import FAIL, OK, WARN, Check

__all__ = ["FAIL", "MARKS", "OK", "WARN", "Check", "main", "run_checks"]

MARKS = {OK: "✓", FAIL: "✗", WARN: "!"}


def run_checks() -> list[Check]:
    path = config.config_path()
    loaded = config.load(path)
    if loaded.status == config.INACTIVE:
        return [
            Check(
                "provider selected",
                FAIL,
                loaded.message,
                "choose Constant Contact in Settings → Integrations → Email Marketing",
            )
        ]
    if loaded.status == config.INVALID or loaded.settings is None:
        return [
            Check("config readable", FAIL, loaded.message, "see the message: it names the key and the fix"),
            *check_mapping.mapping_checks(loaded, None),
        ]
    settings = loaded.settings
    found = [
        Check("provider selected", OK, f"constant_contact in {path}"),
        Check("list id", OK, f"{settings.list_id} is a UUID"),
    ]
    rt = runtime.runtime()
    store = _store_check(rt)
    found.append(store)
    if store.status == FAIL:  # tokens, budget and outbox live there: nothing more can be asked
        return found + [_data_dir_check(rt)]
    state = rt.tokens.state(settings)
    if not state.access_token and not state.refresh_token:
        found.append(
            Check(
                "token present",
                FAIL,
                "no access token in the config or the token store",
                "run `remixcrm-ctct login`, or paste a token in Settings → Integrations → Email Marketing",
            )
        )
    else:
        found.append(
            Check(
                "token present",
                OK,
                "in the token store" if state.seeded_from and not settings.access_token else "in the config",
            )
        )
        live = _live_checks(settings, rt)
        found += live
        if all(c.status != FAIL for c in live):  # the token works and may read lists: ask about the rest
            api = client.CtctClient(settings.api_base_url, rt.tokens.state(settings).access_token or "")
            found += check_mapping.list_checks(settings, api)
            found += check_mapping.mapping_checks(loaded, lambda request: request(api))
        else:
            found += check_mapping.mapping_checks(loaded, None)
    refresh_ok = bool(rt.tokens.state(settings).refresh_token and settings.client_id)
    found.append(
        Check(
            "refresh possible",
            OK if refresh_ok else WARN,
            "refresh token and client_id present"
            if refresh_ok
            else "no refresh token or no client_id: the token cannot be renewed when it expires",
            "" if refresh_ok else "set client_id and run `remixcrm-ctct login`",
        )
    )
    found.append(_data_dir_check(rt))
    found.append(_outbox_check(rt))
    return found


def _live_checks(settings: config.Settings, rt: runtime.Runtime) -> list[Check]:
    found = []
    state = rt.tokens.state(settings)
    token = state.access_token
    try:
        client.CtctClient(settings.api_base_url, token or "").privileges()
        found.append(Check("token works", OK, f"{settings.api_base_url} accepts it"))
    except client.ApiError as e:
        if e.status != 401:
            return [
                Check(
                    "token works",
                    FAIL,
                    f"cannot ask {settings.api_base_url}: {e}",
                    "check api_base_url and the network",
                )
            ]
        try:  # expired or revoked: would the plugin's own refresh save the day?
            token = rt.tokens.refresh(settings, stale=token)
            found.append(Check("token works", OK, "it had expired; refreshed just now and saved"))
        except (NeedsReauth, TokenUnavailable, oauth.OAuthError) as refresh_error:
            return [
                Check(
                    "token works",
                    FAIL,
                    f"rejected (401) and refresh failed: {str(refresh_error).split(';')[0]}",
                    REAUTH_FIX,
                )
            ]
    found.append(_expiry_check(rt.tokens.state(settings).expires_at))
    try:
        found_list = client.CtctClient(settings.api_base_url, token or "").get_list(settings.list_id)
    except client.ApiError as e:
        if e.status == 403:
            return found + [
                Check(
                    "scopes",
                    FAIL,
                    f"the token may not read lists: {e}",
                    "log in again with `remixcrm-ctct login` (scopes contact_data offline_access)",
                )
            ]
        if e.status == 404:
            return found + [
                Check("scopes", OK, "contact_data"),
                Check(
                    "list exists",
                    FAIL,
                    f"no list {settings.list_id} in this account",
                    "copy the right List ID from Constant Contact into "
                    "Settings → Integrations → Email Marketing → List ID",
                ),
            ]
        return found + [Check("list exists", FAIL, str(e), "run again later, or check api_base_url")]
    found.append(Check("scopes", OK, "contact_data"))
    name, members = found_list.get("name", "?"), found_list.get("membership_count", "?")
    if found_list.get("deleted_at"):
        found.append(
            Check(
                "list exists",
                FAIL,
                f"list {name!r} was deleted on {found_list['deleted_at']}",
                "choose a live list in Settings → Integrations → Email Marketing → List ID",
            )
        )
    else:
        found.append(Check("list exists", OK, f"{name!r}, {members} member(s)"))
    return found


def _expiry_check(expires_at: float | None) -> Check:
    # the expiry comes from a token response or a hand-edited file: any value is described, none crashes
    expiry = describe_expiry(expires_at)
    if expires_at is None:
        return Check("access-token expiry", OK, f"expires at {expiry}")
    try:
        dt.datetime.fromtimestamp(expires_at, dt.UTC)
    except (TypeError, OverflowError, ValueError, OSError):  # nan, inf, a year past 9999, not a number
        return Check(
            "access-token expiry",
            WARN,
            f"expires at {expiry}: not a real expiry",
            "run `remixcrm-ctct login` for a token whose expiry the plugin can plan by",
        )
    if expires_at < time.time():
        return Check("access-token expiry", WARN, f"expired at {expiry}; it is refreshed before the next send")
    return Check("access-token expiry", OK, f"expires at {expiry}")


def _data_dir_check(rt: runtime.Runtime) -> Check:
    try:
        rt.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=rt.data_dir):
            pass
    except OSError as e:
        return Check(
            "data dir writable",
            FAIL,
            f"{rt.data_dir}: {e.strerror}",
            "make it writable by the RemixCRM user, or set REMIXCRM_DATA_DIR",
        )
    return Check("data dir writable", OK, str(rt.data_dir))


def _store_check(rt: runtime.Runtime) -> Check:
    """Which store holds the shared state; for PostgreSQL: reachable, schema version, hosts."""
    if rt.store.kind == "sqlite":
        return Check("state store", OK, f"SQLite files in {rt.data_dir} (one host; state_url shares it across hosts)")
    box = rt.outbox
    try:
        hosts = box.hosts_active() if isinstance(box, PgOutbox) else 0
    except StoreUnavailable as e:
        return Check(
            "state store",
            FAIL,
            str(e),
            "check state_url (or REMIXCRM_CTCT_STATE_URL), that PostgreSQL runs and this host may reach it "
            "(README: Running on several hosts)",
        )
    version = box.db.version if isinstance(box, PgOutbox) else None
    return Check(
        "state store",
        OK,
        f"{box.location}: reachable, schema version {version}, {hosts} host(s) active in the last hour",
    )


def _outbox_check(rt: runtime.Runtime) -> Check:
    counts = outbox_admin.summary(rt.outbox).counts
    pending, dead = counts.get("pending", 0) + counts.get("sending", 0), counts.get("dead", 0)
    detail = f"{pending} pending, {dead} dead, {counts.get('delivered', 0)} delivered"
    if dead:
        return Check(
            "outbox", WARN, detail, "see `remixcrm-ctct status`, fix the cause, then `remixcrm-ctct retry --dead`"
        )
    return Check("outbox", OK, detail)


def main(say: Callable[[str], None], as_json: bool = False) -> int:
    checks = run_checks()
    ok = all(c.status != FAIL for c in checks)
    if as_json:
        say(json.dumps({"ok": ok, "checks": [c._asdict() for c in checks]}, indent=2))
    else:
        for c in checks:
            say(f"{MARKS[c.status]} {c.name}: {c.detail}" + (f"\n    fix: {c.fix}" if c.fix else ""))
        say("sending would work" if ok else "sending would NOT work: fix the ✗ lines above")
    return 0 if ok else 1
