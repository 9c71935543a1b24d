"""The durable outbox: every accepted event is a row in ``outbox.sqlite3`` before the hook returns.

SQLite in WAL mode with ``synchronous=NORMAL``: a commit reaches the operating system before
the hook returns, so ``kill -9`` of RemixCRM loses nothing (a power cut may lose the last
commits). Several processes share the file: a row is *leased* to one process at a time, and a
lease that is not finished (the process died) expires and the row is worked again
(at-least-once). Rows for the same email that are still pending coalesce into one push.

What is pushed is the contact's *newest known state* (table ``latest``, see :mod:`.newest`),
read when the row is claimed: events are merged in the order they happened, not the order in
which the journals were folded, so a later-folded older event can never undo a newer one.

States: ``pending`` → ``sending`` (leased) → ``delivered`` | ``dead``, or back to ``pending``
for a retry.
"""

import datetime as dt
import json
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from .. import forksafe
from . import db, lanes, leases, offsets, outbox_fold
from .interfaces import Row, Summary
from .newest import consent_in_force
from .outbox_admin import AdminQueries
from .outbox_sql import CLAIM, DELIVERED, DUE, RECLAIMABLE, SCHEMA, SET_META, STAMPS

__all__ = ["Outbox", "Row", "Summary", "FILE_NAME", "LEASE_SECONDS", "THROTTLED"]

FILE_NAME = "outbox.sqlite3"
# Short, so that rows of a process that died without being provably dead (another machine)
# are taken back soon; the sender renews a lease before each send (``renew``), and the rows of
# a holder on this machine that is provably alive are left to it for LIVE_HOLDER_GRACE more:
# one send may take a token-lock wait + a refresh + two API calls.
LEASE_SECONDS = 30.0
LIVE_HOLDER_GRACE = 270.0
LEASE_CHECK_EVERY = 5.0  # seconds between looks for expired leases and dead holders
THROTTLED = "throttled"  # counter of Constant Contact's 429 "throttled" answers (see bump_counter)


