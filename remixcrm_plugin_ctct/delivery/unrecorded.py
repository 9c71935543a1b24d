"""Pushes that reached Constant Contact but whose outcome the outbox could not record then (a full
disk: SQLite's "database or disk is full"; the shared store out of reach).

Such a row must not be sent again: it stays leased to this process (the lease keeper renews it)
and is marked delivered as soon as the outbox takes writes again, before this process claims
anything else. Only if the process ends first is it sent again by the next one (at least once).
"""

import threading
from collections.abc import Iterable

from .. import forksafe
from ..store.interfaces import Outbox


class Unrecorded:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[int, tuple[str | None, str]] = {}  # row id -> (contact id, outcome)
        forksafe.after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._done = {}  # the parent's rows, leased to the parent: it records them

    def add(self, done: Iterable[tuple[int, str | None, str]]) -> None:
        with self._lock:
            for row_id, contact_id, outcome in done:
                self._done[row_id] = (contact_id, outcome)

    def ids(self) -> set[int]:
        with self._lock:
            return set(self._done)

    def __len__(self) -> int:
        return len(self._done)

    def record(self, outbox: Outbox) -> None:
        """Mark them delivered, in one transaction; raises (and keeps them) when the outbox still
        cannot take it."""
        with self._lock:
            done = [(row_id, *outcome) for row_id, outcome in self._done.items()]
        if not done:
            return
        outbox.delivered_many(done)
        with self._lock:
            for row_id, *_ in done:
                self._done.pop(row_id, None)
