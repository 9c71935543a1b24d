"""What the admin commands may ask of this process's machinery: data in, data out. The CLI
(:mod:`.commands`) formats it; nothing here prints."""

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from ..ctct.client import ApiError
from ..ctct.token_manager import NeedsReauth, TokenUnavailable
from ..delivery.api_calls import QuotaUsedUp
from ..delivery.mirror import Mirror
from ..delivery.optouts import last_poll
from ..delivery.pauses import Pause
from ..delivery.send import QUOTA_KEY
from ..delivery.suppression import MIRROR_MAX_AGE
from ..runtime import runtime
from ..store import outbox_admin
from ..store.interfaces import OptOut
from ..store.outbox import THROTTLED


@dataclass
class Status:
    outbox_path: str  # where the outbox lives: a file, or the shared store (password masked)
    counts: dict[str, int]
    oldest_pending_at: float | None
    last_error: str | None
    last_error_at: float | None
    quota_paused_until: float | None  # epoch time, when the daily quota pauses every process
    config_problem: str | None  # the config is not active: its status and message
    needs_reauth: str | None
    throttled_today: int
    daily_quota: int | None = None  # None without settings
    requests_today: int | None = None
    governor_path: Path | None = None
    governor_error: sqlite3.Error | OSError | None = None  # the governor's file cannot be read
    suppressed: dict[str, int] | None = None  # the suppression mirror's reason -> emails; None: never synced
    mirror_synced_at: float | None = None
    optout_poll_minutes: float | None = None  # None without settings; 0: polls off
    last_optout_poll: tuple[float, str | None] | None = None  # (when, error or None); None: never polled


@dataclass
class FlushResult:
    total: int  # events due when the flush began (0: nothing to send)
    counts: dict[str, int] = field(default_factory=dict)
    pause: Pause | None = None


def outbox_path() -> str:
    return runtime().outbox.location


def status() -> Status:
    """The outbox's counts, the pauses in force and today's requests. Raises sqlite3.Error when
    the outbox cannot be read (StoreUnavailable when the shared store cannot be reached)."""
    rt = runtime()
    rt.journal.fold_into(rt.outbox)  # include what hooks wrote moments ago (and orphaned journals)
    summary = outbox_admin.summary(rt.outbox)
    loaded = config.load(config.config_path())
    raw = rt.outbox.get_meta(QUOTA_KEY)
    quota_until = float(raw) if raw is not None and float(raw) > time.time() else None
    problem = reauth = None
    if loaded.status != config.ACTIVE:
        problem = f"{loaded.status}: {loaded.message}"
    else:
        state = rt.tokens.store.read()
        reauth = state.needs_reauth if state is not None else None
    found = Status(
        rt.outbox.location,
        summary.counts,
        summary.oldest_pending_at,
        summary.last_error,
        summary.last_error_at,
        quota_until,
        problem,
        reauth,
        rt.outbox.counter_today(THROTTLED),
    )
    mirror = Mirror(rt.store.suppressions)
    found.mirror_synced_at = mirror.synced_at()
    if found.mirror_synced_at is not None:
        found.suppressed = mirror.store.counts()
    found.last_optout_poll = last_poll(mirror)
    if loaded.settings is not None:
        found.optout_poll_minutes = loaded.settings.optout_poll_minutes
        governor = rt.governors.for_settings(loaded.settings)
        found.daily_quota, found.governor_path = loaded.settings.daily_quota, governor.path
        try:
            found.requests_today = governor.today_count()
        except (sqlite3.Error, OSError) as e:
            found.governor_error = e
    return found


@dataclass
class OptOuts:
    entries: list[OptOut]
    synced_at: float | None  # the mirror's last complete pass (None: never)
    sync_problem: str | None = None  # why it could not be brought up to date first (then: as of synced_at)


def opt_outs(since: float | None, sync: bool = True) -> OptOuts:
    """The opt-outs recorded after ``since`` (see ``opt_outs.py``), the mirror first brought up to
    date (read-only requests, when its last pass is over a minute old) unless ``sync`` is off."""
    rt = runtime()
    problem = None
    if sync:
        loaded = config.load(config.config_path())
        if loaded.settings is None:
            problem = f"the config is {loaded.status} ({loaded.message})"
        else:
            try:
                rt.mirror.refresh(rt.delivery.calls.caller(loaded.settings, "optouts"), max_age=MIRROR_MAX_AGE)
            except (ApiError, TokenUnavailable) as e:
                problem = f"Constant Contact did not answer as expected ({e})"
            except NeedsReauth as e:
                problem = f"Constant Contact needs re-authorisation ({e}; run `remixcrm-ctct login`)"
            except QuotaUsedUp:
                problem = "the daily quota counted here is used up (it resets at 00:00 UTC)"
    return OptOuts(rt.mirror.store.opt_outs(since), rt.mirror.synced_at(), problem)


def for_client(client_id: str) -> list[dict]:
    """The outbox rows that carry ``client_id`` (its own, or one it was coalesced into), oldest first."""
    rt = runtime()
    rt.journal.fold_into(rt.outbox)
    return outbox_admin.for_client(rt.outbox, client_id)


def retry(dead: bool) -> int:
    """Make every pending event (with ``dead``: dead ones too) due now; returns how many."""
    return outbox_admin.retry(runtime().outbox, dead=dead)


def flush(timeout: float | None = None, progress: Callable[[int, int], None] | None = None) -> FlushResult:
    """Send everything pending now from this process: ``progress(done, total)`` after each look,
    until settled or ``timeout`` seconds."""
    rt = runtime()
    rt.journal.fold_into(rt.outbox)
    outbox_admin.retry(rt.outbox)  # due now: an admin asked for it
    total = rt.outbox.due_count()
    if total == 0:
        return FlushResult(0)
    rt.worker.wake()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        settled = rt.worker.flush(0.5)
        if progress is not None:
            left = rt.outbox.due_count() + rt.outbox.in_flight_count()
            progress(total - min(total, left), total)
        if settled or (deadline is not None and time.monotonic() > deadline):
            break
    return FlushResult(total, outbox_admin.summary(rt.outbox).counts, rt.worker.paused)


def purge() -> tuple[int, float]:
    """Forget personal data of events delivered before the retention time; (how many, days)."""
    loaded = config.load(config.config_path())
    days = float(loaded.settings.retention_days if loaded.settings else config.NUMBERS["retention_days"])
    return outbox_admin.purge(runtime().outbox, days * 86400), days


def migrate_state(dry_run: bool) -> tuple[str, dict[str, int]] | None:
    """Copy (or count) this host's SQLite store into the shared store; None without a state_url."""
    where = config.state_location(config.config_path())
    if where.url is None:
        return None
    from ..store import postgres
    from ..store.postgres.migrate import migrate

    box, tokens, budget = postgres.open_store(where.url, where.schema, config.data_dir())
    try:
        return box.location, migrate(config.data_dir(), box, tokens, budget, dry_run)
    finally:
        box.close()
