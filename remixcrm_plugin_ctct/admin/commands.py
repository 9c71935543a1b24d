"""``remixcrm-ctct status | retry | flush | purge``: what an admin asks of the outbox."""

import datetime as dt
import sqlite3
import sys
import time

from .. import config, runtime as dispatch
from ..store import db, outbox_admin
from ..delivery.send import QUOTA_KEY
from ..store.outbox import THROTTLED

STATES = ("pending", "sending", "delivered", "dead", "skipped", "dry_run")


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _ago(epoch: float) -> str:
    seconds = int(time.time() - epoch)
    hours, rest = divmod(max(0, seconds), 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"


def status(say, client_id: str | None = None) -> int:
    rt = dispatch.runtime()
    try:
        rt.journal.fold_into(rt.outbox)  # include what hooks wrote moments ago (and orphaned journals)
        if client_id is not None:
            return _client_status(say, rt, client_id)
        summary = outbox_admin.summary(rt.outbox)
        loaded = config.load(config.config_path())
        pauses = _pauses(rt, loaded)
        throttled = rt.outbox.counter_today(THROTTLED)
    except sqlite3.Error as e:
        say(_unreadable("outbox", rt.outbox.path, e, "the events it holds cannot be sent"))
        return 1
    say(f"outbox {rt.outbox.path}")
    for state in STATES:
        say(f"  {state:<10}{summary.counts.get(state, 0):>8}")
    if summary.oldest_pending_at is not None:
        say(f"  oldest unsent event: {_ago(summary.oldest_pending_at)} old")
    for line in pauses:
        say(f"paused: {line}")
    code = 0
    if loaded.settings is not None:
        governor = rt.governor_for(loaded.settings)
        try:
            say(f"requests today (UTC): {governor.today_count()} of {loaded.settings.daily_quota}")
        except sqlite3.Error as e:
            say(_unreadable("rate governor", governor.path, e, "it only holds today's request count"))
            code = 1
    say(f"throttled answers today (UTC): {throttled}")
    if summary.last_error:
        say(f"last error ({_when(summary.last_error_at)}): {summary.last_error}")
    return code


def _unreadable(what: str, path, error: sqlite3.Error, loses: str) -> str:
    """One line for a state file that cannot be read: what is wrong and what to do."""
    if db.is_damaged(error):
        return (f"the {what} file {path} is damaged ({error}): move it aside together with its -wal and -shm files "
                f"(a new one is made on the next use; {loses}), or restore it from a backup")
    return (f"the {what} file {path} cannot be read ({error}): check that the disk is fine and that the RemixCRM "
            "user may write it")


def _pauses(rt, loaded: config.LoadedConfig) -> list[str]:
    found = []
    raw = rt.outbox.get_meta(QUOTA_KEY)
    if raw is not None and float(raw) > time.time():
        found.append(f"daily quota used up; sending resumes at {_when(float(raw))}")
    if loaded.status != config.ACTIVE:
        found.append(f"config {loaded.status}: {loaded.message}")
    else:
        state = rt.tokens.store.read()
        if state is not None and state.needs_reauth:
            found.append(f"needs re-authorisation: {state.needs_reauth} (run `remixcrm-ctct login`)")
    return found


def _client_status(say, rt, client_id: str) -> int:
    rows = outbox_admin.for_client(rt.outbox, client_id)
    if not rows:
        say(f"client {client_id}: no event in the outbox. Either the hook never ran for it, the provider was not "
            "Constant Contact then, the client declined marketing email, or its email was rejected (see the log)")
        return 1
    for r in rows:
        via = "" if r["client_id"] == client_id else f" (coalesced into client {r['client_id']}'s push)"
        if r["state"] == "delivered":
            say(f"client {client_id}: reached Constant Contact{via}: contact {r['contact_id']} {r['outcome']} at {_when(r['updated_at'])} ({r['event']})")
        elif r["state"] in ("skipped", "dry_run"):
            say(f"client {client_id}: not sent{via}, on purpose, at {_when(r['updated_at'])}: {r['outcome']}")
        elif r["state"] == "dead":
            say(f"client {client_id}: NOT sent{via}, given up at {_when(r['updated_at'])}: {r['last_error']}. "
                "Fix the cause, then `remixcrm-ctct retry --dead`")
        else:
            wait = max(0, int(r["next_attempt_at"] - time.time()))
            why = f"; last error: {r['last_error']}" if r["last_error"] else ""
            say(f"client {client_id}: not sent yet{via}: {r['state']}, {r['attempts']} attempt(s), next try in {wait} s{why}")
    return 0 if rows[-1]["state"] == "delivered" else 1


def retry(say, dead: bool) -> int:
    rt = dispatch.runtime()
    count = outbox_admin.retry(rt.outbox, dead=dead)
    say(f"{count} event(s) due now{' (dead ones included)' if dead else ''}; they go out with the next event, or run `remixcrm-ctct flush`")
    return 0


def flush(say, timeout: float | None = None) -> int:
    """Send everything pending now from this process, with a progress bar on a terminal."""
    rt = dispatch.runtime()
    rt.journal.fold_into(rt.outbox)
    outbox_admin.retry(rt.outbox)  # due now: an admin asked for it
    total = rt.outbox.due_count()
    if total == 0:
        say("nothing to send")
        return 0
    rt.sender.wake()
    deadline = None if timeout is None else time.monotonic() + timeout
    tty = sys.stdout.isatty()
    while True:
        settled = rt.sender.flush(0.5)
        left = rt.outbox.due_count() + rt.outbox._query("SELECT count(*) FROM events WHERE state = 'sending'")[0][0]
        if tty:
            done = total - min(total, left)
            bar = "#" * (30 * done // total)
            sys.stdout.write(f"\rsending [{bar:<30}] {done}/{total}")
            sys.stdout.flush()
        if settled or (deadline is not None and time.monotonic() > deadline):
            break
    if tty:
        sys.stdout.write("\n")
    pause = rt.sender.paused
    summary = outbox_admin.summary(rt.outbox)
    say(f"delivered {summary.counts.get('delivered', 0)}, pending {summary.counts.get('pending', 0)}, dead {summary.counts.get('dead', 0)}"
        + (f"; paused by {pause.reason}" if pause else ""))
    return 0 if not summary.counts.get("pending") else 1


def purge(say) -> int:
    rt = dispatch.runtime()
    loaded = config.load(config.config_path())
    days = loaded.settings.retention_days if loaded.settings else config.NUMBERS["retention_days"]
    count = outbox_admin.purge(rt.outbox, days * 86400)
    say(f"forgot the emails and names of {count} event(s) delivered more than {days:g} days ago; their status records stay")
    return 0
