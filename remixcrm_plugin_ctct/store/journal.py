"""The outbox's front door: a per-process append-only journal, so the hook's durable write is
one copy into a mapped page (:mod:`.journal_map`; one ``os.write`` where mapping is not safe), a
few microseconds, instead of a SQLite transaction (tens, with a long tail).

Why this is as safe as a SQLite commit in WAL mode with ``synchronous=NORMAL``: once the copy or
``write`` returns, the bytes are in the operating system's page cache, so ``kill -9`` of RemixCRM loses
nothing (a power cut can lose the last moments, as with SQLite). The sender moves journal lines
into the SQLite outbox in batches; the offset it reached is stored *in the same transaction*,
so every line is taken exactly once. Each process writes only its own file (no interleaving
between processes) and holds a lock on it while alive; a file whose lock is free belongs to a
process that died, and any other process takes it over and folds it into the outbox (with the
shared store, also a live host of another data dir on the same machine: :mod:`.neighbours`).

A line is one JSON object and its ``\n``; a JSON object is self-delimiting, so a line cut short
(a write that failed halfway, disk full) never parses as a record. The hook cuts such a tail off
before its next write (or, if it cannot, ends it with a ``\n`` so it stays a line of its own),
and the fold skips a line it cannot use with one ERROR and goes on: one bad line never holds
back the lines after it. The hook bounds every field (:mod:`.payload`), so a line stays a few
KiB at most; the fold still copes with longer ones from older versions.
"""

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .. import forksafe, payload
from ..record import Event
from . import journal_files, journal_map
from .flock import HeldLock
from .interfaces import HostJournals, JournalSink
from .neighbours import Neighbours

log = logging.getLogger("remixcrm_plugin_ctct")

ROTATE_AT = 1 << 20  # bytes: start a new file once this much has been folded into the outbox
# bytes of a file written through a map: room past ROTATE_AT for what comes while the fold that
# rotates is under way. A file that fills it (the fold behind) is cut to its lines and written on
# with os.write until it rotates (sender = "process": it is handed over, the next one mapped)
MAPPED = ROTATE_AT + (512 << 10)
ADOPT_EVERY = 10.0  # seconds between looks for journals of processes that died


def record(contact: payload.Contact, event: str, now: float) -> dict:
    """One event as the journal and the outbox know it (see :class:`record.Event`)."""
    return Event.of(contact, event, now).to_record()


def encode(contact: payload.Contact, event: str, now: float) -> bytes:
    """One journal line (see :meth:`record.Event.encode`)."""
    return Event.of(contact, event, now).encode()