class Outbox(AdminQueries):
    """The SQLite implementation of :class:`.interfaces.Outbox` (embedded, zero-config)."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / FILE_NAME
        self._db = db.Connections(self.path, SCHEMA)
        self._reset()
        self._leases_checked_at = float("-inf")
        forksafe.after_fork_in_child(self._reset)

    def _reset(self) -> None:
        # one writer at a time inside this process: SQLite's own busy handler sleeps in
        # milliseconds, a Python lock hands over in microseconds.
        # Re-made after a fork: a parent's sender thread may have held it at that moment.
        self._write = threading.RLock()

    @property
    def write_lock(self) -> threading.RLock:
        """This process's writer lock (re-made in a forked child); held, it keeps this process's
        other threads from writing. For tests of fork safety."""
        return self._write

    @property
    def connections(self) -> db.Connections:
        """This file's per-thread connections, for the tables kept beside the outbox (the
        suppression mirror): one connection per thread, one schema setup, one writer lock."""
        return self._db

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r})"

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def lease_seconds(self) -> float:
        return LEASE_SECONDS  # looked up at each use: tests shorten it

    def has_state(self) -> bool:
        """False while the file does not exist (the data dir cannot be made: only memory holds events)."""
        return os.path.exists(self.path)

    def _conn(self) -> sqlite3.Connection:
        return self._db.get()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._write:
            return self._conn().execute(sql, args)

    def _query(self, sql: str, args: tuple | dict = ()) -> list:
        return self._conn().execute(sql, args).fetchall()

    # --- the fold (journal -> outbox) ---
    def add_records(
        self, records: list[dict], journal: str | None = None, offset: int = 0, start: int | None = None
    ) -> bool:
        """Fold journal records (:meth:`record.Event.to_record`) into the outbox and note how far
        we got, in one transaction: each line is taken exactly once, even if this process dies
        halfway. ``start``: where they were read from; if another folder moved the offset on
        meanwhile (a host and the sender process both folding one live journal after a switch of
        ``sender``), nothing is written: False. See :mod:`.outbox_fold`."""
        now = time.time()
        key = None if journal is None else f"journal:{journal}"
        with self._write, db.transaction(self._conn()) as conn:
            if key is not None and start is not None:
                found = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                if offsets.parse(found[0] if found else None) != start:
                    return False
            outbox_fold.fold(conn, records, now)
            if key is not None:
                conn.execute(SET_META, (key, str(offset)))
        return True

    def journal_offset(self, journal: str) -> int:
        return offsets.parse(self.get_meta(f"journal:{journal}"))

    def forget_journal(self, journal: str) -> None:
        self.set_meta(f"journal:{journal}", offsets.tombstone(time.time()))  # see store/offsets.py

    # --- the sender's path ---
    def claim(self, owner: str, now: float | None = None, lease: float = LEASE_SECONDS) -> Row | None:
        """Lease the next row that is due (or whose lease expired), or None."""
        rows = self.claim_many(owner, 1, now, lease)
        return rows[0] if rows else None

    def claim_many(
        self,
        owner: str,
        limit: int,
        now: float | None = None,
        lease: float = LEASE_SECONDS,
        lane: str | None = None,
        unknown_consent: str = "implicit",
    ) -> list[Row]:
        """Lease up to ``limit`` due rows (or rows whose holder is gone), oldest first, in one
        transaction; of one lane only (``lanes.SIGN_UP`` or ``lanes.IMPORT`` as ``unknown_consent``
        makes them), or of any. One email at a time: a row waits while another row for its email
        is in flight (two simultaneous writes to one contact are Constant Contact's 409). The
        row's contact is the newest known state of that email, as of now."""
        now = time.time() if now is None else now
        args: dict = {"owner": owner, "until": now + lease, "now": now, "limit": limit, "grace": LIVE_HOLDER_GRACE}
        args |= lanes.sql_args(unknown_consent)
        only = "" if lane is None else f" AND {'' if lane == lanes.IMPORT else 'NOT '}{lanes.IMPORT_SQL}"
        with self._write, db.transaction(self._conn()) as conn:
            found = []
            if now - self._leases_checked_at >= LEASE_CHECK_EVERY:  # rare (a process died): not on every claim
                self._leases_checked_at = now
                args["dead"], args["alive"] = leases.holders(conn)
                found = conn.execute(CLAIM.format(where=RECLAIMABLE, lane="", order="e.lease_until"), args).fetchall()
            if not found:
                claim = CLAIM.format(where=DUE, lane=only, order="e.next_attempt_at, e.id")
                found = conn.execute(claim, args).fetchall()
            stamps = {}
            if found:
                leases.note_holder(conn, owner)
                stamps = dict(conn.execute(STAMPS, (json.dumps([f[6] for f in found]),)).fetchall())
        rows = [
            Row(f[0], f[1], f[2], consent_in_force(json.loads(f[3]), stamps.get(f[6]), f[5], f[2]), f[4], f[5])
            for f in found
        ]
        return sorted(rows, key=lambda r: r.id)

    def renew(self, owner: str, row_ids, lease: float = LEASE_SECONDS, now: float | None = None) -> set[int]:
        """Extend ``owner``'s leases of ``row_ids``; returns the ids it still holds (a row it lost,
        because its lease ran out and another process took it, must not be sent again)."""
        ids = list(row_ids)
        if not ids:
            return set()
        now = time.time() if now is None else now
        with self._write:  # RETURNING: the statement (and its write) ends only once its rows are read
            found = (
                self._conn()
                .execute(
                    "UPDATE events SET lease_until = ? WHERE state = 'sending' AND lease_owner = ? "
                    "AND id IN (SELECT value FROM json_each(?)) RETURNING id",
                    (now + lease, owner, json.dumps(ids)),
                )
                .fetchall()
            )
        return {r[0] for r in found}

    def take(self, owner: str, row: Row, lease: float = LEASE_SECONDS, now: float | None = None) -> Row | None:
        """Right before ``row``'s send, in one statement: None if ``owner`` lost its lease (it ran
        out during earlier sends and another process took the row: it must not be sent again);
        else the lease extended and ``row`` with the newest known state of its email as of now (a
        decline folded from another process's journal after the claim must still win)."""
        now = time.time() if now is None else now
        with self._write, db.transaction(self._conn()) as conn:
            found = conn.execute(
                "UPDATE events SET lease_until = ?, contact = coalesce((SELECT l.contact FROM latest l "
                "WHERE l.email_key = events.email_key), contact) "
                "WHERE id = ? AND state = 'sending' AND lease_owner = ? RETURNING contact, email_key",
                (now + lease, row.id, owner),
            ).fetchall()
            stamps = (
                conn.execute("SELECT stamps FROM latest WHERE email_key = ?", found[0][1:]).fetchall() if found else []
            )
        if not found:
            return None
        if not found[0][0]:
            return row
        return row._replace(
            contact=consent_in_force(
                json.loads(found[0][0]), stamps[0][0] if stamps else None, row.created_at, row.event
            )
        )

    def delivered(self, row_id: int, contact_id: str | None, outcome: str, now: float | None = None) -> None:
        self._exec(DELIVERED, (contact_id, outcome, time.time() if now is None else now, row_id))

    def delivered_many(self, done: Sequence[tuple[int, str | None, str]], now: float | None = None) -> None:
        """Rows pushed together, each as ``(row_id, contact_id, outcome)``, in one transaction: a
        commit per row of an import was the sender's largest cost per event (bench/prefork.py)."""
        if not done:
            return
        at = time.time() if now is None else now
        with self._write, db.transaction(self._conn()) as conn:
            conn.executemany(DELIVERED, [(contact_id, outcome, at, row_id) for row_id, contact_id, outcome in done])

    def finished(self, row_id: int, state: str, outcome: str, now: float | None = None) -> None:
        """A row that ends without a push: ``skipped`` (the consent guard) or ``dry_run``."""
        self._exec(
            "UPDATE events SET state = ?, outcome = ?, last_error = NULL, lease_owner = NULL, "
            "lease_until = NULL, updated_at = ? WHERE id = ?",
            (state, outcome, time.time() if now is None else now, row_id),
        )

    def dead(self, row_id: int, error: str, now: float | None = None) -> None:
        self._exec(
            "UPDATE events SET state = 'dead', outcome = 'dead', last_error = ?, lease_owner = NULL, "
            "lease_until = NULL, updated_at = ? WHERE id = ?",
            (error, time.time() if now is None else now, row_id),
        )

    def retry_later(self, row_id: int, when: float, error: str | None, count_attempt: bool = True) -> None:
        """Back to pending, due at ``when``. If a newer event for the same email arrived meanwhile,
        the two rows become one (the push carries the newest state anyway)."""
        now = time.time()
        undo = 0 if count_attempt else 1
        with self._write:
            conn = self._conn()
            try:
                conn.execute(
                    "UPDATE events SET state = 'pending', next_attempt_at = ?, "
                    "last_error = coalesce(?, last_error), attempts = attempts - ?, lease_owner = NULL, "
                    "lease_until = NULL, updated_at = ? WHERE id = ?",
                    (when, error, undo, now, row_id),
                )
            except sqlite3.IntegrityError:
                with db.transaction(conn):
                    conn.execute(
                        "UPDATE events SET contact = json_patch(o.contact, events.contact), "
                        "other_clients = trim(events.other_clients || ' ' || o.client_id || ' ' || o.other_clients), "
                        "created_at = min(events.created_at, o.created_at), "
                        "attempts = events.attempts + o.attempts - ? "
                        "FROM (SELECT * FROM events WHERE id = ?) AS o "
                        "WHERE events.email_key = o.email_key AND events.state = 'pending'",
                        (undo, row_id),
                    )
                    conn.execute("DELETE FROM events WHERE id = ?", (row_id,))

    def release(self, owner: str, keep: Collection[int] = ()) -> int:
        """Hand back every row this owner still leases (a process exiting), without counting
        the attempt. Returns how many."""
        rows = self._query("SELECT id FROM events WHERE state = 'sending' AND lease_owner = ?", (owner,))
        rows = [row for row in rows if row[0] not in keep]
        for (row_id,) in rows:
            self.retry_later(row_id, time.time(), None, count_attempt=False)
        return len(rows)

    def next_due_at(self) -> float | None:
        """When the next row becomes workable (a due retry or an expiring lease). A lease that
        already ran out is the periodic look's business (its holder may be alive and sending)."""
        now = time.time()
        (due,) = self._query(
            "SELECT min(t) FROM (SELECT min(next_attempt_at) AS t FROM events WHERE state = 'pending' "
            "UNION ALL SELECT min(lease_until) FROM events "
            "WHERE state = 'sending' AND lease_until >= ?)",
            (now,),
        )[0]
        return due

    def first_due_import(self, unknown_consent: str, now: float | None = None) -> float | None:
        """Since when the longest-waiting due row of the import lane has been due (None: none is)."""
        now = time.time() if now is None else now
        args = {"now": now} | lanes.sql_args(unknown_consent)
        return self._query(f"SELECT min(e.next_attempt_at) FROM events e WHERE {DUE} AND {lanes.IMPORT_SQL}", args)[0][
            0
        ]

    def due_count(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return self._query("SELECT count(*) FROM events WHERE state = 'pending' AND next_attempt_at <= ?", (now,))[0][0]

    def pending_count(self) -> int:
        """Events not sent yet, whenever due and whoever holds them (all processes together)."""
        return self._query("SELECT count(*) FROM events WHERE state IN ('pending', 'sending')")[0][0]

    def checkpoint(self) -> None:
        """Fold the WAL into the database without blocking writers (the sender calls this)."""
        self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def in_flight_count(self, owner: str | None = None) -> int:
        """Rows leased right now: to any process, or to ``owner``."""
        if owner is None:
            return self._query("SELECT count(*) FROM events WHERE state = 'sending'")[0][0]
        return self._query("SELECT count(*) FROM events WHERE state = 'sending' AND lease_owner = ?", (owner,))[0][0]

    # --- shared switches (quota pause) and counters ---
    def get_meta(self, key: str) -> str | None:
        found = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return found[0][0] if found else None

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._exec("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self._exec(SET_META, (key, value))

    def bump_counter(self, name: str, now: float | None = None) -> int:
        """Count one more ``name`` today (UTC), for all processes together; returns today's count.
        Earlier days' counts of ``name`` are dropped."""
        prefix, key = f"count:{name}:", counter_key(name, now)
        with self._write, db.transaction(self._conn()) as conn:
            conn.execute("DELETE FROM meta WHERE key > ? AND key < ? AND key != ?", (prefix, prefix + "\uffff", key))
            ((count,),) = conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT (key) DO UPDATE SET "
                "value = CAST(value AS INTEGER) + 1 RETURNING value",
                (key,),
            ).fetchall()
        return int(count)

    def counter_today(self, name: str, now: float | None = None) -> int:
        found = self.get_meta(counter_key(name, now))
        return int(found) if found else 0

    def close(self) -> None:
        self._db.close()


def counter_key(name: str, now: float | None) -> str:
    day = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC).date().isoformat()
    return f"count:{name}:{day}"
