"""What a worker does with the work it took: the rows it claimed, or one memory event. The
sender (``delivery.send.Delivery``) decides each one's fate and returns it; it is applied here."""

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ..store.interfaces import Outbox, Row
from .leases import LeaseKeeper
from .memory_lane import MemoryEvent, MemoryLane
from .pauses import Pause, PauseSwitch

log = logging.getLogger("remixcrm_plugin_ctct")

ERROR_RETRY = 60.0  # seconds before an event whose send crashed is tried again
TROUBLE_LOG_EVERY = 60.0  # seconds between "cannot use the outbox" warnings


class Sender(Protocol):
    """What the worker sends with: each call returns what becomes of the work."""

    def work_row(self, row: Row) -> Pause | None: ...  # a Pause: hold it, then the row goes back

    def work_memory(self, item: MemoryEvent) -> Pause | float | None: ...  # a float: try again then

    def shared_pause(self) -> Pause | None: ...  # set by any process (the daily quota)

    def import_policy(self) -> tuple[str, float] | None: ...  # (unknown_consent, window); None: config inactive

    # the rows left leased go back (after the Pause, if any, is held)
    def work_import(self, rows: list[Row], wait: Callable[[float], bool]) -> tuple[Pause | None, list[Row]]: ...


class Steps:
    def __init__(
        self,
        outbox: Outbox,
        sender: Sender,
        pauses: PauseSwitch,
        leases: LeaseKeeper,
        stopping: threading.Event,
        unrecorded_ids: Callable[[], set[int]] = set,
    ):
        self.outbox, self.sender, self.pauses, self.leases, self.stopping = outbox, sender, pauses, leases, stopping
        self.unrecorded_ids = unrecorded_ids  # rows pushed whose outcome waits to be recorded (delivery.unrecorded)
        self._trouble_logged_at = float("-inf")

    def rows(self, owner: str, rows: list[Row]) -> None:
        """Send claimed rows one by one; the lease keeper renews the leases of those waiting."""
        with self.leases.holding(row.id for row in rows):
            for n, row in enumerate(rows):
                if self.pauses.current is not None or self.stopping.is_set():
                    # paused (perhaps by another worker) or stopping: the rest go back untouched
                    for rest in rows[n:]:
                        self.outbox.retry_later(rest.id, time.time(), None, count_attempt=False)
                    return
                current = self.outbox.take(owner, row, self.outbox.lease_seconds)
                if current is None:
                    continue  # its lease ran out during earlier sends and another process took it
                try:
                    pause = self.sender.work_row(current)
                except Exception:  # a bug, not an API answer: log it, try the row again in a minute
                    log.exception(
                        "sending client %s hit an unexpected error; it is tried again in %.0f s",
                        row.client_id,
                        ERROR_RETRY,
                    )
                    self.outbox.retry_later(
                        row.id, time.time() + ERROR_RETRY, "unexpected error in the plugin (see the log)"
                    )
                    continue
                if pause is not None:
                    # pause first, then hand the row back: the other way round, another worker
                    # could take the row in between and meet the same wall again
                    self.pauses.hold(pause)
                    self.outbox.retry_later(row.id, pause.row_due_at(time.time()), pause.error, count_attempt=False)

    def imports(self, owner: str, rows: list[Row]) -> None:
        """Send claimed rows of the import lane together (the lease keeper renews their leases
        while the import's activity is polled)."""
        ids = [row.id for row in rows]
        with self.leases.holding(ids):
            try:
                pause, left = self.sender.work_import(rows, self.stopping.wait)
            except Exception:  # a bug, not an API answer: what is still ours is tried again in a minute
                log.exception(
                    "an import of %d row(s) hit an unexpected error; tried again in %.0f s", len(rows), ERROR_RETRY
                )
                kept = self.unrecorded_ids()  # pushed, to be recorded: never sent again
                for row_id in self.outbox.renew(owner, ids) - kept:  # only rows not already filed
                    self.outbox.retry_later(
                        row_id, time.time() + ERROR_RETRY, "unexpected error in the plugin (see the log)"
                    )
                return
            if pause is not None:
                self.pauses.hold(pause)  # first, so no other worker takes them again meanwhile
            due = time.time() if pause is None else pause.row_due_at(time.time())
            for row in left:
                self.outbox.retry_later(row.id, due, None if pause is None else pause.error, count_attempt=False)

    def memory(self, lane: MemoryLane, item: MemoryEvent) -> None:
        """Send one event taken from the memory lane; back into the lane if it must wait."""
        try:
            outcome = self.sender.work_memory(item)  # None: done; a float: retry then; a Pause: hold it
        except Exception:
            log.exception(
                "sending client %s (kept in memory) hit an unexpected error; it is tried again in %.0f s",
                item.record.get("client_id"),
                ERROR_RETRY,
            )
            outcome = time.time() + ERROR_RETRY
        if isinstance(outcome, Pause):
            self.pauses.hold(outcome)  # first, so no other worker takes it again meanwhile
            lane.put_back(item, time.time(), count_attempt=False)
        elif outcome is not None:
            lane.put_back(item, outcome)

    def outbox_trouble(self, e: Exception) -> None:
        """A step could not use the outbox (the disk, not a bug): said once a minute."""
        now = time.monotonic()
        if now - self._trouble_logged_at >= TROUBLE_LOG_EVERY:
            self._trouble_logged_at = now
            log.warning(
                "cannot use the outbox %s (%s); events kept in memory still go out, the rest waits",
                self.outbox.location,
                e,
            )