class Journal:
    def __init__(self, directory: Path, hosts: HostJournals | None = None):
        """``hosts``: where the hosts sharing a store keep their journals (PostgreSQL), so that
        this one also folds what a host killed on this machine left (:mod:`.neighbours`)."""
        self.directory = Path(directory) / "journal"
        self.neighbours = Neighbours(hosts, self.directory) if hosts is not None else None
        self._append_lock = threading.Lock()  # threads of this process take turns writing
        self._fold_lock = threading.Lock()  # one folder at a time
        self._fd: int | None = None
        self._map: journal_map.MappedFile | None = None  # the file's reserved first MAPPED bytes, when safe
        self._uncut = False  # a map was closed but its NUL tail could not be cut off yet
        self._path: Path | None = None
        self._owner_lock: HeldLock | None = None
        self._pid: int | None = None
        self._size = 0  # bytes written to the current file (by this process: it is the only writer)
        self._torn = False  # a cut-short write could not be cut off: end it with a newline first
        self.last_append = 0.0  # monotonic time of the last hook write
        self._folded = 0  # bytes of the current file already folded (a cheap "anything new?")
        self._adopted_at = -ADOPT_EVERY
        # sender = "process": this process never folds; it hands each full file over instead
        # (closes it and frees its lock, so the sender process adopts it whole, as a dead one's)
        self.hand_off = False
        forksafe.after_fork_in_child(self._after_fork)

    def fold_also_for(self, hosts: HostJournals | None) -> None:
        """A journal made before the store was known (a host process's, ``sender = "process"``)
        that this process now folds itself: also fold what hosts killed on this machine left."""
        if hosts is not None and self.neighbours is None:
            self.neighbours = Neighbours(hosts, self.directory)

    def _after_fork(self) -> None:
        """The child writes its own file (append() opens one, as the pid differs); the parent's
        file, fd and owner lock stay the parent's: the lock object is parked, never released
        here (releasing it would unlock the parent's file, which is shared across fork)."""
        self._append_lock = threading.Lock()  # a parent thread may have held either at fork time
        self._fold_lock = threading.Lock()
        forksafe.keep(self._owner_lock)
        forksafe.keep(self._map)  # the parent's pages: never written (nor unmapped) here
        self._map = None
        self._fd, self._path, self._owner_lock, self._pid, self._size, self._folded = None, None, None, None, 0, 0

    @property
    def path(self) -> Path | None:
        """The file this process appends to now (None before its first append)."""
        return self._path if self._pid == os.getpid() else None

    def __repr__(self) -> str:
        return f"Journal({str(self.directory)!r})"

    # --- the hook's path ---
    def append(self, data: bytes) -> None:
        """Durable once this returns. Raises OSError (disk full, read-only) for the caller's fallback."""
        with self._append_lock:
            if self._pid != os.getpid() or self._fd is None:
                self._open()
            assert self._fd is not None
            mapped = self._map
            if mapped is not None:
                if mapped.write(self._size, data):
                    self._appended(len(data))
                    return
                # full. Never handed over here with our own threads folding: a fold of this file
                # may be under way, and a file let go of mid-fold would be adopted and folded twice
                if self.hand_off:
                    self._hand_over()
                    self._open()
                    if self._map is not None and self._map.write(0, data):
                        self._appended(len(data))
                        return
                self._unmap(self._fd)
            if self._uncut:  # a map's NULs still end the file: a write after them would be lost behind them
                os.ftruncate(self._fd, self._size)  # raises on failure: the caller's fallback keeps the event
                self._uncut = False
            if self._torn:
                data = b"\n" + data
            try:
                written = os.write(self._fd, data)
            except OSError:
                self._cut_tail()
                raise
            if written != len(data):  # a short write on a regular file means the disk is full
                self._cut_tail()
                raise OSError(28, "short write to the outbox journal")
            self._torn = False
            self._appended(written)

    def _appended(self, written: int) -> None:
        self._size += written
        self.last_append = time.monotonic()
        if self.hand_off and self._size >= ROTATE_AT:
            self._hand_over()

    def _hand_over(self) -> None:
        """Close the full file and free its lock (every byte of it is written): whoever folds
        adopts it as a finished journal; the next append opens a new one."""
        fd, owner = self._fd, self._owner_lock
        self._fd, self._path, self._owner_lock, self._pid = None, None, None, None
        assert fd is not None and owner is not None
        self._unmap(fd)
        os.close(fd)
        owner.release()

    def _unmap(self, fd: int | None) -> None:
        """Before a file is closed or written on with os.write: cut a mapped file to its lines (if
        the cut fails, a closed file's NULs are skipped by the fold; an open one is cut again
        before its next write)."""
        mapped, self._map = self._map, None
        if mapped is not None and fd is not None:
            try:
                mapped.close(fd, self._size)
            except OSError as e:
                self._uncut = True
                log.warning("could not cut the unused end off an outbox journal (%s); it is folded all the same", e)

    def _cut_tail(self) -> None:
        """After a failed or short write, cut off what part of the line it left: else the next
        record would be appended to it and both would be lost as one damaged line."""
        assert self._fd is not None  # called only right after a write to it
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:  # cannot cut it: the next write starts with a newline, leaving it a line of its own
            try:
                self._size = os.fstat(self._fd).st_size
            except OSError:
                pass
            self._torn = True

    def _open(self) -> None:
        name = f"{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        self._path = self.directory / name
        owner = journal_files.owner_lock(self._path)
        try:
            owner.acquire()  # held for this process's life: tells other processes we are alive
        except FileNotFoundError:  # the first journal here: make the folders (the mkdirs cost a hook's first call)
            self.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the plugin's own dir: 0700 too
            self.directory.mkdir(mode=0o700, exist_ok=True)
            owner.acquire()
        # read and write: a map needs both; O_APPEND for the plain write, where there is no map
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._map = journal_map.MappedFile.open(self._fd, MAPPED)
        self._owner_lock, self._pid, self._size, self._folded, self._torn = owner, os.getpid(), 0, 0, False
        self._uncut = False

    # --- the sender's path ---
    def backlog(self, folded_offset: Callable[[str], int]) -> bool:
        """True when this process wrote lines that are not in the outbox yet and folds them
        itself (with ``hand_off`` they are the sender process's: no reason for our rounds)."""
        path = self._path
        if self.hand_off:
            return False
        if path is None or self._pid != os.getpid():
            return False
        folded = folded_offset(path.name)
        if not self._torn:
            return self._size > folded
        # a tail that could not be cut off: only the lines before it are a backlog (the next
        # append ends it with a newline)
        return journal_files.whole_line_after(path, folded, self._size)

    def fold_into(self, outbox: JournalSink) -> int:
        """Move new lines (ours, and any dead process's) into the outbox. Returns how many."""
        if not self._fold_lock.acquire(blocking=False):
            return 0  # another worker of ours is at it
        try:
            count = 0
            if self.neighbours is not None:
                self.neighbours.register()  # first: a host killed before its first fold is still found
            # hand_off (sender = "process"): the sender process folds our live file, never us too
            # (a host's in-memory fallback starts threads here when the disk fails)
            path, size = self._path, self._size  # only this process appends to its file
            if not self.hand_off and path is not None and self._pid == os.getpid() and size > self._folded:
                count += journal_files.fold_file(outbox, path)
                if self._path is path:  # not moved to a new file meanwhile (sender mode changed)
                    self._folded = size
                if self._size >= ROTATE_AT:
                    count += self._rotate(outbox)
            now = time.monotonic()
            if now - self._adopted_at >= ADOPT_EVERY:  # a directory scan: not on every fold
                self._adopted_at = now
                count += self._adopt_orphans(outbox)
            if self.neighbours is not None:
                count += self.neighbours.adopt()
            return count
        finally:
            self._fold_lock.release()

    def _rotate(self, outbox: JournalSink) -> int:
        with self._append_lock:  # no hook writes to the old file after this
            old_fd, old_path, old_owner = self._fd, self._path, self._owner_lock
            assert old_fd is not None and old_path is not None  # rotation follows appends to this file
            self._unmap(old_fd)
            self._open()
        os.close(old_fd)
        count = journal_files.fold_file(outbox, old_path, final=True)
        journal_files.forget(outbox, old_path, old_owner)
        return count

    def _adopt_orphans(self, outbox: JournalSink) -> int:
        return journal_files.adopt_dead(self.directory, outbox, skip=self._path)
