"""Opening the plugin's SQLite files the same way everywhere: 0600, WAL, no checkpoint in a commit.

Never open or close a database file outside SQLite. POSIX locks belong to a process and a file,
not to a descriptor: closing *any* descriptor of the file drops every lock this process holds on
it, SQLite's included, and SQLite never notices. Another process closing its last connection
then checkpoints and deletes the WAL under us, and our later commits vanish. So the file is
created by SQLite itself and only ``chmod``-ed (which touches no lock).
"""

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

from .. import files, forksafe

log = logging.getLogger("remixcrm_plugin_ctct")

SETUP_PATIENCE = 10.0  # seconds to keep trying while another process sets the same file up
REPLACED_CHECK_EVERY = 2.0  # seconds between looks whether the file was replaced under us
_SIDE_FILES = ("", "-wal", "-shm")

_ready: set[tuple] = set()  # (path, pid, file id): schema and WAL mode set up by this process
_setup_lock = threading.Lock()  # first setup of a file, once per process (re-made after fork)
_hooked = False

FileId = tuple[int, int]  # (st_dev, st_ino)


def connect(path: Path, schema: str, busy_timeout: float = 10.0) -> sqlite3.Connection:
    """A connection for one thread. The first one in each process for a file switches it to
    WAL and creates the tables; concurrent first connections (several RemixCRM workers starting
    at once) would otherwise meet "database is locked", which SQLite's busy timeout does not
    cover for a journal-mode change."""
    return _connect(Path(path), schema, busy_timeout)[0]


def _connect(path: Path, schema: str, busy_timeout: float) -> tuple[sqlite3.Connection, FileId]:
    files.ensure_private_dir(path.parent)
    while True:
        before = _file_id(path)
        with forksafe.sqlite_call:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=busy_timeout, factory=_GatedConnection
            )
        found = _file_id(path)
        if found is not None and (before is None or before == found):
            break
        # replaced (or deleted) while we opened it: we cannot tell which file we hold; once more
        forksafe.keep(conn)  # closing it could delete the WAL that now belongs to the new file
    try:
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives kill -9, not a power cut
        # no checkpoint inside a commit: it would land on whoever commits (the sender checkpoints)
        conn.execute("PRAGMA wal_autocheckpoint=0")
        key = (str(path), os.getpid(), found)
        if key not in _ready:
            with _lock():
                if key not in _ready:
                    # before WAL mode: SQLite gives -wal and -shm the main file's permissions
                    _make_private(path)
                    _patiently(lambda: conn.execute("PRAGMA journal_mode=WAL"))
                    _patiently(lambda: conn.executescript(schema))
                    _make_private(path)  # another process may have made the side files before our chmod
                    _ready.add(key)
    except BaseException:
        conn.close()  # no lock of ours is lost: SQLite keeps the file open while others use it
        raise
    return conn, found


def forget_setups() -> None:
    """As if this process had set up no file yet (its next connection to each sets it up again):
    for tests of concurrent first connections."""
    _ready.clear()


class _Rows:
    """What a statement returned, read in full inside the fork gate (a cursor read later would
    step SQLite outside it)."""

    def __init__(self, cursor: sqlite3.Cursor):
        self._rows = cursor.fetchall()
        self.rowcount, self.lastrowid = cursor.rowcount, cursor.lastrowid

    def fetchall(self) -> list:
        rows, self._rows = self._rows, []
        return rows

    def fetchone(self):
        return self._rows.pop(0) if self._rows else None

    def __iter__(self):
        return iter(self.fetchall())


class _GatedConnection(sqlite3.Connection):
    """Every call into SQLite inside ``forksafe.sqlite_call``: no fork lands in the middle of one."""

    def execute(self, *args):
        with forksafe.sqlite_call:
            return _Rows(super().execute(*args))

    def executemany(self, *args):
        with forksafe.sqlite_call:
            return _Rows(super().executemany(*args))

    def executescript(self, *args):
        with forksafe.sqlite_call:
            return _Rows(super().executescript(*args))

    def close(self) -> None:
        with forksafe.sqlite_call:
            super().close()


def _ended(thread: threading.Thread) -> bool:
    """Whether ``thread`` has finished, so its connection may be closed by another. Not the main
    thread: at interpreter exit it counts as stopped before the atexit handlers run, and it still
    queries (the worker's exit flush) — closing its connection under it crashed the process."""
    return not thread.is_alive() and thread is not threading.main_thread()


def _lock() -> threading.Lock:
    global _hooked
    if not _hooked:  # lazily: importing the plugin registers nothing. A double registration is harmless
        _hooked = True
        forksafe.after_fork_in_child(_after_fork)
    return _setup_lock


def _after_fork() -> None:
    global _setup_lock
    _setup_lock = threading.Lock()  # a parent thread may have held it at the fork


def _file_id(path: Path) -> FileId | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _make_private(path: Path) -> None:
    """0600 for the database and its side files (SQLite creates them 0644 less the umask)."""
    for suffix in _SIDE_FILES:
        name = f"{path}{suffix}"
        try:
            st = os.stat(name)
            if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
                os.chmod(name, 0o600)  # a chmod takes no descriptor: no lock is touched
        except FileNotFoundError:
            continue
        except OSError as e:  # read-only file system: the directory is 0700 all the same
            log.warning("could not make %s private (%s); run `chmod 600 %s`", name, e, name)


def _patiently(step) -> None:
    deadline = time.monotonic() + SETUP_PATIENCE
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # another process holds the file for its own setup: back off briefly


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection):
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on any error: the write lock is taken at
    the start, so the transaction never meets "locked" halfway (the busy timeout covers BEGIN).
    No fork lands inside it (``forksafe.sqlite_call``)."""
    with forksafe.sqlite_call:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the original error says more
            raise


def is_damaged(error: BaseException) -> bool:
    """True for "file is not a database" and "database disk image is malformed" (not for locks)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    text = str(error)
    return isinstance(error, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text)


class Connections:
    """One connection per thread and process for one SQLite file.

    Fork-safe: a child never uses (nor closes) the parent's connections, it opens its own.
    A file replaced under a running process (restored from a backup, a damaged one moved aside)
    is noticed within ``REPLACED_CHECK_EVERY`` seconds and the new file is used."""

    def __init__(self, path: Path, schema: str, busy_timeout: float = 10.0):
        self.path, self.schema, self.busy_timeout = Path(path), schema, busy_timeout
        self._reset()
        forksafe.after_fork_in_child(self._after_fork)

    def __repr__(self) -> str:
        return f"Connections({str(self.path)!r})"

    def _reset(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        # strong references to every connection this process opened, with its thread: when a
        # fork clears the other threads' state, their connections must not be finalised (closed)
        # in the child before our callback parks them
        self._open: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._pid = os.getpid()

    def _after_fork(self) -> None:
        for _, conn in self._open:
            forksafe.keep(conn)
        forksafe.keep(getattr(self._local, "conn", None))
        self._reset()

    def get(self) -> sqlite3.Connection:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or self._pid != os.getpid():
            if self._pid != os.getpid():  # forked without our callback (should not happen): never reuse
                self._after_fork()
                local = self._local
            return self._open_for(local)
        now = time.monotonic()
        if now - local.checked_at >= REPLACED_CHECK_EVERY:
            local.checked_at = now
            if _file_id(self.path) != local.file_id:
                log.info("%s was replaced or removed while in use; using the file now at that path", self.path)
                self._forget(conn)
                forksafe.keep(conn)  # never close it: its WAL name now belongs to the new file
                return self._open_for(local)
        return conn

    def _open_for(self, local) -> sqlite3.Connection:
        conn, file_id = _connect(self.path, self.schema, self.busy_timeout)
        local.conn, local.file_id, local.checked_at = conn, file_id, time.monotonic()
        me = threading.current_thread()
        with self._lock:
            gone = [c for t, c in self._open if _ended(t)]
            self._open = [(t, c) for t, c in self._open if not _ended(t)] + [(me, conn)]
        for old in gone:  # threads that ended (a thread per request in some hosts): same process, safe to close
            old.close()
        return conn

    def _forget(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            self._open = [(t, c) for t, c in self._open if c is not conn]

    def close(self) -> None:
        """Close this thread's connection and those of ended threads; forget the others (they
        close when their thread lets go of them)."""
        if self._pid != os.getpid():
            self._after_fork()
            return
        mine = getattr(self._local, "conn", None)
        with self._lock:
            closing = [c for t, c in self._open if c is mine or _ended(t)]
            self._open = []
        self._local = threading.local()
        for conn in closing:
            conn.close()
