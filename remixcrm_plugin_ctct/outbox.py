"""The durable outbox: every accepted event is a row in ``outbox.sqlite3`` before the hook returns.

SQLite in WAL mode with ``synchronous=NORMAL``: a commit reaches the operating system before
the hook returns, so ``kill -9`` of RemixCRM loses nothing (a power cut may lose the last
commits). Several processes share the file: a row is *leased* to one process at a time, and a
lease that is not finished (the process died) expires and the row is worked again
(at-least-once). Rows for the same email that are still pending coalesce into one push.

States: ``pending`` → ``sending`` (leased) → ``delivered`` | ``dead``, or back to ``pending``
for a retry.
"""

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import NamedTuple

from . import db
from .journal import record as journal_record

FILE_NAME = "outbox.sqlite3"
LEASE_SECONDS = 300.0  # longer than the slowest send: token lock wait + refresh + two API calls
LEASE_CHECK_EVERY = 5.0  # seconds between looks for expired leases

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY,
  email_key TEXT,                        -- lower-cased email; NULL once purged
  client_id TEXT NOT NULL,
  other_clients TEXT NOT NULL DEFAULT '',  -- ids of earlier events coalesced into this row
  event TEXT NOT NULL,
  contact TEXT,                          -- JSON {email, fields, email_opt_in}; NULL once purged
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  created_at REAL NOT NULL,
  next_attempt_at REAL NOT NULL,
  lease_owner TEXT,
  lease_until REAL,
  last_error TEXT,
  outcome TEXT,
  contact_id TEXT,
  updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_pending_per_email ON events(email_key) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS sending_per_email ON events(email_key) WHERE state = 'sending';
