"""Locks held for a process's life (its journal: "I am alive and write this"), taken in one
``open`` and one ``flock`` — filelock's ``FileLock`` takes half a millisecond or more, and a
journal is opened by a hook (each worker's first). The same kind of lock as ``FileLock`` on
POSIX (``flock`` on the same file), so either side may use either; elsewhere it is a FileLock."""

import os
from pathlib import Path

from filelock import FileLock, Timeout

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]


def supported() -> bool:
    """Whether locks can be handed to a child process with their descriptor (POSIX)."""
    return fcntl is not None


class Busy(Exception):
    """Another process holds the lock."""


class HeldLock:
    def __init__(self, path: Path | str):
        self.path = str(path)
        self._fd: int | None = None
        self._filelock: FileLock | None = None

    def acquire(self) -> None:
        """Take it now, or raise :class:`Busy`."""
        if fcntl is None:
            lock = FileLock(self.path, timeout=0, mode=0o600, thread_local=False)
            try:
                lock.acquire()
            except Timeout:
                raise Busy(self.path) from None
            self._filelock = lock
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Busy(self.path) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            assert fcntl is not None
            fcntl.flock(fd, fcntl.LOCK_UN)  # also for a forked child that shares the descriptor
            os.close(fd)
        if self._filelock is not None:
            self._filelock.release()
            self._filelock = None


def held_elsewhere(fd: int, path: Path | str) -> bool:
    """Whether another process holds the lock on ``path``, open as ``fd`` (one ``flock`` when it
    does, two when it does not)."""
    if fcntl is None:
        lock = HeldLock(path)
        try:
            lock.acquire()
        except Busy:
            return True
        lock.release()
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def take(path: Path | str) -> int | None:
    """A descriptor of ``path`` holding its lock (the caller hands it on, e.g. to a child
    process, and closes its own copy), or None when another process holds it. POSIX only:
    elsewhere None, and the caller does without."""
    if fcntl is None:
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd
