"""Opening the plugin's SQLite files the same way everywhere: 0600, WAL, no checkpoint in a commit."""

import os
import sqlite3
import threading
import time
from pathlib import Path

_ready: dict[tuple[str, int], bool] = {}  # (path, pid) -> schema and WAL mode set up
_ready_lock = threading.Lock()
SETUP_PATIENCE = 10.0  # seconds to keep trying while another process sets the same file up


def connect(path: Path, schema: str, busy_timeout: float = 10.0) -> sqlite3.Connection:
    """A connection for one thread. The first one in each process switches the file to WAL and
    creates the tables; concurrent first connections (several RemixCRM workers starting at
    once) would otherwise meet "database is locked", which SQLite's busy timeout does not cover
    for a journal-mode change."""
    path = Path(path)
    key = (str(path), os.getpid())
    if key not in _ready:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))  # 0600 before SQLite creates it
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives kill -9, not a power cut
    # no checkpoint inside a commit: it would land on whoever commits (the sender checkpoints)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    if key not in _ready:
        with _ready_lock:
            if key not in _ready:
                _patiently(lambda: conn.execute("PRAGMA journal_mode=WAL"))
                _patiently(lambda: conn.executescript(schema))
                _ready[key] = True
    return conn


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
