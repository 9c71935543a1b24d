"""A few background threads that work the outbox, so the hook never waits.

Modelled on sentry-python's BackgroundWorker rather than ThreadPoolExecutor: at interpreter exit
ThreadPoolExecutor drains its *whole* queue before atexit handlers run, which would keep
RemixCRM alive for as long as the API takes. Ours are daemon threads that take one leased row
at a time from the durable outbox; at exit we wait at most ``exit_budget`` seconds for the
sends in flight, hand back the leases, and everything unsent stays recorded for the next run.
"""

import atexit
import logging
import os
import secrets
import socket
import threading
import time
from collections import deque
from typing import Callable, NamedTuple

log = logging.getLogger("remixcrm_plugin_ctct")

IDLE_POLL = 2.0  # seconds: also notices rows other processes left (retries, expired leases)
FOLD_QUIET = 0.02  # seconds without a hook write before the journal is folded into the outbox
FOLD_AT_LEAST_EVERY = 5.0  # ... but never later than this during a long burst
SHARED_PAUSE_CHECK = 1.0  # seconds between looks at the pause other processes may have set
CLAIM_BATCH = 4  # rows leased per claim: one transaction for several sends
ERROR_RETRY = 60.0  # seconds before a row whose send crashed is tried again
HOUSEKEEPING_EVERY = 10.0  # seconds between WAL checkpoints (and hourly purges, see delivery)


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
                 workers: int = 2, exit_budget: float = 2.0, memory_limit: int = 10_000):
        self.outbox, self.work_row, self.work_memory = outbox, work_row, work_memory
        self.housekeeping, self.shared_pause, self.journal = housekeeping, shared_pause, journal
        self.workers, self.exit_budget, self.memory_limit = workers, exit_budget, memory_limit
        self._atexit_registered = False
        self._reset()

    def _reset(self) -> None:
        # also the after-fork path: locks held by parent threads would never be released here
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._memory: deque = deque()
        self._in_flight = 0
        self._ticks = 0  # +1 each time a worker starts or finishes a step (see _settled)
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._pause: Pause | None = None
        self._pid = os.getpid()
        self._housekept_at = 0.0
        self._folded_at = time.monotonic()
        self._shared_checked_at = float("-inf")
        self._next_due: float | None = 0.0  # when the outbox next has a row to send (None: empty)
        self._woken_at = -FOLD_QUIET
        self._flushing = 0  # callers waiting in flush(): fold at once for them

    # --- called from the host's threads ---
    def wake(self) -> None:
        """New work is in the outbox (starts the threads on first use)."""
        if self._pid != os.getpid():
            self._reset()
        if not self._threads:
            self._start()
        now = time.monotonic()
        if now - self._woken_at >= FOLD_QUIET:
            # at most one wake per quiet period: a worker woken on every hook call during a
            # burst would steal the GIL from the hooks; it looks again after FOLD_QUIET anyway
            self._woken_at = now
            self._wake.set()

    def submit_memory(self, item) -> bool:
        """The fallback when the outbox cannot be written: keep ``item`` in memory (bounded)."""
        if len(self._memory) >= self.memory_limit:
            return False
        self._memory.append(item)
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
        scheduled for later have been made. False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        self._flushing += 1
        try:
            while True:
                if self._settled(float("inf") if retries else None):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                with self._cond:
                    self._cond.wait(min(remaining, 0.05))  # woken when a row finishes; re-check at least every 50 ms
        finally:
            self._flushing -= 1

    def _settled(self, until: float | None = None) -> bool:
        # The outbox read is only trusted if no worker was busy before it and none started or
        # finished during it (``_ticks`` counts both): a row in flight during the read is
        # neither due nor, a moment later, in flight any more, and would slip through.
        with self._cond:
            ticks, busy = self._ticks, self._in_flight
        if busy or self._memory:
            return False
        if self._pause is not None and not self._pause.over(time.time()):
            due = 0  # nothing due can go until the cause is fixed
        else:
            try:
                due = self.outbox.due_count(until)
                if not due and self.journal is not None and self.journal.backlog(self.outbox.journal_offset):
                    due = 1  # written by a hook, not yet folded into the outbox
            except Exception:  # an unreadable outbox has nothing we could send
                due = 0
        with self._cond:
            return due == 0 and self._ticks == ticks

    def close(self, timeout: float) -> int:
        """Stop, wait up to ``timeout`` for sends in flight, hand back our leases; returns how
        many events are left in the outbox (they go out with the next run)."""
        self._stopping = True
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._in_flight and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
        for t in self._threads:  # idle workers leave at once; one stuck in a send is left behind
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        try:
            self.outbox.release(self.owner)
            return self.outbox.due_count(float("inf")) + len(self._memory)
        except Exception:
            return len(self._memory)

    # --- the worker threads ---
    def _start(self) -> None:
        with self._cond:
            if self._threads:
                return
            for n in range(self.workers):
                t = threading.Thread(target=self._run, name=f"remixcrm-ctct-sender-{n}", daemon=True)
                t.start()
                self._threads.append(t)
            if not self._atexit_registered:
                self._atexit_registered = True
                atexit.register(self._at_exit)
                if hasattr(os, "register_at_fork"):  # POSIX only; Windows has no fork
                    os.register_at_fork(after_in_child=self._reset)

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._step()
            except Exception:  # never let a worker die silently; the row's lease will expire
                log.exception("the outbox sender hit an unexpected error; it carries on")
                self._wait(IDLE_POLL)

    def _step(self) -> None:
        if self._memory:
            try:
                item = self._memory.popleft()
            except IndexError:
                return
            self._run_job(self.work_memory, item)
            return
        now = time.time()
        if self._pause is None and self.shared_pause is not None and now - self._shared_checked_at >= SHARED_PAUSE_CHECK:
            self._shared_checked_at = now
            shared = self.shared_pause()  # e.g. another process hit the daily quota
            if shared is not None:  # never write None: another worker may have just paused
                self._pause = shared
        if self._pause is not None:
            if not self._pause.over(now):
                self._wait(1.0)
                return
            log.info("sending resumes (%s no longer holds it back)", self._pause.reason)
            self._pause = None
        if self._hooks_busy(now):
            self._wait(FOLD_QUIET)  # nothing to send yet, and the hooks should have the CPU
            return
        with self._cond:
            self._in_flight += 1  # before the claim, so flush() never sees a row in between
            self._ticks += 1
        try:
            if self.journal is not None and self._fold_now():
                if self.journal.fold_into(self.outbox):  # what the hooks wrote since the last look
                    self._next_due = now
            rows = self.outbox.claim_many(self.owner, CLAIM_BATCH)
            for n, row in enumerate(rows):
                if self._pause is not None or self._stopping:
                    # paused (perhaps by another worker) or stopping: the rest go back untouched
                    for rest in rows[n:]:
                        self.outbox.retry_later(rest.id, time.time(), None, count_attempt=False)
                    return
                if row.id not in self.outbox.renew(self.owner, [r.id for r in rows[n:]]):  # the rest wait: renew all
                    continue  # its lease ran out during earlier sends and another process took it
                try:
                    pause = self.work_row(row)
                except Exception:  # a bug, not an API answer: log it, try the row again in a minute
                    log.exception("sending client %s hit an unexpected error; it is tried again in %.0f s", row.client_id, ERROR_RETRY)
                    self.outbox.retry_later(row.id, time.time() + ERROR_RETRY, "unexpected error in the plugin (see the log)")
                    continue
                if pause is not None:
                    self._pause = pause
            if rows:
                return
        finally:
            with self._cond:
                self._in_flight -= 1
                self._ticks += 1
                self._cond.notify_all()
        if self._stopping:
            return
        self._housekeep(now)
        due = self._next_due = self.outbox.next_due_at()
        if self.journal is not None and self.journal.backlog(self.outbox.journal_offset):
            due = now + FOLD_QUIET  # hooks wrote more: come back when they pause
        self._wait(IDLE_POLL if due is None else min(IDLE_POLL, max(0.01, due - now)))

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

    def _run_job(self, job, item) -> None:
        with self._cond:
            self._in_flight += 1
            self._ticks += 1
        try:
            job(item)
        finally:
            with self._cond:
                self._in_flight -= 1
                self._ticks += 1
                self._cond.notify_all()

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
        if self._pid != os.getpid() or not self._threads:
            return
        left = self.close(self.exit_budget)
        lost = len(self._memory)
        if left - lost:
            log.info("exiting: %d event(s) wait in the outbox and go out with the next run (or `remixcrm-ctct flush`)", left - lost)
        if lost:
            log.error("exiting with %d event(s) kept only in memory (the outbox was not writable): they are lost", lost)
