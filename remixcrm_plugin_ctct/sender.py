"""A small pool of background threads that runs send jobs, so the hook never waits.

Modelled on sentry-python's BackgroundWorker rather than ThreadPoolExecutor: at interpreter
exit ThreadPoolExecutor drains its *whole* queue before atexit handlers run, which would keep
RemixCRM alive for as long as the API takes. Ours are daemon threads with a bounded queue;
at exit we wait at most ``exit_budget`` seconds and report what was left.
"""

import atexit
import logging
import os
import queue
import threading
import time

log = logging.getLogger("remixcrm_plugin_ctct")

_STOP = object()


class BackgroundSender:
    """``workers`` daemon threads; at most ``queue_size`` jobs queued or running at once."""

    def __init__(self, workers: int = 4, queue_size: int = 10_000, exit_budget: float = 2.0):
        self.workers, self.queue_size, self.exit_budget = workers, queue_size, exit_budget
        self._atexit_registered = False
        self._reset()

    def _reset(self) -> None:
        # also the after-fork path: locks held by parent threads at fork time would never be
        # released in the child, and the parent still owns (and sends) the jobs it had queued
        # SimpleQueue (C, unbounded) with our own bound: queue.Queue's Python-level
        # Conditions cost the host several microseconds per put
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)  # notified when pending drops to 0
        self._pending = 0  # queued + running
        self._threads: list[threading.Thread] = []
        self._pid = os.getpid()
        self._closed = False

    def submit(self, job) -> bool:
        """Queue ``job`` (a callable) without blocking. False when the queue is full or closed."""
        if self._pid != os.getpid():
            self._reset()
        if self._closed:
            return False
        if not self._threads:
            self._start()
        with self._lock:
            if self._pending >= self.queue_size:
                return False
            self._pending += 1
        self._queue.put(job)
        return True

    @property
    def pending(self) -> int:
        """Jobs queued or running right now."""
        return self._pending

    def flush(self, timeout: float) -> bool:
        """Wait until every job submitted so far has finished, at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._done:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._done.wait(remaining)
        return True

    def close(self, timeout: float) -> int:
        """Stop taking jobs, wait up to ``timeout`` for the queued ones; return how many were left."""
        self._closed = True
        self.flush(timeout)
        for _ in self._threads:
            self._queue.put(_STOP)  # after the jobs: a stopped worker first finishes the queue
        return self._pending

    def _start(self) -> None:
        with self._lock:
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
        q = self._queue
        while True:
            job = q.get()
            if job is _STOP:
                return
            try:
                job()
            except Exception:  # a fire-and-forget job's exception would otherwise vanish
                log.exception("a background send failed unexpectedly")
            finally:
                with self._done:
                    self._pending -= 1
                    if not self._pending:
                        self._done.notify_all()

    def _at_exit(self) -> None:
        if self._pid != os.getpid() or not self._pending:
            return
        left = self.close(self.exit_budget)
        if left:
            log.warning(
                "exiting with %d send(s) to Constant Contact not done after %.1f s; they are abandoned "
                "(the durable outbox will keep them in a later release)", left, self.exit_budget
            )
