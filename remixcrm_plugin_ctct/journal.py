"""The outbox's front door: a per-process append-only journal, so the hook's durable write is
one ``os.write`` (a few microseconds) instead of a SQLite transaction (tens, with a long tail).

Why this is as safe as a SQLite commit in WAL mode with ``synchronous=NORMAL``: once ``write``
returns, the bytes are in the operating system's page cache, so ``kill -9`` of RemixCRM loses
nothing (a power cut can lose the last moments, as with SQLite). The sender moves journal lines
into the SQLite outbox in batches; the offset it reached is stored *in the same transaction*,
so every line is taken exactly once. Each process writes only its own file (no interleaving
between processes) and holds a lock on it while alive; a file whose lock is free belongs to a
process that died, and any other process takes it over and folds it into the outbox.
"""

import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path

from filelock import FileLock, Timeout

from . import forksafe

log = logging.getLogger("remixcrm_plugin_ctct")

ROTATE_AT = 1 << 20  # bytes: start a new file once this much has been folded into the outbox
FOLD_CHUNK = 256 << 10  # bytes read and folded per transaction
ADOPT_EVERY = 10.0  # seconds between looks for journals of processes that died


def record(contact, event: str, now: float) -> dict:
    """One event as the journal and the outbox know it."""
    found = {"email": contact.email, "client_id": contact.client_id, "event": event, "fields": contact.fields, "at": now}
    if contact.email_opt_in is not None:
        found["email_opt_in"] = contact.email_opt_in
    return found


def encode(contact, event: str, now: float) -> bytes:
    """One journal line."""
    return (json.dumps(record(contact, event, now), separators=(",", ":")) + "\n").encode()


class Journal:
    def __init__(self, directory: Path):
        self.directory = Path(directory) / "journal"
        self._append_lock = threading.Lock()  # threads of this process take turns writing
        self._fold_lock = threading.Lock()  # one folder at a time
        self._fd: int | None = None
        self._path: Path | None = None
        self._owner_lock: FileLock | None = None
        self._pid: int | None = None
        self._size = 0  # bytes written to the current file (by this process: it is the only writer)
        self.last_append = 0.0  # monotonic time of the last hook write
        self._folded = 0  # bytes of the current file already folded (a cheap "anything new?")
        self._adopted_at = -ADOPT_EVERY
        forksafe.after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """The child writes its own file (append() opens one, as the pid differs); the parent's
        file, fd and owner lock stay the parent's: the lock object is parked, never released
        here (releasing it would unlock the parent's file, which is shared across fork)."""
        self._append_lock = threading.Lock()  # a parent thread may have held either at fork time
        self._fold_lock = threading.Lock()
        forksafe.keep(self._owner_lock)
        self._fd, self._path, self._owner_lock, self._pid, self._size, self._folded = None, None, None, None, 0, 0

    def __repr__(self) -> str:
        return f"Journal({str(self.directory)!r})"

    # --- the hook's path ---
    def append(self, data: bytes) -> None:
        """Durable once this returns. Raises OSError (disk full, read-only) for the caller's fallback."""
        with self._append_lock:
            if self._pid != os.getpid():
                self._open()
            written = os.write(self._fd, data)
            if written != len(data):  # a short write on a regular file means the disk is full
                raise OSError(28, "short write to the outbox journal")
            self._size += written
            self.last_append = time.monotonic()

    def _open(self) -> None:
        self.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the plugin's own dir: 0700 too
        self.directory.mkdir(mode=0o700, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        self._path = self.directory / name
        owner = FileLock(str(self._path) + ".lock", timeout=0, mode=0o600, thread_local=False)
        owner.acquire()  # held for this process's life: tells other processes we are alive
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._owner_lock, self._pid, self._size, self._folded = owner, os.getpid(), 0, 0

    # --- the sender's path ---
    def backlog(self, folded_offset) -> bool:
        """True when this process wrote lines that are not in the outbox yet."""
        path = self._path
        return path is not None and self._pid == os.getpid() and self._size > folded_offset(path.name)

    def fold_into(self, outbox) -> int:
        """Move new lines (ours, and any dead process's) into the outbox. Returns how many."""
        if not self._fold_lock.acquire(blocking=False):
            return 0  # another worker of ours is at it
        try:
            count = 0
            if self._path is not None and self._pid == os.getpid() and self._size > self._folded:
                size = self._size  # only this process appends to its file
                count += self._fold_file(outbox, self._path)
                self._folded = size
                if self._size >= ROTATE_AT:
                    count += self._rotate(outbox)
            now = time.monotonic()
            if now - self._adopted_at >= ADOPT_EVERY:  # a directory scan: not on every fold
                self._adopted_at = now
                count += self._adopt_orphans(outbox)
            return count
        finally:
            self._fold_lock.release()

    def _fold_file(self, outbox, path: Path) -> int:
        """Fold ``path`` from where the outbox says we stopped, a chunk per transaction (memory
        stays small however long the file grew while sending was paused)."""
        count = 0
        while True:
            start = outbox.journal_offset(path.name)
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    chunk = f.read(FOLD_CHUNK)
            except FileNotFoundError:
                return count
            end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next fold
            if end == 0:
                return count
            records = []
            for line in chunk[:end].splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:  # torn by a power cut: nothing we can do but say so
                    log.error("skipping a damaged line in the outbox journal %s", path)
            outbox.add_records(records, path.name, start + end)
            count += len(records)
            if len(chunk) < FOLD_CHUNK:
                return count

    def _rotate(self, outbox) -> int:
        with self._append_lock:  # no hook writes to the old file after this
            old_fd, old_path, old_owner = self._fd, self._path, self._owner_lock
            self._open()
        os.close(old_fd)
        count = self._fold_file(outbox, old_path)
        self._forget(outbox, old_path, old_owner)
        return count

    def _adopt_orphans(self, outbox) -> int:
        count = 0
        for path in self.directory.glob("*.jsonl") if self.directory.exists() else ():
            if path == self._path:
                continue
            lock = FileLock(str(path) + ".lock", timeout=0, mode=0o600, thread_local=False)
            try:
                lock.acquire()
            except Timeout:
                continue  # its process is alive and folds it itself
            count += self._fold_file(outbox, path)
            self._forget(outbox, path, lock)
        return count

    def _forget(self, outbox, path: Path, lock) -> None:
        path.unlink(missing_ok=True)
        outbox.forget_journal(path.name)
        if lock is not None:
            lock.release()
            Path(str(path) + ".lock").unlink(missing_ok=True)
