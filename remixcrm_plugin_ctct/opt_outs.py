"""Opt-outs back to RemixCRM, as the hook ``email_marketing_opt_outs(since)`` and ``remixcrm-ctct
optouts`` give them: read from the local suppression mirror only (kept current by the worker's
opt-out poll, :mod:`.delivery.optouts`), so an answer never waits on Constant Contact.

The cursor is ``recorded_at``: when this host recorded the opt-out (its own clock), strictly
increasing in the order the mirror's writes committed. ``since`` is exclusive. A host that stores
the newest ``recorded_at`` it received and passes it back misses nothing — not an opt-out that
happened long ago but reached the mirror late (its ``opted_out_at`` is old, its ``recorded_at``
new), nor one written by a slow process while the host was reading.
"""

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from . import config
from .config.messages import show
from .runtime import runtime, watcher
from .store.interfaces import OptOut, StoreUnavailable

log = logging.getLogger("remixcrm_plugin_ctct")

# the epoch range a date-time can hold (years 1 to 9999): anything outside is not a time
_EARLIEST = dt.datetime(1, 1, 2, tzinfo=dt.UTC).timestamp()
_LATEST = dt.datetime(9999, 12, 30, tzinfo=dt.UTC).timestamp()
FIX = (
    "pass None (everything), the recorded_at of the newest entry you stored (a datetime), an ISO 8601 "
    "string such as 2026-11-02T09:00:00Z, or epoch seconds"
)


class BadSince(ValueError):
    """``since`` is not a time; the message names the fix."""


def parse_since(value: Any) -> float | None:
    """``since`` as epoch seconds (None: from the beginning). A ``datetime`` or ISO string without
    an offset is UTC; a date alone is its midnight UTC. Raises BadSince."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadSince(f"since must be a time, not {value}; {FIX}")
    if isinstance(value, int | float):
        epoch = float(value) if not isinstance(value, int) or abs(value) < 10**15 else math.inf
    elif isinstance(value, dt.datetime | dt.date):
        epoch = _datetime_epoch(value)
    elif isinstance(value, str):
        epoch = _text_epoch(value)
    else:
        raise BadSince(f"since must be a time, not a {type(value).__name__}; {FIX}")
    if not (math.isfinite(epoch) and _EARLIEST <= epoch <= _LATEST):
        raise BadSince(f"since {show(value)} is not a time between the years 1 and 9999; {FIX}")
    return epoch


def _datetime_epoch(value: dt.date) -> float:
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    try:
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    except (OverflowError, ValueError, OSError):
        return math.nan


def _text_epoch(value: str) -> float:
    text = value.strip()
    if len(text) > 64:
        raise BadSince(f"since {show(value)} is too long to be a time; {FIX}")
    try:
        return float(text)  # epoch seconds written as text ("1762074000.5"); "nan" is refused below
    except ValueError:
        pass
    try:
        return _datetime_epoch(dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")))
    except ValueError:
        raise BadSince(f"since {show(value)} is not a date-time; {FIX}") from None


def when(epoch: float) -> dt.datetime:
    """An epoch time as the aware UTC datetime an entry carries (whole microseconds: exact)."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def entry(found: OptOut) -> dict:
    """One opt-out as the hook returns it: the four keys the contract names, and the cursor."""
    return {
        "client_id": found.client_id,
        "email": found.email,
        "opted_out_at": when(found.opted_out_at),
        "source": found.source,
        "recorded_at": when(found.recorded_at),
    }


ANSWER_WITHIN = 0.5  # seconds the host's thread may wait for the store (PostgreSQL: busy or out of reach)


def _within(seconds: float, read: Callable[[], Any]) -> Any:
    """``read()`` on a helper thread, waited for at most ``seconds``: a hook never blocks the host
    on a shared store that is slow, busy or out of reach (the 3 s connect timeout). Too late, it
    raises StoreUnavailable (the answer is dropped; the host asks again with the same ``since``)."""
    done = threading.Event()
    box: list = []

    def run() -> None:
        try:
            box.append(("ok", read()))
        except BaseException as e:  # handed to the caller's thread
            box.append(("error", e))
        finally:
            done.set()

    threading.Thread(target=run, name="remixcrm-ctct-opt-outs-read", daemon=True).start()
    if not done.wait(seconds):
        raise StoreUnavailable(f"the store did not answer within {seconds:g} s")
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def handle_hook(since: Any) -> list[dict]:
    """``email_marketing_opt_outs(since)``: the opt-outs recorded after ``since``, oldest recorded
    first; [] unless Constant Contact is the active provider, and [] with one WARNING for a
    ``since`` that is not a time. Reads the local mirror and returns; when an opt-out poll is due
    it wakes the worker, which polls in the background (the next call sees what it found)."""
    loaded = watcher().current()
    if loaded.status != config.ACTIVE:
        return []
    try:
        epoch = parse_since(since)
    except BadSince as e:
        log.warning("email_marketing_opt_outs: %s; answering []", e)
        return []
    rt = runtime()

    def read() -> tuple[list, bool]:
        # whether a poll is due reads the store too (the shared time of the last pass): here as well
        return rt.mirror.store.opt_outs(epoch), rt.optouts.due(time.time())

    try:
        rows, due = _within(ANSWER_WITHIN, read)
    except StoreUnavailable as e:  # the shared store (state_url) is out of reach: like a full disk, not a bug
        log.warning("email_marketing_opt_outs: %s; answering [] (nothing is lost: ask again later)", e)
        return []
    found = [entry(o) for o in rows]
    if due:
        if loaded.sender == "process":
            rt.starter.ensure()  # the sender process polls (it runs the worker); no thread here
        else:
            rt.worker.wake()
    return found
