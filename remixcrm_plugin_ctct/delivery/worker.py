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

from .. import forksafe
from ..store import lanes
from ..store.fold_pacing import FOLD_QUIET, FoldPacer
from ..store.interfaces import Outbox, StoreUnavailable
from ..store.journal import Journal
from .housekeeping import Housekeeper
from .inflight import InFlight
from .leases import LeaseKeeper
from .memory_lane import LIMIT as MEMORY_LIMIT
from .memory_lane import MemoryLane
from .pauses import Pause, PauseSwitch
from .steps import Sender, Steps

log = logging.getLogger("remixcrm_plugin_ctct")

IDLE_POLL = 2.0  # seconds: also notices rows other processes left (retries, expired leases)
CLAIM_BATCH = 4  # rows leased per claim: one transaction for several sends
IMPORT_CLAIM = 40_000  # rows leased per claim of the import lane: one import request's worth
EXIT_GRACE = 0.3  # seconds past exit_budget for handing back leases, at most
# While the rows due wait only for the import window, a hook's wake costs no round (a fold and
# three outbox queries) and wakes no thread: rounds run this often then, by themselves. At 50
# events/s a round per event was most of the sender threads' CPU in a prefork host
# (bench/prefork.py, py-spy), and every wake a GIL handover that the host's request waits through.
WINDOW_ROUND_EVERY = 0.25  # seconds; a consented (sign_up_form) event waits at most this long more
IDLE_STOP = 60.0  # seconds with nothing pending anywhere before the threads stop (an event restarts them)