CREATE INDEX IF NOT EXISTS due ON events(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS by_client ON events(client_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_ADD = """
INSERT INTO events (email_key, client_id, event, contact, state, created_at, next_attempt_at, updated_at)
VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)
ON CONFLICT (email_key) WHERE state = 'pending' DO UPDATE SET
  contact = json_patch(contact, excluded.contact),
  other_clients = CASE WHEN client_id = excluded.client_id THEN other_clients
                       ELSE trim(other_clients || ' ' || client_id) END,
  client_id = excluded.client_id, event = excluded.event, updated_at = excluded.updated_at
"""


class Row(NamedTuple):
    id: int
    client_id: str
    event: str
    contact: dict  # {"email": …, "fields": {…}, "email_opt_in": …}
    attempts: int
    created_at: float


class Outbox:
    def __init__(self, directory: Path):
        self.path = Path(directory) / FILE_NAME
        self._local = threading.local()
        # one writer at a time inside this process: SQLite's own busy handler sleeps in
        # milliseconds, a Python lock hands over in microseconds (this is the hook's path)
        self._write = threading.RLock()
        self._leases_checked_at = float("-inf")

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r})"

    # --- connections ---
    def _conn(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # new thread, or a forked child
            local.conn, local.pid = self._connect(), os.getpid()
        return local.conn

    def _connect(self) -> sqlite3.Connection:
        return db.connect(self.path, _SCHEMA)

    def _exec(self, sql: str, args=()) -> sqlite3.Cursor:
        with self._write:
            return self._conn().execute(sql, args)

    def _query(self, sql: str, args=()) -> list:
        return self._conn().execute(sql, args).fetchall()

    # --- the hook's path ---
    def add(self, contact, event: str, now: float | None = None) -> None:
        """Record one event (coalescing with a pending row for the same email). The hook writes
        the journal instead; this is the same row, for tools and tests."""
        self.add_records([journal_record(contact, event, time.time() if now is None else now)])

    def add_records(self, records: list[dict], journal: str | None = None, offset: int = 0) -> None:
        """Fold journal lines into the outbox and note how far we got, in one transaction:
        each line is taken exactly once, even if this process dies halfway."""
        args = []
        for r in records:
            data = {"email": r["email"], "fields": r.get("fields", {})}
            if r.get("email_opt_in") is not None:  # JSON merge-patch: a null would delete the key
                data["email_opt_in"] = r["email_opt_in"]
            args.append((r["email"].lower(), str(r["client_id"]), r["event"], json.dumps(data), r["at"], r["at"], r["at"]))
        with self._write:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_ADD, args)
                if journal is not None:
                    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                                 (f"journal:{journal}", str(offset)))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def journal_offset(self, journal: str) -> int:
        found = self.get_meta(f"journal:{journal}")
        return int(found) if found else 0

    def forget_journal(self, journal: str) -> None:
        self.set_meta(f"journal:{journal}", None)

    # --- the sender's path ---
    def claim(self, owner: str, now: float | None = None, lease: float = LEASE_SECONDS) -> Row | None:
        """Lease the next row that is due (or whose lease expired), or None."""
        rows = self.claim_many(owner, 1, now, lease)
        return rows[0] if rows else None

    def claim_many(self, owner: str, limit: int, now: float | None = None, lease: float = LEASE_SECONDS) -> list[Row]:
        """Lease up to ``limit`` due rows (or rows whose lease expired), oldest first, in one
        transaction. One email at a time: a row waits while another row for its email is in
        flight (two simultaneous writes to one contact are Constant Contact's 409)."""
        now = time.time() if now is None else now
        sql = """
        UPDATE events SET state = 'sending', lease_owner = :owner, lease_until = :until,
                          attempts = attempts + 1, updated_at = :now
        WHERE id IN (SELECT e.id FROM events e
                     WHERE {where}
                       AND NOT EXISTS (SELECT 1 FROM events s WHERE s.state = 'sending' AND s.email_key = e.email_key
                                       AND s.lease_until >= :now AND s.id != e.id)
                     ORDER BY {order} LIMIT :limit)
        RETURNING id, client_id, event, contact, attempts, created_at
        """
        args = {"owner": owner, "until": now + lease, "now": now, "limit": limit}
        choices = [("e.state = 'pending' AND e.next_attempt_at <= :now", "e.next_attempt_at, e.id")]
        if now - self._leases_checked_at >= LEASE_CHECK_EVERY:  # rare (a process died): not on every claim
            self._leases_checked_at = now
            choices.insert(0, ("e.state = 'sending' AND e.lease_until < :now", "e.lease_until"))
        with self._write:
            conn = self._conn()
            for where, order in choices:
                found = conn.execute(sql.format(where=where, order=order), args).fetchall()
                if found:
                    rows = [Row(f[0], f[1], f[2], json.loads(f[3]), f[4], f[5]) for f in found]
                    return sorted(rows, key=lambda r: r.id)
        return []

    def delivered(self, row_id: int, contact_id: str | None, outcome: str, now: float | None = None) -> None:
        self._exec("UPDATE events SET state = 'delivered', contact_id = ?, outcome = ?, last_error = NULL, "
                   "lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?",
                   (contact_id, outcome, time.time() if now is None else now, row_id))

    def finished(self, row_id: int, state: str, outcome: str, now: float | None = None) -> None:
        """A row that ends without a push: ``skipped`` (the consent guard) or ``dry_run``."""
        self._exec("UPDATE events SET state = ?, outcome = ?, last_error = NULL, lease_owner = NULL, lease_until = NULL, "
                   "updated_at = ? WHERE id = ?", (state, outcome, time.time() if now is None else now, row_id))

    def dead(self, row_id: int, error: str, now: float | None = None) -> None:
        self._exec("UPDATE events SET state = 'dead', outcome = 'dead', last_error = ?, lease_owner = NULL, "
                   "lease_until = NULL, updated_at = ? WHERE id = ?", (error, time.time() if now is None else now, row_id))

    def retry_later(self, row_id: int, when: float, error: str | None, count_attempt: bool = True) -> None:
        """Back to pending, due at ``when``. If a newer event for the same email arrived meanwhile,
        the two rows become one (the newer fields win)."""
        now = time.time()
        undo = 0 if count_attempt else 1
        with self._write:
            conn = self._conn()
            try:
                conn.execute("UPDATE events SET state = 'pending', next_attempt_at = ?, last_error = coalesce(?, last_error), "
                             "attempts = attempts - ?, lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?",
                             (when, error, undo, now, row_id))
            except sqlite3.IntegrityError:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(
                        "UPDATE events SET contact = json_patch(o.contact, events.contact), "
                        "other_clients = trim(events.other_clients || ' ' || o.client_id || ' ' || o.other_clients), "
                        "created_at = min(events.created_at, o.created_at), attempts = events.attempts + o.attempts - ? "
                        "FROM (SELECT * FROM events WHERE id = ?) AS o "
                        "WHERE events.email_key = o.email_key AND events.state = 'pending'", (undo, row_id))
                    conn.execute("DELETE FROM events WHERE id = ?", (row_id,))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

    def release(self, owner: str) -> int:
        """Hand back every row this owner still leases (a process exiting), without counting
        the attempt. Returns how many."""
        rows = self._query("SELECT id FROM events WHERE state = 'sending' AND lease_owner = ?", (owner,))
        for (row_id,) in rows:
            self.retry_later(row_id, time.time(), None, count_attempt=False)
        return len(rows)

    def next_due_at(self) -> float | None:
        """When the next row becomes workable (a due retry or an expiring lease)."""
        (due,) = self._query("SELECT min(t) FROM (SELECT min(next_attempt_at) AS t FROM events WHERE state = 'pending' "
                             "UNION ALL SELECT min(lease_until) FROM events WHERE state = 'sending')")[0]
        return due

    def due_count(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return self._query("SELECT count(*) FROM events WHERE state = 'pending' AND next_attempt_at <= ?", (now,))[0][0]

    def checkpoint(self) -> None:
        """Fold the WAL into the database without blocking writers (the sender calls this)."""
        self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")

    # --- shared switches (quota pause) ---
    def get_meta(self, key: str) -> str | None:
        found = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return found[0][0] if found else None

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._exec("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self._exec("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    # --- counters (e.g. `throttled` answers), for status ---
    def bump_counter(self, name: str, by: int = 1) -> None:
        self._exec("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                   "DO UPDATE SET value = CAST(value AS INTEGER) + ?", (f"counter:{name}", str(by), by))

    def counter(self, name: str) -> int:
        found = self.get_meta(f"counter:{name}")
        return int(found) if found else 0

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()
