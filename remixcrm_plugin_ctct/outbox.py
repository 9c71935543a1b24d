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
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import NamedTuple

from . import db, forksafe, newest, owners
from .journal import record as journal_record

log = logging.getLogger("remixcrm_plugin_ctct")

FILE_NAME = "outbox.sqlite3"
# Short, so that rows of a process that died without being provably dead (another machine)
# are taken back soon; the sender renews a lease before each send (``renew``), and the rows of
# a holder on this machine that is provably alive are left to it for LIVE_HOLDER_GRACE more:
# one send may take a token-lock wait + a refresh + two API calls.
LEASE_SECONDS = 30.0
LIVE_HOLDER_GRACE = 270.0
LEASE_CHECK_EVERY = 5.0  # seconds between looks for expired leases and dead holders
THROTTLED = "throttled"  # counter of Constant Contact's 429 "throttled" answers (see bump_counter)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY,
  email_key TEXT,                        -- lower-cased email; NULL once purged
  client_id TEXT NOT NULL,
  other_clients TEXT NOT NULL DEFAULT '',  -- ids of earlier events coalesced into this row
  event TEXT NOT NULL,
  contact TEXT,                          -- JSON {email, fields, email_opt_in} last sent; NULL once purged
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
CREATE INDEX IF NOT EXISTS by_email ON events(email_key);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS latest (      -- the newest known state per email (see newest.py)
  email_key TEXT PRIMARY KEY,
  contact TEXT NOT NULL,
  stamps TEXT NOT NULL,
  client_id TEXT NOT NULL,
  event TEXT NOT NULL,
  at REAL NOT NULL,
  seq INTEGER NOT NULL,
  updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS owners (      -- which process holds a lease, to tell when it is gone
  owner TEXT PRIMARY KEY,
  machine TEXT NOT NULL,
  pid INTEGER NOT NULL,
  started TEXT
);
"""

_CLAIM = """
UPDATE events SET state = 'sending', lease_owner = :owner, lease_until = :until,
                  attempts = attempts + 1, updated_at = :now,
                  contact = coalesce((SELECT l.contact FROM latest l WHERE l.email_key = events.email_key), contact)
WHERE id IN (SELECT e.id FROM events e
             WHERE {where}
               AND NOT EXISTS (SELECT 1 FROM events s WHERE s.state = 'sending' AND s.email_key = e.email_key
                               AND s.lease_until >= :now - :grace AND s.id != e.id)
             ORDER BY {order} LIMIT :limit)
RETURNING id, client_id, event, contact, attempts, created_at,
          (SELECT l.stamps FROM latest l WHERE l.email_key = events.email_key)
"""
# a leased row is taken back when its holder is provably gone, or its lease expired and the
# holder is not a live process on this machine, or even a live holder let it lapse long ago
_RECLAIMABLE = """
e.state = 'sending' AND (e.lease_owner IN (SELECT value FROM json_each(:dead))
                         OR (e.lease_until < :now AND e.lease_owner NOT IN (SELECT value FROM json_each(:alive)))
                         OR e.lease_until < :now - :grace)
"""
_DUE = "e.state = 'pending' AND e.next_attempt_at <= :now"
_UPSERT_LATEST = """
INSERT INTO latest (email_key, contact, stamps, client_id, event, at, seq, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (email_key) DO UPDATE SET contact = excluded.contact, stamps = excluded.stamps,
  client_id = excluded.client_id, event = excluded.event, at = excluded.at, seq = excluded.seq,
  updated_at = excluded.updated_at
"""
_INSERT_PENDING = """
INSERT INTO events (email_key, client_id, other_clients, event, contact, state, created_at, next_attempt_at, updated_at)
VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)
"""
_SET_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"


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
        self._db = db.Connections(self.path, _SCHEMA)
        self._reset()
        self._leases_checked_at = float("-inf")
        self._seq = 0  # for add(): events recorded here are ordered like the hook's
        forksafe.after_fork_in_child(self._reset)

    def _reset(self) -> None:
        # one writer at a time inside this process: SQLite's own busy handler sleeps in
        # milliseconds, a Python lock hands over in microseconds (this is the hook's path).
        # Re-made after a fork: a parent's sender thread may have held it at that moment.
        self._write = threading.RLock()
        self._me: tuple | None = None

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r})"

    # --- connections ---
    def _conn(self) -> sqlite3.Connection:
        return self._db.get()

    def _exec(self, sql: str, args=()) -> sqlite3.Cursor:
        with self._write:
            return self._conn().execute(sql, args)

    def _query(self, sql: str, args=()) -> list:
        return self._conn().execute(sql, args).fetchall()

    # --- the hook's path ---
    def add(self, contact, event: str, now: float | None = None) -> None:
        """Record one event (coalescing with a pending row for the same email). The hook writes
        the journal instead; this is the same row, for tools and tests."""
        found = journal_record(contact, event, time.time() if now is None else now)
        if "seq" not in found:
            self._seq += 1
            found["seq"] = self._seq
        self.add_records([found])

    def add_records(self, records: list[dict], journal: str | None = None, offset: int = 0) -> None:
        """Fold journal lines into the outbox and note how far we got, in one transaction:
        each line is taken exactly once, even if this process dies halfway.

        Each email's records are merged into its newest known state (``latest``), and a pending
        row asks for a push of that state: also when the records are older than what was already
        sent (a push of the newest state again is harmless; a newest decline is skipped)."""
        by_email: dict[str, list[dict]] = {}
        for r in records:
            by_email.setdefault(r["email"].lower(), []).append(r)
        now = time.time()
        keys = json.dumps(list(by_email))
        with self._write, db.transaction(self._conn()) as conn:
            known = {f[0]: newest.State(json.loads(f[1]), json.loads(f[2]), *f[3:]) for f in conn.execute(
                "SELECT email_key, contact, stamps, client_id, event, at, seq FROM latest "
                "WHERE email_key IN (SELECT value FROM json_each(?))", (keys,))}
            pending = {f[0]: f[1:] for f in conn.execute(
                "SELECT email_key, id, client_id, other_clients FROM events "
                "WHERE state = 'pending' AND email_key IN (SELECT value FROM json_each(?))", (keys,))}
            states, inserts, updates = [], [], []
            for key, group in by_email.items():
                group.sort(key=newest.stamp)
                before = state = known.get(key)
                for r in group:
                    state = newest.merge(state, r)
                contact = json.dumps(state.contact)
                stamps = json.dumps(state.stamps)
                states.append((key, contact, stamps, state.client_id, state.event, state.at, state.seq, now))
                last, clients = group[-1], [str(r["client_id"]) for r in group]
                if key not in pending:
                    # a clock ahead of ours must not delay the row
                    created = min(now, *(newest.stamp(r)[0] or now for r in group))
                    client = str(last["client_id"])
                    others = _others(clients, client)
                    inserts.append((key, client, others, last["event"], contact, created, created, now))
                    continue
                row_id, old_client, others = pending[key]
                client, event = old_client, None  # None: the event stays
                if before is None or newest.stamp(last) >= (before.at, before.seq):
                    client, event = str(last["client_id"]), last["event"]  # the row now carries the newest event
                everyone = [old_client, *others.split(), *clients]
                updates.append((client, event, _others(everyone, client), contact, now, row_id))
            conn.executemany(_UPSERT_LATEST, states)
            conn.executemany(_INSERT_PENDING, inserts)
            conn.executemany("UPDATE events SET client_id = ?, event = coalesce(?, event), other_clients = ?, "
                             "contact = ?, updated_at = ? WHERE id = ?", updates)
            if journal is not None:
                conn.execute(_SET_META, (f"journal:{journal}", str(offset)))

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
        """Lease up to ``limit`` due rows (or rows whose holder is gone), oldest first, in one
        transaction. One email at a time: a row waits while another row for its email is in
        flight (two simultaneous writes to one contact are Constant Contact's 409). The row's
        contact is the newest known state of that email, as of now."""
        now = time.time() if now is None else now
        args = {"owner": owner, "until": now + lease, "now": now, "limit": limit, "grace": LIVE_HOLDER_GRACE}
        with self._write, db.transaction(self._conn()) as conn:
            found = []
            if now - self._leases_checked_at >= LEASE_CHECK_EVERY:  # rare (a process died): not on every claim
                self._leases_checked_at = now
                args["dead"], args["alive"] = self._holders(conn)
                found = conn.execute(_CLAIM.format(where=_RECLAIMABLE, order="e.lease_until"), args).fetchall()
            if not found:
                found = conn.execute(_CLAIM.format(where=_DUE, order="e.next_attempt_at, e.id"), args).fetchall()
            if found:
                conn.execute("INSERT OR IGNORE INTO owners (owner, machine, pid, started) VALUES (?, ?, ?, ?)",
                             (owner, *self._identity()))
        rows = [Row(f[0], f[1], f[2], _consent_in_force(json.loads(f[3]), f[6], f[5]), f[4], f[5]) for f in found]
        return sorted(rows, key=lambda r: r.id)

    def _identity(self) -> tuple:
        if self._me is None or self._me[1] != os.getpid():
            self._me = (owners.machine(), os.getpid(), owners.started(os.getpid()))
        return self._me

    def _holders(self, conn: sqlite3.Connection) -> tuple[str, str]:
        """The lease holders on this machine that are gone, and those alive (JSON lists)."""
        here = owners.machine()
        dead, alive = [], []
        for owner, machine, pid, started in conn.execute(
                "SELECT DISTINCT e.lease_owner, o.machine, o.pid, o.started FROM events e "
                "JOIN owners o ON o.owner = e.lease_owner WHERE e.state = 'sending'"):
            if machine == here:
                (dead if owners.gone(pid, started) else alive).append(owner)
        for owner in dead:
            log.info("taking back the events leased by %s: that process is gone", owner)
        conn.execute("DELETE FROM owners WHERE owner NOT IN "
                     "(SELECT lease_owner FROM events WHERE state = 'sending' AND lease_owner IS NOT NULL)")
        return json.dumps(dead), json.dumps(alive)

    def renew(self, owner: str, row_ids, lease: float = LEASE_SECONDS, now: float | None = None) -> set[int]:
        """Extend ``owner``'s leases of ``row_ids``; returns the ids it still holds (a row it lost,
        because its lease ran out and another process took it, must not be sent again)."""
        ids = list(row_ids)
        if not ids:
            return set()
        now = time.time() if now is None else now
        with self._write:  # RETURNING: the statement (and its write) ends only once its rows are read
            found = self._conn().execute(
                "UPDATE events SET lease_until = ? WHERE state = 'sending' AND lease_owner = ? "
                "AND id IN (SELECT value FROM json_each(?)) RETURNING id",
                (now + lease, owner, json.dumps(ids))).fetchall()
        return {r[0] for r in found}

    def refreshed(self, row: Row) -> Row:
        """``row`` with the newest known state of its email as of now. Called right before the
        send: a decline folded from another process's journal after the claim must still win."""
        with self._write:
            found = self._conn().execute(
                "UPDATE events SET contact = coalesce((SELECT l.contact FROM latest l WHERE l.email_key = events.email_key), "
                "contact) WHERE id = ? RETURNING contact, "
                "(SELECT l.stamps FROM latest l WHERE l.email_key = events.email_key)", (row.id,)).fetchall()
        if not found or not found[0][0]:
            return row
        return row._replace(contact=_consent_in_force(json.loads(found[0][0]), found[0][1], row.created_at))

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
        the two rows become one (the push carries the newest state anyway)."""
        now = time.time()
        undo = 0 if count_attempt else 1
        with self._write:
            conn = self._conn()
            try:
                conn.execute("UPDATE events SET state = 'pending', next_attempt_at = ?, last_error = coalesce(?, last_error), "
                             "attempts = attempts - ?, lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?",
                             (when, error, undo, now, row_id))
            except sqlite3.IntegrityError:
                with db.transaction(conn):
                    conn.execute(
                        "UPDATE events SET contact = json_patch(o.contact, events.contact), "
                        "other_clients = trim(events.other_clients || ' ' || o.client_id || ' ' || o.other_clients), "
                        "created_at = min(events.created_at, o.created_at), attempts = events.attempts + o.attempts - ? "
                        "FROM (SELECT * FROM events WHERE id = ?) AS o "
                        "WHERE events.email_key = o.email_key AND events.state = 'pending'", (undo, row_id))
                    conn.execute("DELETE FROM events WHERE id = ?", (row_id,))

    def release(self, owner: str) -> int:
        """Hand back every row this owner still leases (a process exiting), without counting
        the attempt. Returns how many."""
        rows = self._query("SELECT id FROM events WHERE state = 'sending' AND lease_owner = ?", (owner,))
        for (row_id,) in rows:
            self.retry_later(row_id, time.time(), None, count_attempt=False)
        return len(rows)

    def held(self, owner: str) -> int:
        """Rows ``owner`` leases right now."""
        return self._query("SELECT count(*) FROM events WHERE state = 'sending' AND lease_owner = ?", (owner,))[0][0]

    def next_due_at(self) -> float | None:
        """When the next row becomes workable (a due retry or an expiring lease). A lease that
        already ran out is the periodic look's business (its holder may be alive and sending)."""
        now = time.time()
        (due,) = self._query("SELECT min(t) FROM (SELECT min(next_attempt_at) AS t FROM events WHERE state = 'pending' "
                             "UNION ALL SELECT min(lease_until) FROM events "
                             "WHERE state = 'sending' AND lease_until >= ?)", (now,))[0]
        return due

    def due_count(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return self._query("SELECT count(*) FROM events WHERE state = 'pending' AND next_attempt_at <= ?", (now,))[0][0]

    def pending_count(self) -> int:
        """Events not sent yet, whenever due and whoever holds them (all processes together)."""
        return self._query("SELECT count(*) FROM events WHERE state IN ('pending', 'sending')")[0][0]

    def checkpoint(self) -> None:
        """Fold the WAL into the database without blocking writers (the sender calls this)."""
        self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")

    # --- what status, retry and purge ask (see outbox_admin) ---
    def state_counts(self) -> dict[str, int]:
        return dict(self._query("SELECT state, count(*) FROM events GROUP BY state"))

    def oldest_unsent_at(self) -> float | None:
        return self._query("SELECT min(created_at) FROM events WHERE state IN ('pending', 'sending')")[0][0]

    def last_error(self) -> tuple[str | None, float | None]:
        found = self._query("SELECT last_error, updated_at FROM events WHERE last_error IS NOT NULL "
                            "AND state IN ('pending', 'sending', 'dead') ORDER BY updated_at DESC LIMIT 1")
        return found[0] if found else (None, None)

    def rows_for_client(self, client_id: str) -> list[dict]:
        """Every row that carries this client's event (also when it was coalesced into another)."""
        keys = ("id", "state", "event", "attempts", "created_at", "updated_at", "next_attempt_at", "contact_id",
                "outcome", "last_error", "client_id")
        rows = self._query(f"SELECT {', '.join(keys)} FROM events "
                           "WHERE client_id = ? OR instr(' ' || other_clients || ' ', ' ' || ? || ' ') ORDER BY id",
                           (client_id, client_id))
        return [dict(zip(keys, r)) for r in rows]

    def make_due(self, now: float) -> int:
        """Pending rows waiting for a later retry become due at ``now``. Returns how many."""
        return self._exec("UPDATE events SET next_attempt_at = ? WHERE state = 'pending' AND next_attempt_at > ?",
                          (now, now)).rowcount

    def revive_dead(self, now: float) -> int:
        """Dead rows (that still have their contact) get a fresh start, due at ``now``."""
        count = 0
        for (row_id,) in self._query("SELECT id FROM events WHERE state = 'dead' AND contact IS NOT NULL"):
            # via 'sending' so that retry_later can coalesce it with a newer pending row
            self._exec("UPDATE events SET state = 'sending', created_at = ?, attempts = 0, outcome = NULL WHERE id = ?",
                       (now, row_id))
            self.retry_later(row_id, now, None)  # attempts stay 0: a fresh start
            count += 1
        return count

    def purge(self, before: float) -> int:
        """Forget emails and names of rows finished before ``before``, and the newest known
        state of emails that no row names any more. Returns how many rows."""
        with self._write, db.transaction(self._conn()) as conn:
            count = conn.execute("UPDATE events SET contact = NULL, email_key = NULL WHERE state IN "
                                 "('delivered', 'skipped', 'dry_run') AND contact IS NOT NULL AND updated_at < ?",
                                 (before,)).rowcount
            # every fold leaves a row naming its email: a state no row names is of no further use
            conn.execute("DELETE FROM latest WHERE NOT EXISTS "
                         "(SELECT 1 FROM events e WHERE e.email_key = latest.email_key)")
        return count

    # --- shared switches (quota pause) and counters ---
    def get_meta(self, key: str) -> str | None:
        found = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return found[0][0] if found else None

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._exec("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self._exec(_SET_META, (key, value))

    def bump_counter(self, name: str, now: float | None = None) -> int:
        """Count one more ``name`` today (UTC), for all processes together; returns today's count.
        Earlier days' counts of ``name`` are dropped."""
        prefix, key = f"count:{name}:", _counter_key(name, now)
        with self._write, db.transaction(self._conn()) as conn:
            conn.execute("DELETE FROM meta WHERE key > ? AND key < ? AND key != ?", (prefix, prefix + "\uffff", key))
            ((count,),) = conn.execute("INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT (key) DO UPDATE SET "
                                       "value = CAST(value AS INTEGER) + 1 RETURNING value", (key,)).fetchall()
        return int(count)

    def counter_today(self, name: str, now: float | None = None) -> int:
        found = self.get_meta(_counter_key(name, now))
        return int(found) if found else 0

    def close(self) -> None:
        self._db.close()


def _consent_in_force(contact: dict, stamps: str | None, created_at: float) -> dict:
    """``contact`` as a row may push it: a "yes" older than every event of the row was given for an
    earlier row, already pushed, and is used up. The person may have unsubscribed since (a link in
    a mail, which RemixCRM never hears of): an event without consent of its own is then looked up,
    never pushed on an old "yes" (sign_up_form re-subscribes)."""
    if contact.get("email_opt_in") is not True or not stamps:
        return contact
    try:
        given = float(json.loads(stamps)["email_opt_in"][0])
    except (ValueError, TypeError, KeyError, IndexError):
        given = float("-inf")  # when the "yes" was given is unknown: never a reason to push
    if given >= created_at:
        return contact
    return {k: v for k, v in contact.items() if k != "email_opt_in"}


def _counter_key(name: str, now: float | None) -> str:
    day = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc).date().isoformat()
    return f"count:{name}:{day}"


def _others(clients: list[str], client: str) -> str:
    """The space-separated client ids other than ``client``, each once, in order."""
    return " ".join(dict.fromkeys(c for c in clients if c and c != client))