class Worker:
    def __init__(
        self,
        outbox: Outbox,
        sender: Sender,
        journal: Journal | None = None,
        housekeeper: Housekeeper | None = None,
        workers: int = 2,
        exit_budget: float = 2.0,
        memory_limit: int = MEMORY_LIMIT,
    ):
        self.outbox, self.sender = outbox, sender
        self.pacer = FoldPacer(journal) if journal is not None else None
        self.housekeeper = housekeeper or Housekeeper(outbox)
        self.workers, self.exit_budget, self.memory_limit = workers, exit_budget, memory_limit
        # pushes whose outcome the outbox could not record yet (delivery.unrecorded); None for a
        # sender that keeps no such list
        self.unrecorded = getattr(sender, "unrecorded", None)
        self._atexit_registered = False
        self._reset()
        # in a forked child every lock, condition, thread and the owner id are made anew: a parent
        # thread may hold them at fork time, and the parent's leases and memory events are its own
        forksafe.after_fork_in_child(self._reset)

    def _reset(self) -> None:
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.memory = MemoryLane(self.memory_limit)
        self.inflight = InFlight()
        self.leases = LeaseKeeper(self.outbox, also=self._unrecorded_ids)
        self.pauses = PauseSwitch(self.sender.shared_pause)
        self._threads: list[threading.Thread] = []
        self.stopping = threading.Event()
        self.steps = Steps(self.outbox, self.sender, self.pauses, self.leases, self.stopping, self._unrecorded_ids)
        self._pid = os.getpid()
        self._next_due: float | None = 0.0  # when the outbox next has a row to send (None: empty)
        self._woken_at = -FOLD_QUIET
        self._flushing = 0  # callers waiting in flush(): fold at once for them
        self._exiting = False  # at exit: send what the outbox holds, fold nothing more
        self._window_until: float | None = None  # the rows due wait for the import window until then
        self._round_at = float("-inf")  # when the last round began (monotonic: a wall-clock step holds no round back)
        self.folds_paused = False  # set by the sender process while it hands its lock over (service.py)
        self._unreadable_said = False
        self._closed = False  # close() ran (runtime.reset: the demo, tests): the exit flush has nothing to do

    # --- called from the host's threads ---
    def wake(self) -> None:
        """New work is in the outbox (starts the threads if they are not running)."""
        now = time.monotonic()
        if len(self._threads) < self.workers:
            self._wake.set()  # before the start: a worker about to stop for idleness sees it
            self._start()
        elif self._window_until is not None:
            return  # rows wait for the import window: the worker comes round within WINDOW_ROUND_EVERY by itself
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
        """The pause in force (``pauses.hold``/``pauses.lift`` set and lift one by hand)."""
        return self.pauses.current

    @property
    def running_threads(self) -> list[threading.Thread]:
        """The worker threads and the lease keeper that are alive."""
        return [t for t in [*self._threads, self.leases.thread] if t is not None and t.is_alive()]

    def flush(self, timeout: float, retries: bool = False) -> bool:
        """Wait until nothing is in flight and nothing due can be sent (a pause counts as
        settled: its cause needs a fix, not time); with ``retries``, also until the retries
        scheduled for later have been made. False after ``timeout`` seconds, and at once when
        the outbox cannot be read (then nobody can tell what is left)."""
        deadline = time.monotonic() + timeout
        self._flushing += 1
        try:
            while (settled := self._settled(float("inf") if retries else None)) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                self.inflight.wait(min(remaining, 0.05))  # woken when a step finishes; re-check every 50 ms
            return settled
        finally:
            self._flushing -= 1

    def _settled(self, until: float | None = None) -> bool | None:
        """True when settled, None when not yet, False when the outbox cannot be read."""
        # The outbox read is only trusted if no worker was busy before it and none started or
        # finished during it (ticks count both): a row in flight during the read is neither
        # due nor, a moment later, in flight any more, and would slip through.
        ticks, busy = self.inflight.snapshot()
        if busy:
            return None
        pause = self.pauses.current  # read once: a worker may clear it meanwhile
        try:
            held = pause is not None and not pause.over(time.time())
        except StoreUnavailable:  # the shared store holding the tokens is out of reach: cannot tell yet
            return None
        if held:
            return True if self.inflight.unchanged(ticks) else None  # nothing due can go until the cause is fixed
        if self.memory.due_count(time.time() if until is None else until):
            return None
        try:
            due = self.outbox.due_count(until)
            if not due and not self._exiting and self.pacer is not None and self.pacer.backlog(self.outbox):
                due = 1  # written by a hook, not yet folded into the outbox
            if not due and self.outbox.in_flight_count(self.owner):
                # leased to us while none of our steps runs: a claim whose answer was lost with its
                # connection (a shared store retries it on a new one); they come back when the
                # lease runs out, and are sent then
                due = 1
        except StoreUnavailable:
            return None  # a server out of reach (for now): what it holds is still there, wait on
        except Exception as e:
            if self.outbox.has_state():
                if not self._unreadable_said:
                    self._unreadable_said = True
                    log.error(
                        "flush: cannot read the outbox %s (%s); what it holds is unknown", self.outbox.location, e
                    )
                return False
            due = 0  # no outbox at all (the data dir cannot be made): only memory holds events
        return True if due == 0 and self.inflight.unchanged(ticks) else None

    def close(self, timeout: float) -> int:
        """Stop, wait up to ``timeout`` for sends in flight, hand back our leases; returns how
        many events this process leaves behind: rows it handed back (they go out with the next
        run) plus events kept only in memory (lost)."""
        self.stopping.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        self.inflight.wait_idle(deadline)
        keeper = self.leases.stop()
        for t in [*self._threads, *([keeper] if keeper else [])]:  # idle ones leave at once; one stuck in a send stays
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        try:
            self._record_unrecorded()
        except Exception:  # still not: those stay leased, and go out again with the next run
            log.error(
                "exiting: %d event(s) reached Constant Contact but the outbox could not record it; "
                "the next run sends them again",
                len(self.unrecorded or ()),
            )
        try:
            released = self.outbox.release(self.owner, keep=self._unrecorded_ids())
        except Exception:
            released = 0
        self._closed = True  # its outbox may be closed and its data dir gone: nothing more at exit
        return released + self.memory_left()

    def _unrecorded_ids(self) -> set[int]:
        return set() if self.unrecorded is None else self.unrecorded.ids()

    def _record_unrecorded(self) -> None:
        """Mark delivered what was pushed but not recorded (raises while the outbox cannot)."""
        if self.unrecorded is not None and len(self.unrecorded):
            self.unrecorded.record(self.outbox)

    def memory_left(self) -> int:
        return len(self.memory) + self.inflight.memory

    # --- the worker threads ---
    def _start(self, first_only: bool = True) -> None:
        """From a hook: one thread (each start waits for the new thread to run, and the hook
        should not wait three times); that one starts the others and the lease keeper."""
        with self._lock:
            if self.stopping.is_set():
                return
            wanted = min(self.workers, len(self._threads) + 1) if first_only and not self._threads else self.workers
            for n in range(len(self._threads), wanted):
                t = threading.Thread(target=self._run, name=f"remixcrm-ctct-sender-{n}", daemon=True)
                self._threads.append(t)
                t.start()
            if wanted == self.workers:
                self.leases.start(self.owner)
            if not self._atexit_registered:
                self._atexit_registered = True
                atexit.register(self._at_exit)

    def _run(self) -> None:
        if len(self._threads) < self.workers:
            # a hook started this thread: let it return to its request first (this thread would
            # otherwise hold the GIL while the hook waits for it), then start the rest
            self.stopping.wait(FOLD_QUIET)
            self._start(first_only=False)
        idle_since = time.monotonic()
        while not self.stopping.is_set():
            try:
                busy = self._step()
            except (OSError, sqlite3.Error) as e:  # the disk, not a bug: memory events still go out
                self.steps.outbox_trouble(e)
                busy = bool(len(self.memory)) or bool(self._unrecorded_ids())
                self._wait(self.memory.wait_for(IDLE_POLL))
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
        with self._lock:
            if self._wake.is_set() or len(self.memory) or self.stopping.is_set() or self._unrecorded_ids():
                return False  # an event arrived meanwhile
            self._threads.remove(threading.current_thread())
            if not self._threads:
                self.leases.stop()  # the lease keeper leaves with the last worker
            return True

    def _step(self) -> bool:
        """One round of work; False when there was nothing to do at all (for the idle stop)."""
        now = time.time()
        self.memory.move_if_due(self.outbox.add_records)  # even while paused: durable is better than memory
        if self.pauses.holds(now):
            # the rows wait for the pause now, not only for the window: a hook's wake (the one after
            # the fix) looks at the pause again at once, as it did before the window's gate
            self._window_until = None
            self._wait(1.0)
            return True
        if len(self.memory) and (item := self.memory.take(now)) is not None:
            with self.inflight.step(memory=True):
                self.steps.memory(self.memory, item)
            return True
        if self.pacer is not None and self.pacer.hooks_writing(self._next_due, now, urgent=bool(self._flushing)):
            self._wait(FOLD_QUIET)  # nothing to send yet, and the hooks should have the CPU
            return True
        if self._window_until is not None and not self._flushing and not self._exiting:
            wait = min(self._window_until - now, WINDOW_ROUND_EVERY - (time.monotonic() - self._round_at))
            if wait > 0:  # only the import window is awaited: a hook's wake is no reason for a round
                self._wait(wait)
                return True
        # before any claim: a row pushed whose outcome could not be recorded is recorded, never sent again
        self._record_unrecorded()  # raises while the outbox cannot take it: _run waits, memory events go on
        self._round_at, self._window_until = time.monotonic(), None
        with self.inflight.step():  # before the claim, so flush() never sees a row in between
            folding = self.pacer is not None and not self._exiting and not self.folds_paused
            if folding and self.pacer is not None and self.pacer.fold(self.outbox, bool(self._flushing)):
                self._next_due = now
            policy = self.sender.import_policy()  # None (config inactive): any row, to meet the pause
            unknown = policy[0] if policy else "implicit"
            rows = self.outbox.claim_many(
                self.owner, CLAIM_BATCH, lane=lanes.SIGN_UP if policy else None, unknown_consent=unknown
            )
            if rows:
                self.steps.rows(self.owner, rows)
                return True
            import_at = self._import_at(policy, now)
            if import_at is not None and import_at <= now:
                rows = self.outbox.claim_many(self.owner, IMPORT_CLAIM, lane=lanes.IMPORT, unknown_consent=unknown)
                if rows:
                    self.steps.imports(self.owner, rows)
                    return True
        if self.stopping.is_set():
            return True
        self.housekeeper.run(now)
        due = self._next_due = self.outbox.next_due_at()
        if import_at is not None and due is not None and due <= now:
            due = min(import_at, now + WINDOW_ROUND_EVERY)  # the window, and a look at new events meanwhile
            self._window_until = import_at
        if self.pacer is not None and self.pacer.backlog(self.outbox):
            due = now + FOLD_QUIET  # hooks wrote more: come back when they pause
        self._wait(self.memory.wait_for(IDLE_POLL if due is None else min(IDLE_POLL, max(0.01, due - now))))
        return due is not None or bool(len(self.memory))

    def _import_at(self, policy: tuple[str, float] | None, now: float) -> float | None:
        """When the import lane sends next: the first due row waits ``import_window_seconds`` for
        company, unless someone waits in flush() or the process is exiting. None: nothing is due."""
        if policy is None:
            return None
        first = self.outbox.first_due_import(policy[0], now)
        if first is None:
            return None
        return now if self._flushing or self._exiting else first + policy[1]

    def _wait(self, seconds: float) -> None:
        if self._wake.wait(seconds) and not self.stopping.is_set():  # stopping: leave it set for every worker
            self._wake.clear()

    def _at_exit(self) -> None:
        if self._pid != os.getpid() or self._closed or (not self._threads and not self.memory_left()):
            return
        # The work below bounds its own waits, but not the store's: a server that takes the
        # connection and never answers holds a call for libpq's whole connect timeout (or a
        # worker thread holds the connection meanwhile). So it runs on a thread of its own and
        # exit waits for it no longer than the budget; leases left behind expire within seconds.
        try:
            work = threading.Thread(target=self._exit_work, name="remixcrm-ctct-exit", daemon=True)
            work.start()
        except RuntimeError:  # no new threads at this stage of interpreter shutdown
            self._exit_work()
            return
        work.join(self.exit_budget + EXIT_GRACE)
        if work.is_alive():
            log.warning(
                "exiting: the outbox at %s did not answer within %.0f s; unsent events stay recorded and "
                "go out from another process once their lease expires",
                self.outbox.location,
                self.exit_budget,
            )

    def _exit_work(self) -> None:
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
            log.info(
                "exiting: %d event(s) wait in the outbox and go out with the next run (or `remixcrm-ctct flush`)",
                left - lost,
            )
        if lost:
            log.error("exiting with %d event(s) kept only in memory (the outbox was not writable): they are lost", lost)
