"""``remixcrm-ctct status | retry | flush | purge``: what an admin asks of the outbox."""

import datetime as dt
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..store import db
from ..store.interfaces import StoreUnavailable
from . import api

Say = Callable[[str], None]

STATES = ("pending", "sending", "delivered", "dead", "skipped", "dry_run")


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _ago(epoch: float) -> str:
    seconds = int(time.time() - epoch)
    hours, rest = divmod(max(0, seconds), 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"


def status(say: Say, client_id: str | None = None) -> int:
    try:
        if client_id is not None:
            return _client_status(say, client_id, api.for_client(client_id))
        found = api.status()
    except StoreUnavailable as e:
        say(f"cannot reach the shared state store: {e}; events wait in each host's journal")
        return 1
    except sqlite3.Error as e:
        say(_unreadable("outbox", api.outbox_path(), e, "the events it holds cannot be sent"))
        return 1
    say(f"outbox {found.outbox_path}")
    for state in STATES:
        say(f"  {state:<10}{found.counts.get(state, 0):>8}")
    if found.oldest_pending_at is not None:
        say(f"  oldest unsent event: {_ago(found.oldest_pending_at)} old")
    if found.quota_paused_until is not None:
        say(f"paused: daily quota used up; sending resumes at {_when(found.quota_paused_until)}")
    if found.config_problem is not None:
        say(f"paused: config {found.config_problem}")
    if found.needs_reauth:
        say(f"paused: needs re-authorisation: {found.needs_reauth} (run `remixcrm-ctct login`)")
    code = 0
    if found.governor_error is not None:
        loses = "it only holds today's request count"
        say(_unreadable("rate governor", found.governor_path, found.governor_error, loses))
        code = 1
    elif found.requests_today is not None:
        say(f"requests today (UTC): {found.requests_today} of {found.daily_quota}")
    say(f"throttled answers today (UTC): {found.throttled_today}")
    if found.suppressed is not None:
        unsubscribed, deleted = found.suppressed.get("unsubscribed", 0), found.suppressed.get("deleted", 0)
        say(f"suppressed: {unsubscribed} unsubscribed, {deleted} deleted (synced {_when(found.mirror_synced_at)})")
    if found.optout_poll_minutes is not None:
        say(_optout_poll(found.optout_poll_minutes, found.last_optout_poll))
    if found.last_error:
        say(f"last error ({_when(found.last_error_at)}): {found.last_error}")
    return code


def _optout_poll(minutes: float, last: tuple[float, str | None] | None) -> str:
    if not minutes:
        return "opt-out poll: off (optout_poll_minutes = 0); sends still bring the mirror up to date"
    shown = "never yet" if last is None else f"last {_when(last[0])}" + (f", failed: {last[1]}" if last[1] else "")
    return f"opt-out poll: every {minutes:g} min, {shown} (`remixcrm-ctct optouts` lists them)"


def _unreadable(what: str, path: str | Path | None, error: sqlite3.Error | OSError, loses: str) -> str:
    """One line for a state file that cannot be read: what is wrong and what to do."""
    if isinstance(error, StoreUnavailable):
        return f"the {what} cannot be read: {error}"
    if db.is_damaged(error):
        return (
            f"the {what} file {path} is damaged ({error}): move it aside together with its -wal and -shm files "
            f"(a new one is made on the next use; {loses}), or restore it from a backup"
        )
    return (
        f"the {what} file {path} cannot be read ({error}): check that the disk is fine and that the RemixCRM "
        "user may write it"
    )


def _client_status(say: Say, client_id: str, rows: list[dict]) -> int:
    if not rows:
        say(
            f"client {client_id}: no event in the outbox. Either the hook never ran for it, the provider was not "
            "Constant Contact then, the client declined marketing email, or its email was rejected (see the log)"
        )
        return 1
    for r in rows:
        via = "" if r["client_id"] == client_id else f" (coalesced into client {r['client_id']}'s push)"
        if r["state"] == "delivered":
            say(
                f"client {client_id}: reached Constant Contact{via}: contact {r['contact_id']} {r['outcome']} "
                f"at {_when(r['updated_at'])} ({r['event']})"
            )
        elif r["state"] in ("skipped", "dry_run"):
            say(f"client {client_id}: not sent{via}, on purpose, at {_when(r['updated_at'])}: {r['outcome']}")
        elif r["state"] == "dead":
            say(
                f"client {client_id}: NOT sent{via}, given up at {_when(r['updated_at'])}: {r['last_error']}. "
                "Fix the cause, then `remixcrm-ctct retry --dead`"
            )
        else:
            wait = max(0, int(r["next_attempt_at"] - time.time()))
            why = f"; last error: {r['last_error']}" if r["last_error"] else ""
            say(
                f"client {client_id}: not sent yet{via}: {r['state']}, {r['attempts']} attempt(s), "
                f"next try in {wait} s{why}"
            )
    return 0 if rows[-1]["state"] == "delivered" else 1


def retry(say: Say, dead: bool) -> int:
    count = api.retry(dead)
    say(
        f"{count} event(s) due now{' (dead ones included)' if dead else ''}; "
        "they go out with the next event, or run `remixcrm-ctct flush`"
    )
    return 0


def flush(say: Say, timeout: float | None = None) -> int:
    """Send everything pending now from this process, with a progress bar on a terminal."""
    tty = sys.stdout.isatty()

    def bar(done: int, total: int) -> None:
        sys.stdout.write(f"\rsending [{'#' * (30 * done // total):<30}] {done}/{total}")
        sys.stdout.flush()

    result = api.flush(timeout, bar if tty else None)
    if result.total == 0:
        say("nothing to send")
        return 0
    if tty:
        sys.stdout.write("\n")
    counts = result.counts
    say(
        f"delivered {counts.get('delivered', 0)}, pending {counts.get('pending', 0)}, dead {counts.get('dead', 0)}"
        + (f"; paused by {result.pause.reason}" if result.pause else "")
    )
    return 0 if not counts.get("pending") else 1


def purge(say: Say) -> int:
    count, days = api.purge()
    say(
        f"forgot the emails and names of {count} event(s) delivered more than {days:g} days ago; "
        "their status records stay"
    )
    return 0


def migrate_state(say: Say, dry_run: bool) -> int:
    """Copy this host's SQLite store into the PostgreSQL store that state_url names."""
    try:
        found = api.migrate_state(dry_run)
    except StoreUnavailable as e:
        say(f"✗ cannot reach the shared state store: {e}")
        return 1
    if found is None:
        say(
            "✗ no state_url: set state_url in [email_marketing.constant_contact] (or REMIXCRM_CTCT_STATE_URL) "
            "to the PostgreSQL store first; see the README's 'Running on several hosts'"
        )
        return 1
    where, counts = found
    verb = "would copy" if dry_run else "copied"
    say(f"{verb} into {where}:")
    for name, count in counts.items():
        say(f"  {name:<16}{count:>8}")
    if not dry_run:
        say("restart RemixCRM on this host to use it; running migrate-state again copies nothing twice")
    return 0
