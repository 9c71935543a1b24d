"""The host's side of ``sender = "process"``: make sure the sender process runs, cheaply.

The hook only appends to its journal; delivery runs in one sender process per data dir
(:mod:`.service`, ``python -m remixcrm_plugin_ctct worker``), which holds ``sender.lock`` for as
long as it lives. At most once a second a hook asks that lock whether its holder is alive: one
``flock`` on a file descriptor kept open (two calls when the lock is free). If nobody holds it,
the hook starts the sender process — with ``exec`` of a fresh interpreter, never a ``fork`` of the
host (whose threads, locks and sockets a child must not inherit) — in a session of its own, so
it outlives the worker that started it (gunicorn's ``--max-requests``, a ``kill -9``).
Starting costs the one hook that does it about a millisecond; a sender that fails at once is
started again only after a growing pause (and one ERROR each time), never in a tight loop.
"""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from . import config, forksafe
from .store.flock import held_elsewhere, take
from .store.flock import supported as flock_supported

log = logging.getLogger("remixcrm_plugin_ctct")

LOCK_NAME = "sender.lock"  # held by the sender process while it lives
LOG_NAME = "sender.log"  # the started sender process's log (its stderr too)
CHECK_EVERY = 1.0  # seconds between looks at the lock from one host process
IDLE_EXIT = 300.0  # seconds a started sender process stays with nothing to do (a start costs ~0.3 s of CPU)
NICE = 10  # the started sender process's CPU priority below RemixCRM's: the requests go first
RETRY_FIRST, RETRY_MAX = 5.0, 300.0  # pause after a sender process that exited at once, doubling


class SenderStarter:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self._reset()
        forksafe.after_fork_in_child(self._reset)

    def _reset(self) -> None:
        # in a forked child: the parent's descriptor is kept (closing would do nothing harmful,
        # but the parent owns it); the child's own is opened on its first look
        self._fd: int | None = None
        self._pid = os.getpid()
        self._checked_at = float("-inf")
        self._child: subprocess.Popen | None = None
        self._started_at = float("-inf")
        self._retry_after = 0.0

    def ensure(self) -> None:
        """Called after each journal append: at most once per ``CHECK_EVERY``, start the sender
        process if none holds the lock. Never raises (the event is in the journal already)."""
        now = time.monotonic()
        if now - self._checked_at < CHECK_EVERY:
            return
        self._checked_at = now
        try:
            if self.alive():
                return
            self._start(now)
        except Exception as e:  # the journal keeps the event; the next look tries again
            log.error("could not start the constant contact sender process (%s); events wait in the journal", e)

    def alive(self) -> bool:
        """Someone holds the sender lock (a sender process, or the `remixcrm-ctct worker` service)."""
        if self._fd is None or self._pid != os.getpid():
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return held_elsewhere(self._fd, self.data_dir / LOCK_NAME)

    def _start(self, now: float) -> None:
        child = self._child
        if child is not None:
            code = child.poll()  # also reaps it: no zombie stays behind
            if code is None:
                return  # ours is alive and does not hold the lock: it is about to take it
            self._child = None
            if code > 0 and now - self._started_at < RETRY_FIRST + CHECK_EVERY:
                # it failed as it started (a broken install, say): never a tight loop of starts
                self._retry_after = min(RETRY_MAX, max(RETRY_FIRST, 2 * self._retry_after))
                log.error(
                    "the constant contact sender process exited at once (code %s); see %s. "
                    "Starting it again in %.0f s; events wait in the journal",
                    code,
                    self.data_dir / LOG_NAME,
                    self._retry_after,
                )
            else:
                self._retry_after = 0.0  # it ran, and left when idle or was killed (kill -9): start one now
        if now - self._started_at < self._retry_after:
            return
        # the lock is taken here and handed to the child with its descriptor: from this moment on
        # every other worker's look finds it held, and none starts a second one meanwhile
        fd = take(self.data_dir / LOCK_NAME) if flock_supported() else None
        if fd is None and flock_supported():
            return  # another process holds it: a sender process started a moment ago
        self._started_at = now
        try:
            self._child = start(self.data_dir, IDLE_EXIT, fd)
        finally:
            if fd is not None:
                os.close(fd)  # the child holds the lock now (the same open file)
        log.info(
            "started the constant contact sender process (pid %d); its log: %s",
            self._child.pid,
            self.data_dir / LOG_NAME,
        )


def start(data_dir: Path, idle_exit: float | None, lock_fd: int | None = None) -> subprocess.Popen:
    """Start ``python -m remixcrm_plugin_ctct worker`` for ``data_dir`` in a session of its own;
    ``lock_fd``: a descriptor holding ``sender.lock``, handed to it (else it takes the lock itself)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_path = data_dir / LOG_NAME
    env = {**os.environ, "REMIXCRM_DATA_DIR": str(data_dir.parent), "REMIXCRM_CONFIG": config.config_file()}
    args = [python(), "-m", "remixcrm_plugin_ctct", "worker"]
    if idle_exit is not None:
        args += ["--exit-when-idle", str(idle_exit)]
    args += ["--log-file", str(log_path), "--nice", str(NICE)]
    if lock_fd is not None:
        args += ["--lock-fd", str(lock_fd)]
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            close_fds=True,  # never the host's listening socket or its clients' connections
            pass_fds=() if lock_fd is None else (lock_fd,),
            start_new_session=True,  # not in the host's process group: its Ctrl-C or SIGTERM is not ours
            cwd=data_dir,
            env=env,
        )
    finally:
        os.close(fd)


def python() -> str:
    """This interpreter. Under an embedding server (uWSGI, mod_wsgi) ``sys.executable`` is the
    server's binary: then the ``python3`` of the same environment."""
    name = os.path.basename(sys.executable or "")
    if name.startswith("python"):
        return sys.executable
    return os.path.join(sys.exec_prefix, "bin", "python3")
