"""The sender process (``sender = "process"``): delivery out of the host's process.

``remixcrm-ctct worker`` (a service: systemd, a container) or ``python -m remixcrm_plugin_ctct
worker --exit-when-idle 60`` (started on demand by a hook, :mod:`.spawn`). One per data dir: it
holds ``sender.lock`` while it lives; a second one waits a moment for the lock and leaves.

It watches the journal folder (a listing and one ``stat`` per journal every ``POLL`` seconds;
host processes only append) and runs the same worker as the in-process mode: the journals are
folded into the outbox, rows are sent within the rate limit, at exit it takes at most 2 s and
hands back its leases. SIGTERM and SIGINT stop it the same way.
"""

import logging
import logging.handlers
import os
import signal
import threading
import time
from collections.abc import Callable

from filelock import FileLock, Timeout

try:
    import fcntl
except ImportError:  # not POSIX: the sender process is then started without a handed-over descriptor
    fcntl = None  # type: ignore[assignment]

from . import config, runtime
from .spawn import LOCK_NAME
from .store.journal_watch import JournalWatcher

log = logging.getLogger("remixcrm_plugin_ctct")

POLL = 0.1  # seconds between looks at the journals: how long a new event may wait to be folded
IDLE_CHECK_EVERY = 1.0  # seconds between looks at the outbox for "anything left to do?"
LOCK_WAIT = 2.0  # seconds a second sender process waits for the lock before leaving
LOG_BYTES, LOG_BACKUPS = 1 << 20, 3  # the started sender process's log file is rotated


def run(
    say: Callable[[str], None],
    exit_when_idle: float | None = None,
    log_file: str | None = None,
    lock_fd: int | None = None,
    nice: int = 0,
) -> int:
    """Serve the data dir until stopped (or, with ``exit_when_idle``, until nothing was left to
    do for that many seconds). ``lock_fd``: the lock, already taken by the hook that started us
    and handed over with its descriptor (kept open for life). ``nice``: lower this process's CPU
    priority by that much (sending is background work: on a busy machine RemixCRM's requests go
    first). Returns the exit code."""
    if nice and hasattr(os, "nice"):
        os.nice(nice)
    os.umask(0o077)  # its log (rotated files too) and whatever it creates: private, as the rest of the data dir
    _log_to(log_file)
    data_dir = config.data_dir()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock: FileLock | None = None
    if lock_fd is None:
        lock = FileLock(str(data_dir / LOCK_NAME), timeout=LOCK_WAIT, mode=0o600, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            say(f"another sender process holds {data_dir / LOCK_NAME}; it does the work")
            return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    rt = runtime.for_sender_process()
    assert isinstance(rt.journal, JournalWatcher)
    journals = rt.journal
    log.info("constant contact sender process %d serves %s", os.getpid(), data_dir)
    idle_since = checked_at = time.monotonic()
    rt.worker.wake()  # what is pending already goes out now
    while not stop.wait(POLL):
        now = time.monotonic()
        if journals.grown():
            rt.worker.wake()
            idle_since = now
        if exit_when_idle is None or now - checked_at < IDLE_CHECK_EVERY:
            continue
        checked_at = now
        if _busy(rt):
            idle_since = now
        elif now - idle_since >= exit_when_idle:
            rt.worker.folds_paused = True  # no fold while the lock is not ours
            if leave_or_stay(_Lock(lock, lock_fd), lambda: journals.backlog(rt.outbox.journal_offset)):
                rt.worker.folds_paused = False
                idle_since = now
                rt.worker.wake()
                continue
            log.info(
                "constant contact sender process %d: nothing to do for %.0f s, leaving", os.getpid(), exit_when_idle
            )
            break
    # the worker's exit handler (atexit) sends what is due within its 2 s and hands back the
    # leases; the lock goes with the process
    return 0


class _Lock:
    """``sender.lock`` as this process holds it: a FileLock it took, or the descriptor a hook
    took and handed over (an ``flock`` on that open file)."""

    def __init__(self, lock: FileLock | None, fd: int | None):
        self.lock, self.fd = lock, fd

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
        elif self.fd is not None and fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def retake(self) -> bool:
        if self.lock is not None:
            try:
                self.lock.acquire(timeout=0)
            except Timeout:
                return False
            return True
        if self.fd is not None and fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True
        return False


def leave_or_stay(lock, backlog: Callable[[], bool]) -> bool:
    """Leaving when idle: the lock is let go *first*, then the journals are looked at once more.
    A host that appended while we still held it saw it held and started nobody (and looks again
    only at its next event, maybe hours later); its lines are in the journal before our look. So:
    nothing new → leave (True is "stay"); something new → take the lock back and stay; unless
    another sender took it meanwhile (a host appended after the release): then it does the work."""
    lock.release()
    if not backlog():
        return False
    return lock.retake()


def _busy(rt: runtime.Runtime) -> bool:
    """Anything left that this process could still do: a journal not folded, a row pending
    (also one waiting for a retry or behind a pause), a memory event, a send in flight."""
    try:
        return (
            rt.worker.inflight.snapshot()[1] > 0
            or bool(rt.worker.memory_left())
            or rt.journal.backlog(rt.outbox.journal_offset)
            or rt.outbox.next_due_at() is not None
        )
    except Exception:  # an outbox that cannot be read now is no reason to leave
        return True


def _log_to(log_file: str | None) -> None:
    """The plugin's INFO lines to ``log_file`` (rotated) or stderr, unless the caller set up logging."""
    if log.handlers or logging.getLogger().handlers:
        return
    if log_file:
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS
        )
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
