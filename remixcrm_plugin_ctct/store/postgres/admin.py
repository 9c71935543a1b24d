"""What ``status``, ``retry``, ``purge`` and ``check`` ask of the PostgreSQL outbox, from any
host (a base class of :class:`.outbox.PgOutbox`, as :mod:`..outbox_admin` is of the SQLite one)."""

import time
from typing import Any

from .. import newest, offsets
from ..interfaces import Summary
from ..outbox_admin import ROW_KEYS
from . import sql
from .connect import Database

HOSTS_WINDOW = 3600.0  # seconds: "hosts active in the last hour"


class AdminQueries:
    db: Database
    s: str

    def _q(self, statement: str, args: Any = ()) -> list:
        raise NotImplementedError  # the outbox's

    def _x(self, statement: str, args: Any = ()) -> int:
        raise NotImplementedError  # the outbox's

    def retry_later(self, row_id: int, when: float, error: str | None, count_attempt: bool = True) -> None: ...

    def summary(self) -> Summary:
        counts = dict(self._q("SELECT state, count(*) FROM {s}.events GROUP BY state"))
        oldest = self._q("SELECT min(created_at) FROM {s}.events WHERE state IN ('pending', 'sending')")[0][0]
        found = self._q(
            "SELECT last_error, updated_at FROM {s}.events WHERE last_error IS NOT NULL "
            "AND state IN ('pending', 'sending', 'dead') ORDER BY updated_at DESC LIMIT 1"
        )
        return Summary(counts, oldest, *(found[0] if found else (None, None)))

    def for_client(self, client_id: str) -> list[dict]:
        rows = self._q(
            f"SELECT {', '.join(ROW_KEYS)} FROM {{s}}.events "
            "WHERE client_id = %s OR position(' ' || %s || ' ' in ' ' || other_clients || ' ') > 0 ORDER BY id",
            (client_id, client_id),
        )
        return [dict(zip(ROW_KEYS, r, strict=True)) for r in rows]

    def rows(self) -> list[dict]:
        keys = (*ROW_KEYS, "email_key", "contact", "other_clients", "lease_owner", "lease_until")
        found = self._q(f"SELECT {', '.join(keys)} FROM {{s}}.events ORDER BY id")
        return [dict(zip(keys, r, strict=True)) for r in found]

    def known_emails(self) -> list[str]:
        return [r[0] for r in self._q("SELECT email_key FROM {s}.latest ORDER BY email_key")]

    def retry(self, dead: bool = False, now: float | None = None) -> int:
        now = time.time() if now is None else now
        count = self._x(
            "UPDATE {s}.events SET next_attempt_at = %s WHERE state = 'pending' AND next_attempt_at > %s", (now, now)
        )
        if dead:
            found = self._q(
                "SELECT id, email_key, created_at FROM {s}.events WHERE state = 'dead' AND contact IS NOT NULL"
            )
            for row_id, email_key, created_at in found:
                self._renew_markers(email_key, created_at, now)
                # via 'sending' so that retry_later can coalesce it with a newer pending row
                self._x(
                    "UPDATE {s}.events SET state = 'sending', created_at = %s, attempts = 0, outcome = NULL "
                    "WHERE id = %s AND state = 'dead'",
                    (now, row_id),
                )
                self.retry_later(row_id, now, None)
                count += 1
        return count

    def _renew_markers(self, email_key: str | None, created_at: float, now: float) -> None:
        """The event markers of a revived row's own events move to ``now`` (see newest.renewed_markers)."""

        def renew(conn: Any) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (sql.fold_lock(self.db.schema),))
            found = conn.execute(f"SELECT contact FROM {self.s}.latest WHERE email_key = %s", (email_key,)).fetchall()
            renewed = newest.renewed_markers(found[0][0], created_at, now) if found else None
            if renewed is not None:
                conn.execute(f"UPDATE {self.s}.latest SET contact = %s WHERE email_key = %s", (renewed, email_key))

        self.db.run(renew)

    def purge(self, before: float, tombstones_before: float | None = None) -> int:
        def purge(conn: Any) -> int:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (sql.fold_lock(self.db.schema),))
            if tombstones_before is not None:  # offsets of deleted journals (store/offsets.py)
                conn.execute(
                    f"DELETE FROM {self.s}.meta WHERE key LIKE 'journal:%%' AND value LIKE %s "
                    "AND CAST(substr(value, %s) AS double precision) < %s",
                    (offsets.FORGOTTEN + "%", len(offsets.FORGOTTEN) + 1, tombstones_before),
                )
            count = conn.execute(
                f"UPDATE {self.s}.events SET contact = NULL, email_key = NULL WHERE state IN "
                "('delivered', 'skipped', 'dry_run') AND contact IS NOT NULL AND updated_at < %s",
                (before,),
            ).rowcount
            conn.execute(
                f"DELETE FROM {self.s}.latest l WHERE NOT EXISTS "
                f"(SELECT 1 FROM {self.s}.events e WHERE e.email_key = l.email_key)"
            )
            return count

        return self.db.run(purge)

    def hosts_active(self, within: float = HOSTS_WINDOW, now: float | None = None) -> int:
        """How many hosts (machine and data dir) claimed from this store within ``within`` seconds."""
        now = time.time() if now is None else now
        return self._q("SELECT count(*) FROM {s}.hosts WHERE last_seen >= %s", (now - within,))[0][0]
