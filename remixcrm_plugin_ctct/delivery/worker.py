"""A few background threads that work the outbox, so the hook never waits.

Modelled on sentry-python's BackgroundWorker rather than ThreadPoolExecutor: at interpreter exit
ThreadPoolExecutor drains its *whole* queue before atexit handlers run, which would keep
RemixCRM alive for as long as the API takes. Ours are daemon threads that take one leased row
at a time from the durable outbox; at exit we use at most ``exit_budget`` seconds to send
what is due (sentry's flush-at-exit), hand back the leases, and everything unsent stays
recorded for the next run. Idle threads stop after a while; the next event starts them again.
"""

import atexit
import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Callable, NamedTuple

from .. import forksafe
from ..store import outbox as outbox_module
from .memory_lane import LIMIT as MEMORY_LIMIT
from .memory_lane import MemoryEvent, MemoryLane

log = logging.getLogger("remixcrm_plugin_ctct")

IDLE_POLL = 2.0  # seconds: also notices rows other processes left (retries, expired leases)
FOLD_QUIET = 0.02  # seconds without a hook write before the journal is folded into the outbox
FOLD_AT_LEAST_EVERY = 5.0  # ... but never later than this during a long burst
SHARED_PAUSE_CHECK = 1.0  # seconds between looks at the pause other processes may have set
CLAIM_BATCH = 4  # rows leased per claim: one transaction for several sends
ERROR_RETRY = 60.0  # seconds before a row whose send crashed is tried again
HOUSEKEEPING_EVERY = 10.0  # seconds between WAL checkpoints (and hourly purges, see delivery)
IDLE_STOP = 60.0  # seconds with nothing pending anywhere before the threads stop (an event restarts them)
MEMORY_MOVE_EVERY = 1.0  # seconds between tries to move memory-only events into the outbox
TROUBLE_LOG_EVERY = 60.0  # seconds between "the outbox cannot be read" warnings


class Pause(NamedTuple):
    """Stop taking rows: until an epoch time, or until ``changed()`` says the cause may be fixed."""

    reason: str
    until: float | None = None
    changed: Callable[[], bool] | None = None

    def over(self, now: float) -> bool:
        if self.until is not None and now >= self.until:
            return True
        return self.changed is not None and self.changed()


