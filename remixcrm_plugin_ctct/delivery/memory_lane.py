"""Events the outbox could not take (a full disk, a read-only data dir), held in memory.

A bounded stand-in for the outbox with the same promises while the process lives: each event
keeps its retry schedule (``next_at``, ``attempts``) like an outbox row, and the sender moves
the whole lane into the outbox as soon as the disk takes writes again. What is still here at
exit is lost, and the exit log says how many.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..store import newest

log = logging.getLogger("remixcrm_plugin_ctct")

LIMIT = 10_000  # events; beyond this the hook drops new ones (and says so)
MOVE_EVERY = 1.0  # seconds between tries to move the lane into the outbox


@dataclass
class MemoryEvent:
    record: dict  # a journal record (see journal.record): email, client_id, event, fields, at, ...
    attempts: int = 0
    next_at: float = 0.0  # epoch seconds when it may be tried (again)
    # every event of this email waiting here, as recorded; ``record`` is their newest state. Like
    # outbox rows, one push per email of its newest state: sent one by one, an older "yes" went
    # out before a newer "no" (and subscribed someone who declined), older fields after newer ones
    records: list = field(default_factory=list)


def _key(record):
    return record["email"].lower() if isinstance(record, dict) and isinstance(record.get("email"), str) else None


def _merged(records: list) -> dict:
    state: newest.State | None = None
    for r in sorted(records, key=newest.stamp):
        state = newest.merge(state, r)
    assert state is not None, "a lane item holds at least one record"
    found = {
        "email": state.contact["email"],
        "client_id": state.client_id,
        "event": state.event,
        "fields": state.contact["fields"],
        "at": state.at,
        "seq": state.seq,
    }
    if "email_opt_in" in state.contact:
        found["email_opt_in"] = state.contact["email_opt_in"]
    return found


class MemoryLane:
    def __init__(self, limit: int = LIMIT):
        self.limit = limit
        self._items: deque[MemoryEvent] = deque()
        self._waiting: dict = {}  # email key -> its item in _items (not one a worker has taken)
        self._lock = threading.Lock()  # a new lane (and lock) is made in a forked child
        self._moved_at = float("-inf")

    def __len__(self) -> int:
        return len(self._items)

    def add(self, record: dict) -> bool:
        """Keep one event; False when the lane is full (the caller reports it as dropped)."""
        key = _key(record)
        with self._lock:
            item = self._waiting.get(key) if key is not None else None
            if item is not None:
                item.records.append(record)
                item.record = _merged(item.records)
                return True
            if len(self._items) >= self.limit:
                return False
            item = MemoryEvent(record, records=[record])
            self._items.append(item)
            if key is not None:
                self._waiting[key] = item
            return True

    def take(self, now: float) -> MemoryEvent | None:
        """Remove and return the first event that is due, counting the attempt."""
        with self._lock:
            for n, item in enumerate(self._items):
                if item.next_at <= now:
                    del self._items[n]
                    if self._waiting.get(_key(item.record)) is item:
                        del self._waiting[_key(item.record)]
                    item.attempts += 1
                    return item
        return None

    def put_back(self, item: MemoryEvent, when: float, count_attempt: bool = True) -> None:
        """Back in the lane, due at ``when`` (a retry, or held back by a pause)."""
        if not count_attempt:
            item.attempts -= 1
        item.next_at = when
        key = _key(item.record)
        with self._lock:
            newer = self._waiting.get(key) if key is not None else None
            if newer is not None:  # events of this email arrived while it was out: one item, newest state
                newer.records[:0] = item.records
                newer.record = _merged(newer.records)
                newer.attempts, newer.next_at = max(newer.attempts, item.attempts), max(newer.next_at, when)
                return
            self._items.append(item)
            if key is not None:
                self._waiting[key] = item

    def due_count(self, until: float) -> int:
        with self._lock:
            return sum(1 for item in self._items if item.next_at <= until)

    def next_due_at(self) -> float | None:
        with self._lock:
            return min((item.next_at for item in self._items), default=None)

    def wait_for(self, seconds: float) -> float:
        """``seconds``, or less when an event here falls due sooner."""
        due = self.next_due_at()
        if due is None:
            return seconds
        return min(seconds, max(0.01, due - time.time()))

    def move_if_due(self, write: Callable[[list[dict]], object]) -> None:
        """Into the outbox (``write``) as soon as it takes writes again: from there they are
        durable. Tried at most every ``MOVE_EVERY`` seconds; while it fails they go out from here."""
        if not self._items or time.monotonic() - self._moved_at < MOVE_EVERY:
            return
        self._moved_at = time.monotonic()
        try:
            moved = self.move_to(write)
        except Exception:  # still not writable
            return
        if moved:
            log.info("the outbox is writable again: %d event(s) kept in memory are now recorded in it", moved)

    def move_to(self, write: Callable[[list[dict]], object]) -> int:
        """Hand every event to ``write(records)`` (the outbox) in one go; if it raises, they stay
        here and the error propagates. Returns how many moved. The lock is held across the
        write so no worker takes an event that is being moved (it would be sent twice)."""
        with self._lock:
            if not self._items:
                return 0
            write([r for item in self._items for r in (item.records or [item.record])])
            count = sum(len(item.records) or 1 for item in self._items)
            self._items.clear()
            self._waiting.clear()
            return count
