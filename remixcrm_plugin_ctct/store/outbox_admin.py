"""What ``status``, ``retry`` and ``purge`` ask of the outbox (the sending path never needs it).

:class:`AdminQueries` holds the SQL, as a base class of :class:`.outbox.Outbox`; the functions
below are the old module API over the public methods (new code calls the methods)."""

import sqlite3
import threading
import time

from . import db, newest, offsets
from .interfaces import Outbox, Summary

__all__ = ["AdminQueries", "Summary", "summary", "for_client", "retry", "purge"]
ROW_KEYS = (
    "id",
    "state",
    "event",
    "attempts",
    "created_at",
    "updated_at",
    "next_attempt_at",
    "contact_id",
    "outcome",
    "last_error",
    "client_id",
)


class AdminQueries:
    """The CLI's part of :class:`.outbox.Outbox` (a base class of it: same connections, same lock)."""

    _write: threading.RLock

    def _conn(self) -> sqlite3.Connection:
        raise NotImplementedError  # the Outbox's

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        raise NotImplementedError  # the Outbox's

    def _query(self, sql: str, args: tuple = ()) -> list:
        raise NotImplementedError  # the Outbox's

    def retry_later(self, row_id: int, when: float, error: str | None, count_attempt: bool = True) -> None: ...

    def summary(self) -> Summary:
        counts = dict(self._query("SELECT state, count(*) FROM events GROUP BY state"))
        oldest = self._query("SELECT min(created_at) FROM events WHERE state IN ('pending', 'sending')")[0][0]
        found = self._query(
            "SELECT last_error, updated_at FROM events WHERE last_error IS NOT NULL "
            "AND state IN ('pending', 'sending', 'dead') ORDER BY updated_at DESC LIMIT 1"
        )
        return Summary(counts, oldest, *(found[0] if found else (None, None)))

    def for_client(self, client_id: str) -> list[dict]:
        """Every row that carries this client's event (also when it was coalesced into another)."""
        rows = self._query(
            f"SELECT {', '.join(ROW_KEYS)} FROM events "
            "WHERE client_id = ? OR instr(' ' || other_clients || ' ', ' ' || ? || ' ') ORDER BY id",
            (client_id, client_id),
        )
        return [dict(zip(ROW_KEYS, r, strict=True)) for r in rows]

    def event_counts(self, event: str, since: float) -> dict[str, int]:
        """Rows carrying ``event`` (as their newest event) by state: every unfinished one, and the
        finished ones touched since ``since``. What `backfill` follows."""
        return dict(
            self._query(
                "SELECT state, count(*) FROM events WHERE event = ? "
                "AND (state IN ('pending', 'sending') OR updated_at >= ?) GROUP BY state",
                (event, since),
            )
        )

    def rows(self) -> list[dict]:
        """Every row with its email key, contact and lease, oldest first: for inspection (tests,
        debugging), not for the sending path."""
        keys = (*ROW_KEYS, "email_key", "contact", "other_clients", "lease_owner", "lease_until")
        found = self._query(f"SELECT {', '.join(keys)} FROM events ORDER BY id")
        return [dict(zip(keys, r, strict=True)) for r in found]

    def known_emails(self) -> list[str]:
        """The emails (lower-cased) whose newest known state is kept: for inspection, like ``rows``."""
        return [r[0] for r in self._query("SELECT email_key FROM latest ORDER BY email_key")]

    def retry(self, dead: bool = False, now: float | None = None) -> int:
        """Make pending rows due now; with ``dead``, give dead rows (that still have their
        contact) a fresh start too. Returns how many."""
        now = time.time() if now is None else now
        count = self._exec(
            "UPDATE events SET next_attempt_at = ? WHERE state = 'pending' AND next_attempt_at > ?", (now, now)
        ).rowcount
        if dead:
            found = self._query(
                "SELECT id, email_key, created_at FROM events WHERE state = 'dead' AND contact IS NOT NULL"
            )
            for row_id, email_key, created_at in found:
                self._renew_markers(email_key, created_at, now)
                # via 'sending' so that retry_later can coalesce it with a newer pending row
                self._exec(
                    "UPDATE events SET state = 'sending', created_at = ?, attempts = 0, outcome = NULL WHERE id = ?",
                    (now, row_id),
                )
                self.retry_later(row_id, now, None)  # attempts stay 0: a fresh start
                count += 1
        return count

    def _renew_markers(self, email_key: str | None, created_at: float, now: float) -> None:
        """The event markers of a revived row's own events move to ``now`` (see newest.renewed_markers)."""
        with self._write, db.transaction(self._conn()) as conn:
            found = conn.execute("SELECT contact FROM latest WHERE email_key = ?", (email_key,)).fetchall()
            renewed = newest.renewed_markers(found[0][0], created_at, now) if found else None
            if renewed is not None:
                conn.execute("UPDATE latest SET contact = ? WHERE email_key = ?", (renewed, email_key))

    def purge(self, before: float, tombstones_before: float | None = None) -> int:
        """Forget emails and names of rows finished before ``before``, and the newest known
        state of emails that no row names any more; the offsets of deleted journals forgotten
        before ``tombstones_before`` (:mod:`.offsets`). Returns how many rows."""
        with self._write, db.transaction(self._conn()) as conn:
            if tombstones_before is not None:
                conn.execute(
                    "DELETE FROM meta WHERE key LIKE 'journal:%' AND value LIKE ? "
                    "AND CAST(substr(value, ?) AS REAL) < ?",
                    (offsets.FORGOTTEN + "%", len(offsets.FORGOTTEN) + 1, tombstones_before),
                )
            count = conn.execute(
                "UPDATE events SET contact = NULL, email_key = NULL WHERE state IN "
                "('delivered', 'skipped', 'dry_run') AND contact IS NOT NULL AND updated_at < ?",
                (before,),
            ).rowcount
            # every fold leaves a row naming its email: a state no row names is of no further use
            conn.execute(
                "DELETE FROM latest WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.email_key = latest.email_key)"
            )
        return count


def summary(outbox: Outbox) -> Summary:
    return outbox.summary()


def for_client(outbox: Outbox, client_id: str) -> list[dict]:
    """Every row that carries this client's event (also when it was coalesced into another)."""
    return outbox.for_client(client_id)


def retry(outbox: Outbox, dead: bool = False, now: float | None = None) -> int:
    """Make pending rows due now; with ``dead``, give dead rows a new life too. Returns how many."""
    return outbox.retry(dead, now)


def purge(outbox: Outbox, retention_seconds: float, now: float | None = None) -> int:
    """Forget emails and names of rows delivered more than ``retention_seconds`` ago; the small
    status record (client id, contact id, outcome, time) stays. Returns how many rows."""
    now = time.time() if now is None else now
    return outbox.purge(now - retention_seconds, now - offsets.KEEP)