class OutboxSender:
    def __init__(self, outbox, work_row, work_memory, housekeeping=None, shared_pause=None, journal=None,
                 workers: int = 2, exit_budget: float = 2.0, memory_limit: int = MEMORY_LIMIT):
        self.outbox, self.work_row, self.work_memory = outbox, work_row, work_memory
        self.housekeeping, self.shared_pause, self.journal = housekeeping, shared_pause, journal
        self.workers, self.exit_budget, self.memory_limit = workers, exit_budget, memory_limit
        self._atexit_registered = False
        self._reset()
        # in a forked child every lock, condition, thread and the owner id are made anew: a parent
        # thread may hold them at fork time, and the parent's leases and memory events are its own
        forksafe.after_fork_in_child(self._reset)

    def _reset(self) -> None:
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self.memory = MemoryLane(self.memory_limit)
        self._in_flight = 0
        self._memory_in_flight = 0  # memory events taken by a worker: lost too if we exit meanwhile
        self._ticks = 0  # +1 each time a worker starts or finishes a step (see _settled)
        self._leased: set[int] = set()  # rows this process is sending (their leases are renewed)
        self._threads: list[threading.Thread] = []
        self._keeper: threading.Thread | None = None
        self._stopping = False
        self._pause: Pause | None = None
        self._pid = os.getpid()
        self._housekept_at = 0.0
        self._folded_at = time.monotonic()
        self._shared_checked_at = float("-inf")
        self._next_due: float | None = 0.0  # when the outbox next has a row to send (None: empty)
        self._woken_at = -FOLD_QUIET
        self._flushing = 0  # callers waiting in flush(): fold at once for them
        self._exiting = False  # at exit: send what the outbox holds, fold nothing more
        self._moved_at = float("-inf")
        self._trouble_logged_at = float("-inf")
        self._unreadable_said = False

    # --- called from the host's threads ---
    def wake(self) -> None:
        """New work is in the outbox (starts the threads if they are not running)."""
        now = time.monotonic()
        if len(self._threads) < self.workers:
            self._wake.set()  # before the start: a worker about to stop for idleness sees it
            self._start()
        elif now - self._woken_at >= FOLD_QUIET:
            # at most one wake per quiet period: a worker woken on every hook call during a
            # burst would steal the GIL from the hooks; it looks again after FOLD_QUIET anyway
            self._woken_at = now
            self._wake.set()

    def submit_memory(self, record: dict) -> bool:
        """The fallback when the outbox cannot be written: keep a journal record in memory (bounded)."""
        if not self.memory.add(record):
            return False
        self.wake()
        return True

    @property
    def paused(self) -> Pause | None:
        return self._pause

    def pause(self, pause: Pause) -> None:
        """Stop taking rows until ``pause`` is over (called by delivery before it hands a row back)."""
        self._pause = pause

    def flush(self, timeout: float, retries: bool = False) -> bool:
        """Wait until nothing is in flight and nothing due can be sent (a pause counts as
        settled: its cause needs a fix, not time); with ``retries``, also until the retries
        scheduled for later have been made. False after ``timeout`` seconds, and at once when
        the outbox cannot be read (then nobody can tell what is left)."""
        deadline = time.monotonic() + timeout
        self._flushing += 1
        try:
            while True:
                settled = self._settled(float("inf") if retries else None)
                if settled is not None:
                    return settled
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                with self._cond:
                    self._cond.wait(min(remaining, 0.05))  # woken when a row finishes; re-check at least every 50 ms
        finally:
            self._flushing -= 1

    def _settled(self, until: float | None = None) -> bool | None:
        """True when settled, None when not yet, False when the outbox cannot be read."""
        # The outbox read is only trusted if no worker was busy before it and none started or
        # finished during it (``_ticks`` counts both): a row in flight during the read is
        # neither due nor, a moment later, in flight any more, and would slip through.
        with self._cond:
            ticks, busy = self._ticks, self._in_flight
        if busy:
            return None
        pause = self._pause  # read once: a worker may clear it meanwhile
        if pause is not None and not pause.over(time.time()):
            return True if self._ticks == ticks else None  # nothing due can go until the cause is fixed
        if self.memory.due_count(time.time() if until is None else until):
            return None
        try:
            due = self.outbox.due_count(until)
            if not due and not self._exiting and self.journal is not None and self.journal.backlog(self.outbox.journal_offset):
                due = 1  # written by a hook, not yet folded into the outbox
        except Exception as e:
            if not os.path.exists(self.outbox.path):
                due = 0  # no outbox at all (the data dir cannot be made): only memory holds events
            else:
                if not self._unreadable_said:
                    self._unreadable_said = True
                    log.error("flush: cannot read the outbox %s (%s); what it holds is unknown", self.outbox.path, e)
                return False
        with self._cond:
            return True if due == 0 and self._ticks == ticks else None

    def close(self, timeout: float) -> int:
        """Stop, wait up to ``timeout`` for sends in flight, hand back our leases; returns how
        many events this process leaves behind: rows it handed back (they go out with the next
        run) plus events kept only in memory (lost)."""
        self._stopping = True
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._in_flight and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            self._cond.notify_all()  # the lease keeper leaves too
        for t in list(self._threads):  # idle workers leave at once; one stuck in a send is left behind
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        try:
            released = self.outbox.release(self.owner)
        except Exception:
            released = 0
        return released + self.memory_left()

    def memory_left(self) -> int:
        return len(self.memory) + self._memory_in_flight

    # --- the worker threads ---
    def _start(self) -> None:
        with self._cond:
            if self._stopping:
                return
            for n in range(len(self._threads), self.workers):
                t = threading.Thread(target=self._run, name=f"remixcrm-ctct-sender-{n}", daemon=True)
                self._threads.append(t)
                t.start()
            if self._keeper is None or not self._keeper.is_alive():
                self._keeper = threading.Thread(target=self._keep_leases, name="remixcrm-ctct-leases", daemon=True)
                self._keeper.start()
            if not self._atexit_registered:
                self._atexit_registered = True
                atexit.register(self._at_exit)

    def _run(self) -> None:
        idle_since = time.monotonic()
        while not self._stopping:
            try:
                busy = self._step()
            except (OSError, sqlite3.Error) as e:  # the disk, not a bug: memory events still go out
                self._outbox_trouble(e)
                busy = bool(len(self.memory))
                self._wait(self._memory_wait(IDLE_POLL))
            except Exception:  # never let a worker die silently; the row's lease will expire
                log.exception("the outbox sender hit an unexpected error; it carries on")
                busy = True
                self._wait(IDLE_POLL)
            now = time.monotonic()
            if busy:
                idle_since = now
            elif now - idle_since >= IDLE_STOP and self._leave_if_idle():
                return

    def _leave_if_idle(self) -> bool:
        with self._cond:
            if self._wake.is_set() or len(self.memory) or self._stopping:
                return False  # an event arrived meanwhile
            self._threads.remove(threading.current_thread())
            self._cond.notify_all()  # the lease keeper leaves with the last worker
            return True

    def _step(self) -> bool:
        """One round of work; False when there was nothing to do at all (for the idle stop)."""
        now = time.time()
        if len(self.memory) and time.monotonic() - self._moved_at >= MEMORY_MOVE_EVERY:
            self._moved_at = time.monotonic()
            self._move_memory()  # even while paused: durable is better than memory
        if self._paused_now(now):
            self._wait(1.0)
            return True
        if len(self.memory):
            item = self.memory.take(now)
            if item is not None:
                self._send_memory(item)
                return True
        if self._hooks_busy(now):
            self._wait(FOLD_QUIET)  # nothing to send yet, and the hooks should have the CPU
            return True
        with self._busy():  # before the claim, so flush() never sees a row in between
            if self.journal is not None and not self._exiting and self._fold_now():
                if self.journal.fold_into(self.outbox):  # what the hooks wrote since the last look
                    self._next_due = now
            rows = self.outbox.claim_many(self.owner, CLAIM_BATCH)
            if rows:
                self._send_rows(rows)
                return True
        if self._stopping:
            return True
        self._housekeep(now)
        due = self._next_due = self.outbox.next_due_at()
        backlog = self.journal is not None and self.journal.backlog(self.outbox.journal_offset)
        if backlog:
            due = now + FOLD_QUIET  # hooks wrote more: come back when they pause
        self._wait(self._memory_wait(IDLE_POLL if due is None else min(IDLE_POLL, max(0.01, due - now))))
        return due is not None or bool(len(self.memory))

    def _paused_now(self, now: float) -> bool:
        pause = self._pause  # read once: another worker may clear it between two reads
        if pause is None and self.shared_pause is not None and now - self._shared_checked_at >= SHARED_PAUSE_CHECK:
            self._shared_checked_at = now
            try:
                pause = self.shared_pause()  # e.g. another process hit the daily quota
            except Exception:  # an unreadable outbox holds no shared pause we could honour
                pause = None
            if pause is not None:  # never write None: another worker may have just paused
                self._pause = pause
        if pause is None:
            return False
        if not pause.over(now):
            return True
        if self._pause is pause:
            self._pause = None
            log.info("sending resumes (%s no longer holds it back)", pause.reason)
        return False

    def _send_rows(self, rows) -> None:
        with self._cond:
            self._leased.update(row.id for row in rows)
        try:
            for n, row in enumerate(rows):
                if self._pause is not None or self._stopping:
                    # paused (perhaps by another worker) or stopping: the rest go back untouched
                    for rest in rows[n:]:
                        self.outbox.retry_later(rest.id, time.time(), None, count_attempt=False)
                    return
                ids = [r.id for r in rows[n:]]  # the rest wait: renew them all
                if row.id not in self.outbox.renew(self.owner, ids, outbox_module.LEASE_SECONDS):
                    continue  # its lease ran out during earlier sends and another process took it
                try:
                    pause = self.work_row(self.outbox.refreshed(row))
                except Exception:  # a bug, not an API answer: log it, try the row again in a minute
                    log.exception("sending client %s hit an unexpected error; it is tried again in %.0f s",
                                  row.client_id, ERROR_RETRY)
                    self.outbox.retry_later(row.id, time.time() + ERROR_RETRY, "unexpected error in the plugin (see the log)")
                    continue
                if pause is not None:
                    self._pause = pause
        finally:
            with self._cond:
                self._leased.difference_update(row.id for row in rows)

    # --- events kept in memory (the outbox could not be written) ---
    def _move_memory(self) -> None:
        """Into the outbox as soon as it takes writes again: from there they are durable."""
        try:
            moved = self.memory.move_to(self.outbox.add_records)
        except Exception:  # still not writable: they go out from memory meanwhile
            return
        if moved:
            log.info("the outbox is writable again: %d event(s) kept in memory are now recorded in it", moved)

    def _send_memory(self, item: MemoryEvent) -> None:
        with self._busy():
            self._memory_in_flight += 1
            try:
                outcome = self.work_memory(item)  # None: done; a float: retry then; a Pause: hold it
            except Exception:
                log.exception("sending client %s (kept in memory) hit an unexpected error; it is tried again in %.0f s",
                              item.record.get("client_id"), ERROR_RETRY)
                outcome = time.time() + ERROR_RETRY
            finally:
                self._memory_in_flight -= 1
            if isinstance(outcome, Pause):
                self._pause = outcome  # first, so no other worker takes it again meanwhile
                self.memory.put_back(item, time.time(), count_attempt=False)
            elif outcome is not None:
                self.memory.put_back(item, outcome)

    def _memory_wait(self, seconds: float) -> float:
        due = self.memory.next_due_at()
        if due is None:
            return seconds
        return min(seconds, max(0.01, due - time.time()))

    def _outbox_trouble(self, e: Exception) -> None:
        now = time.monotonic()
        if now - self._trouble_logged_at >= TROUBLE_LOG_EVERY:
            self._trouble_logged_at = now
            log.warning("cannot use the outbox %s (%s); events kept in memory still go out, the rest waits",
                        self.outbox.path, e)

    # --- helpers ---
    @contextmanager
    def _busy(self):
        """Counts a step in flight for flush() and close()."""
        with self._cond:
            self._in_flight += 1
            self._ticks += 1
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._ticks += 1
                self._cond.notify_all()

    def _keep_leases(self) -> None:
        """Renew the leases of the rows being sent, so a long send (a token refresh waiting for
        another process, a slow API) never lets another process take a row meanwhile."""
        while True:
            every = outbox_module.LEASE_SECONDS / 3
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or not self._threads, timeout=every)
                if self._stopping or not self._threads:
                    return
                ids = sorted(self._leased)
            if ids:
                try:
                    self.outbox.renew(self.owner, ids, outbox_module.LEASE_SECONDS)
                except Exception as e:  # the lease may expire: at worst a second send of the row
                    log.warning("could not renew the leases of %d row(s) being sent: %s", len(ids), e)

    def _hooks_busy(self, now: float) -> bool:
        """The hooks are writing a burst and no row is due: better to stay out of their way."""
        if self.journal is None or self._flushing:
            return False
        if time.monotonic() - self.journal.last_append >= FOLD_QUIET:
            return False
        if time.monotonic() - self._folded_at >= FOLD_AT_LEAST_EVERY:
            return False
        return self._next_due is None or self._next_due > now

    def _fold_now(self) -> bool:
        """Fold when the hooks pause for a moment (or at least once a second, or when someone
        waits in flush): folding *during* a burst would compete with the hooks for the GIL and
        show up in their tail latency."""
        now = time.monotonic()
        if self._flushing or now - self.journal.last_append >= FOLD_QUIET or now - self._folded_at >= FOLD_AT_LEAST_EVERY:
            self._folded_at = now
            return True
        return False

    def _housekeep(self, now: float) -> None:
        if now - self._housekept_at < HOUSEKEEPING_EVERY:
            return
        self._housekept_at = now
        self.outbox.checkpoint()
        if self.housekeeping is not None:
            self.housekeeping(now)

    def _wait(self, seconds: float) -> None:
        if self._wake.wait(seconds) and not self._stopping:  # stopping: leave it set for every worker
            self._wake.clear()

    def _at_exit(self) -> None:
        if self._pid != os.getpid() or (not self._threads and not self.memory_left()):
            return
        # What is already in the outbox and due goes out within the budget, then whatever is still
        # leased is handed back; never more than the budget in total. The journal is *not* folded
        # now: a newer event for the same person (a decline, say) may sit in another process's
        # journal, and the next process adopts ours and merges both in event order.
        deadline = time.monotonic() + self.exit_budget
        self._exiting = True
        try:
            self.flush(self.exit_budget)
        except Exception:  # exit must go on whatever the outbox says
            pass
        left = self.close(max(0.0, deadline - time.monotonic()))
        lost = self.memory_left()
        if left - lost:
            log.info("exiting: %d event(s) wait in the outbox and go out with the next run (or `remixcrm-ctct flush`)", left - lost)
        if lost:
            log.error("exiting with %d event(s) kept only in memory (the outbox was not writable): they are lost", lost)
