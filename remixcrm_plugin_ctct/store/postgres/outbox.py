"""The outbox in PostgreSQL, shared by every host: :class:`.interfaces.Outbox` with the SQLite
outbox's semantics (see :mod:`..outbox`), made safe for many writers on many machines.

- Claims take rows with ``FOR UPDATE SKIP LOCKED``: hosts claiming at once take different rows,
  and one email is in flight at a time, as on one machine.
- Leases are short (:data:`LEASE_SECONDS`) and renewed while a send runs (``LeaseKeeper``,
  ``take``): a host that dies holding rows cannot be asked whether it lives, so the lease's
  expiry is the signal, and its rows go out from other hosts within seconds. Holders on this
  machine are still told dead or alive by their pid, as with SQLite.
- Writers of pending rows and newest states take one transaction-scoped advisory lock
  (``sql.fold_lock``): the fold's read–merge–write never interleaves across hosts.
- The journal's offsets are keyed by this host's data dir (two hosts' journal files may share
  a name); a host folding the journal of one that died on its machine uses the dead host's key
  (:mod:`.journals`).
"""

import hashlib
import json
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from .. import lanes, leases, newest, offsets, outbox_fold
from ..interfaces import Row
from ..newest import consent_in_force
from ..outbox import counter_key
from . import sql
from .admin import AdminQueries
from .connect import Database

LEASE_SECONDS = 10.0
LIVE_HOLDER_GRACE = 60.0  # an expired lease still keeps its email's newer row waiting this long (unless reclaimed)
LEASE_CHECK_EVERY = 2.0  # seconds between looks for expired leases
HOST_SEEN_EVERY = 60.0  # seconds between notes that this host is active (for `check`)
SERVER_CLOCK_EVERY = 60.0  # seconds between readings of the database server's clock (see _server_skew)


