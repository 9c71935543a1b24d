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
from dataclasses import dataclass

log = logging.getLogger("remixcrm_plugin_ctct")

LIMIT = 10_000  # events; beyond this the hook drops new ones (and says so)
MOVE_EVERY = 1.0  # seconds between tries to move the lane into the outbox


@dataclass
class MemoryEvent:
    record: dict  # a journal record (see journal.record): email, client_id, event, fields, at, ...
    attempts: int = 0
    next_at: float = 0.0  # epoch seconds when it may be tried (again)


class MemoryLane:
    def __init__(self, limit: int = LIMIT):
        self.limit = limit
        self._items: deque[MemoryEvent] = deque()
        self._lock = threading.Lock()  # a new lane (and lock) is made in a forked child
        self._moved_at = float("-inf")

    def __len__(self) -> int:
        return len(self._items)

    def add(self, record: dict) -> bool:
        """Keep one event; False when the lane is full (the caller reports it as dropped)."""
        with self._lock:
            if len(self._items) >= self.limit:
                return False
            self._items.append(MemoryEvent(record))
            return True

    def take(self, now: float) -> MemoryEvent | None:
        """Remove and return the first event that is due, counting the attempt."""
        with self._lock:
            for n, item in enumerate(self._items):
                if item.next_at <= now:
                    del self._items[n]
                    item.attempts += 1
                    return item
        return None

    def put_back(self, item: MemoryEvent, when: float, count_attempt: bool = True) -> None:
        """Back in the lane, due at ``when`` (a retry, or held back by a pause)."""
        if not count_attempt:
            item.attempts -= 1
        item.next_at = when
        with self._lock:
            self._items.append(item)

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
            write([item.record for item in self._items])
            count = len(self._items)
            self._items.clear()
            return count