class PgOutbox(AdminQueries):
    def __init__(self, db: Database, data_dir: Path):
        self.db, self.data_dir = db, Path(data_dir)
        s = db.schema
        self._sql = {
            name: getattr(sql, name).format(s=f'"{s}"', where="{where}", lane="{lane}", order="{order}")
            for name in _SQL
        }
        self.s = f'"{s}"'
        # this host as `check` counts it, and the prefix of its journals' offsets
        self.host = f"{leases.owners.machine()}|{self.data_dir}"
        self.journal_prefix = "journal:" + hashlib.sha256(self.host.encode()).hexdigest()[:16] + ":"
        self._leases_checked_at = float("-inf")
        self._seen_at = float("-inf")
        self.clock = time.time  # this host's clock (a test sets one that runs ahead)
        self._skew, self._skew_read_at = 0.0, float("-inf")

    def __repr__(self) -> str:
        return f"PgOutbox({self.db.where!r})"

    @property
    def location(self) -> str:
        return self.db.where

    @property
    def lease_seconds(self) -> float:
        return LEASE_SECONDS

    def has_state(self) -> bool:
        return True  # a server: it may hold events whether or not this host wrote any

    def _q(self, statement: str, args: Any = ()) -> list:
        return self.db.run(lambda c: c.execute(statement.format(s=self.s), args).fetchall())

    def _x(self, statement: str, args: Any = ()) -> int:
        return self.db.run(lambda c: c.execute(statement.format(s=self.s), args).rowcount)

    def _server_skew(self) -> float:
        """Seconds the database server's clock is ahead of this host's. Leases are written and
        compared on the server's clock: a lease lasts seconds and is renewed every few, so a host
        whose clock ran a few seconds ahead of another's would take back rows that host is still
        sending, and send them twice. Read once a minute; the round trip's midpoint is the host's time."""
        mono = time.monotonic()
        if mono - self._skew_read_at >= SERVER_CLOCK_EVERY:
            before = self.clock()
            server = self._q("SELECT extract(epoch FROM clock_timestamp())::double precision")[0][0]
            self._skew, self._skew_read_at = float(server) - (before + self.clock()) / 2, mono
        return self._skew

    # --- the fold (journal -> outbox) ---
    def add_records(
        self, records: list[dict], journal: str | None = None, offset: int = 0, start: int | None = None
    ) -> bool:
        return self.fold_records(records, None if journal is None else self.journal_prefix + journal, offset, start)

    def fold_records(self, records: list[dict], offset_key: str | None, offset: int, start: int | None = None) -> bool:
        """``records`` into the outbox and, in the same transaction, ``offset`` under ``offset_key``;
        nothing (False) when ``start`` is given and the stored offset is no longer it."""
        now = time.time()

        def fold(conn: Any) -> bool:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (sql.fold_lock(self.db.schema),))
            if offset_key is not None and start is not None:
                found = conn.execute(f"SELECT value FROM {self.s}.meta WHERE key = %s", (offset_key,)).fetchone()
                if offsets.parse(found[0] if found else None) != start:
                    return False  # another folder took these lines (the advisory lock orders us)
            if records:
                self._fold(conn, records, now)
            if offset_key is not None:
                conn.execute(self._sql["SET_META"], (offset_key, str(offset)))
            return True

        return bool(self.db.run(fold))

    def _fold(self, conn: Any, records: list[dict], now: float) -> None:
        by_email = outbox_fold.group(records)
        keys = list(by_email)
        known = {
            f[0]: newest.State(json.loads(f[1]), json.loads(f[2]), *f[3:])
            for f in conn.execute(
                f"SELECT email_key, contact, stamps, client_id, event, at, seq FROM {self.s}.latest "
                "WHERE email_key = ANY(%s)",
                (keys,),
            ).fetchall()
        }
        pending = {
            f[0]: f[1:]
            for f in conn.execute(
                f"SELECT email_key, id, client_id, other_clients FROM {self.s}.events "
                "WHERE state = 'pending' AND email_key = ANY(%s) FOR UPDATE",
                (keys,),
            ).fetchall()
        }
        states, inserts, updates = outbox_fold.plan(by_email, known, pending, now)
        with conn.cursor() as cur:
            cur.executemany(self._sql["UPSERT_LATEST"], states)
            cur.executemany(self._sql["INSERT_PENDING"], inserts)
            cur.executemany(self._sql["UPDATE_PENDING"], updates)

    def journal_offset(self, journal: str) -> int:
        return offsets.parse(self.get_meta(self.journal_prefix + journal))

    def forget_journal(self, journal: str) -> None:
        self.set_meta(self.journal_prefix + journal, offsets.tombstone(time.time()))  # see store/offsets.py

    # --- the sender's path ---
    def claim_many(
        self,
        owner: str,
        limit: int,
        now: float | None = None,
        lease: float = LEASE_SECONDS,
        lane: str | None = None,
        unknown_consent: str = "implicit",
    ) -> list[Row]:
        """Up to ``limit`` rows (of one lane, or of any), as :meth:`..outbox.Outbox.claim_many`."""
        now = self.clock() if now is None else now
        lease_now = now + self._server_skew()  # leases on the server's clock
        args: dict = {"owner": owner, "until": lease_now + lease, "now": now, "lease_now": lease_now, "limit": limit}
        args["grace"] = LIVE_HOLDER_GRACE
        args |= lanes.sql_args(unknown_consent)
        only = "" if lane is None else f" AND {'' if lane == lanes.IMPORT else 'NOT '}{self._sql['IMPORT_SQL']}"
        check = now - self._leases_checked_at >= LEASE_CHECK_EVERY  # rare (a host died): not on every claim
        if check:
            self._leases_checked_at = now

        def claim(conn: Any) -> list:
            found = []
            if check:
                # a live holder on this machine gets no grace here: its keeper renews every few
                # seconds, and a claim whose answer was lost with its connection leaves rows
                # leased to a live process that does not know it holds them
                args["dead"] = leases.classify(conn.execute(self._sql["HOLDERS"]).fetchall())[0]
                args["alive"] = []
                conn.execute(self._sql["FORGET_OWNERS"])
                statement = self._sql["CLAIM"].format(where=sql.RECLAIMABLE, lane="", order="e.lease_until")
                found = conn.execute(statement, args).fetchall()
            if not found:
                statement = self._sql["CLAIM"].format(where=sql.DUE, lane=only, order="e.next_attempt_at, e.id")
                found = conn.execute(statement, args).fetchall()
            if found:
                conn.execute(
                    f"INSERT INTO {self.s}.owners (owner, machine, pid, started) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (owner) DO NOTHING",
                    (owner, *leases.identity()),
                )
            if now - self._seen_at >= HOST_SEEN_EVERY:
                self._seen_at = now
                conn.execute(self._sql["SEEN"], (self.host, now))
            return found

        found = self.db.run(claim)
        rows = [Row(f[0], f[1], f[2], consent_in_force(json.loads(f[3]), f[6], f[5], f[2]), f[4], f[5]) for f in found]
        return sorted(rows, key=lambda r: r.id)

    def claim(self, owner: str, now: float | None = None, lease: float = LEASE_SECONDS) -> Row | None:
        rows = self.claim_many(owner, 1, now, lease)
        return rows[0] if rows else None

    def renew(self, owner: str, row_ids, lease: float = LEASE_SECONDS, now: float | None = None) -> set[int]:
        ids = list(row_ids)
        if not ids:
            return set()
        now = self.clock() if now is None else now
        found = self._q(
            "UPDATE {s}.events SET lease_until = %s WHERE state = 'sending' AND lease_owner = %s "
            "AND id = ANY(%s) RETURNING id",
            (now + self._server_skew() + lease, owner, ids),
        )
        return {r[0] for r in found}

    def take(self, owner: str, row: Row, lease: float = LEASE_SECONDS, now: float | None = None) -> Row | None:
        now = self.clock() if now is None else now
        found = self._q(sql.TAKE, (now + self._server_skew() + lease, row.id, owner))
        if not found:
            return None
        if not found[0][0]:
            return row
        contact = consent_in_force(json.loads(found[0][0]), found[0][1], row.created_at, row.event)
        return row._replace(contact=contact)

    def delivered(self, row_id: int, contact_id: str | None, outcome: str, now: float | None = None) -> None:
        self._x(sql.DELIVERED, (contact_id, outcome, time.time() if now is None else now, row_id))

    def delivered_many(self, done: Sequence[tuple[int, str | None, str]], now: float | None = None) -> None:
        """Rows pushed together, ``(row_id, contact_id, outcome)`` each: one transaction, and one
        round trip (psycopg pipelines ``executemany``) instead of one per row."""
        if not done:
            return
        at = time.time() if now is None else now
        statement = sql.DELIVERED.format(s=self.s)

        def mark(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.executemany(statement, [(contact_id, outcome, at, row_id) for row_id, contact_id, outcome in done])

        self.db.run(mark)

    def finished(self, row_id: int, state: str, outcome: str, now: float | None = None) -> None:
        self._x(
            "UPDATE {s}.events SET state = %s, outcome = %s, last_error = NULL, lease_owner = NULL, "
            "lease_until = NULL, updated_at = %s WHERE id = %s",
            (state, outcome, time.time() if now is None else now, row_id),
        )

    def dead(self, row_id: int, error: str, now: float | None = None) -> None:
        self._x(
            "UPDATE {s}.events SET state = 'dead', outcome = 'dead', last_error = %s, lease_owner = NULL, "
            "lease_until = NULL, updated_at = %s WHERE id = %s",
            (error, time.time() if now is None else now, row_id),
        )

    def retry_later(self, row_id: int, when: float, error: str | None, count_attempt: bool = True) -> None:
        """Back to pending, due at ``when``; merged into the email's pending row if a newer event
        made one meanwhile (under the fold's lock: no pending row can appear in between)."""
        now, undo = time.time(), 0 if count_attempt else 1
        s = self.s

        def retry(conn: Any) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (sql.fold_lock(self.db.schema),))
            mine = conn.execute(
                f"SELECT email_key, client_id, other_clients, created_at, attempts FROM {s}.events "
                "WHERE id = %s FOR UPDATE",
                (row_id,),
            ).fetchone()
            other = None
            if mine is not None and mine[0] is not None:
                other = conn.execute(
                    f"SELECT id FROM {s}.events WHERE email_key = %s AND state = 'pending' AND id <> %s FOR UPDATE",
                    (mine[0], row_id),
                ).fetchone()
            if other is None:
                conn.execute(
                    f"UPDATE {s}.events SET state = 'pending', next_attempt_at = %s, "
                    "last_error = coalesce(%s, last_error), attempts = attempts - %s, lease_owner = NULL, "
                    "lease_until = NULL, updated_at = %s WHERE id = %s",
                    (when, error, undo, now, row_id),
                )
                return
            assert mine is not None
            conn.execute(
                f"UPDATE {s}.events SET other_clients = trim(other_clients || ' ' || %s || ' ' || %s), "
                "created_at = least(created_at, %s), attempts = attempts + %s - %s WHERE id = %s",
                (mine[1], mine[2], mine[3], mine[4], undo, other[0]),
            )
            conn.execute(f"DELETE FROM {s}.events WHERE id = %s", (row_id,))

        self.db.run(retry)

    def release(self, owner: str, keep: Collection[int] = ()) -> int:
        rows = self._q("SELECT id FROM {s}.events WHERE state = 'sending' AND lease_owner = %s", (owner,))
        rows = [row for row in rows if row[0] not in keep]
        for (row_id,) in rows:
            self.retry_later(row_id, time.time(), None, count_attempt=False)
        return len(rows)

    def next_due_at(self) -> float | None:
        return self._q(sql.NEXT_DUE, (self._server_skew(),))[0][0]  # a lease's end, on this host's clock

    def due_count(self, now: float | None = None) -> int:
        """Rows workable now: due ones, and leased ones whose lease ran out (a host died, or a
        claim's answer was lost with its connection)."""
        now = self.clock() if now is None else now
        return self._q(sql.DUE_COUNT, (now, now + self._server_skew()))[0][0]

    def pending_count(self) -> int:
        return self._q("SELECT count(*) FROM {s}.events WHERE state IN ('pending', 'sending')")[0][0]

    def in_flight_count(self, owner: str | None = None) -> int:
        if owner is None:
            return self._q("SELECT count(*) FROM {s}.events WHERE state = 'sending'")[0][0]
        return self._q("SELECT count(*) FROM {s}.events WHERE state = 'sending' AND lease_owner = %s", (owner,))[0][0]

    def first_due_import(self, unknown_consent: str, now: float | None = None) -> float | None:
        """Since when the longest-waiting due row of the import lane has been due (None: none is)."""
        args = {"now": time.time() if now is None else now} | lanes.sql_args(unknown_consent)
        statement = f"SELECT min(e.next_attempt_at) FROM {{s}}.events e WHERE {sql.DUE} AND {self._sql['IMPORT_SQL']}"
        return self._q(statement, args)[0][0]

    def event_counts(self, event: str, since: float) -> dict[str, int]:
        """Rows carrying ``event`` by state: every unfinished one, and the finished ones touched since ``since``."""
        return dict(
            self._q(
                "SELECT state, count(*) FROM {s}.events WHERE event = %s "
                "AND (state IN ('pending', 'sending') OR updated_at >= %s) GROUP BY state",
                (event, since),
            )
        )

    def checkpoint(self) -> None:
        """Nothing to do: PostgreSQL checkpoints by itself."""

    # --- shared switches and counters ---
    def get_meta(self, key: str) -> str | None:
        found = self._q("SELECT value FROM {s}.meta WHERE key = %s", (key,))
        return found[0][0] if found else None

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._x("DELETE FROM {s}.meta WHERE key = %s", (key,))
        else:
            self._x(sql.SET_META, (key, value))

    def bump_counter(self, name: str, now: float | None = None) -> int:
        prefix, key = f"count:{name}:", counter_key(name, now)

        def bump(conn: Any) -> int:
            conn.execute(
                f"DELETE FROM {self.s}.meta WHERE key > %s AND key < %s AND key <> %s", (prefix, prefix + "\uffff", key)
            )
            return int(conn.execute(self._sql["BUMP"], (key,)).fetchone()[0])

        return self.db.run(bump)

    def counter_today(self, name: str, now: float | None = None) -> int:
        found = self.get_meta(counter_key(name, now))
        return int(found) if found else 0

    def close(self) -> None:
        self.db.close()


_SQL: tuple[str, ...] = ("CLAIM", "HOLDERS", "FORGET_OWNERS", "UPSERT_LATEST", "INSERT_PENDING", "UPDATE_PENDING")
_SQL += ("SET_META", "BUMP", "SEEN", "IMPORT_SQL")
