"""The suppression mirror's table in PostgreSQL, shared by every host: :class:`.interfaces.Suppressions`
with the SQLite table's rules (see :mod:`..suppressions`): the newer fact (by ``at``) wins, a
re-read changes nothing, ``recorded_at`` moves only when (reason, at) does, and is stamped in the
writing transaction strictly after every stamp already there — writers take one advisory lock
for it, so stamps grow in commit order across hosts whatever their clocks say, and a reader of
"recorded after T" never skips a slower writer's rows. Watermarks are rows of the shared ``meta``
table under ``mirror:``, so one host's sync serves all."""

import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..interfaces import OptOut, Suppression
from ..suppressions import CHUNK, META_PREFIX, OPT_OUT_WHERE, TICK
from .connect import Database

UPSERT = """
INSERT INTO {s}.suppressed AS old (email_key, reason, at, source, contact_id, opted_out_at, recorded_at, client_id)
VALUES (%(key)s, %(reason)s, %(at)s, %(source)s, %(contact_id)s, %(opted_out_at)s, %(stamp)s,
        (SELECT e.client_id FROM {s}.events e WHERE e.email_key = %(key)s AND e.state = 'delivered'
         ORDER BY e.id DESC LIMIT 1))
ON CONFLICT (email_key) DO UPDATE SET
  recorded_at = CASE WHEN excluded.reason <> old.reason OR excluded.at <> old.at THEN excluded.recorded_at
                ELSE old.recorded_at END,
  reason = excluded.reason, at = excluded.at, source = coalesce(excluded.source, old.source),
  contact_id = coalesce(excluded.contact_id, old.contact_id),
  opted_out_at = coalesce(excluded.opted_out_at, old.opted_out_at),
  client_id = coalesce(excluded.client_id, old.client_id)
WHERE excluded.at >= old.at
"""
OPT_OUTS = (
    """
SELECT s.email_key, coalesce(s.client_id, l.client_id), coalesce(s.opted_out_at, s.at), s.source, s.recorded_at
FROM {s}.suppressed s LEFT JOIN {s}.latest l ON l.email_key = s.email_key
WHERE {since}"""
    + OPT_OUT_WHERE
    + """
ORDER BY s.recorded_at, s.email_key
"""
)


class PgSuppressions:
    def __init__(self, db: Database, meta: Any):
        self.db, self.meta = db, meta  # meta: the outbox (get_meta/set_meta on the shared table)
        self.s = f'"{db.schema}"'

    def __repr__(self) -> str:
        return f"PgSuppressions({self.db.where!r})"

    def suppressed(self, emails: Iterable[str]) -> dict[str, Suppression]:
        keys = sorted({str(e).lower() for e in emails})
        found: dict[str, Suppression] = {}
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]

            def select(conn: Any, chunk: list = chunk) -> list:
                return conn.execute(
                    "SELECT email_key, reason, at, source, contact_id, opted_out_at "
                    f"FROM {self.s}.suppressed WHERE email_key = ANY(%s::text[])",
                    (chunk,),
                ).fetchall()

            rows = self.db.run(select)
            found.update((r[0], Suppression(*r)) for r in rows)
        return found

    def record(self, entries: Iterable[Suppression], now: float | None = None) -> None:
        fields = ("key", "reason", "at", "source", "contact_id", "opted_out_at")
        rows = [dict(zip(fields, (e.email_key.lower(), *e[1:6]), strict=True)) for e in entries]
        statement = UPSERT.format(s=self.s)
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]

            def upsert(conn: Any, chunk: list = chunk) -> None:
                # serialised with every other writer of the table, on every host, until the commit
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"remixcrm_ctct:suppressed:{self.s}",))
                (latest,) = conn.execute(f"SELECT max(recorded_at) FROM {self.s}.suppressed").fetchone()
                stamp = time.time() if now is None else now
                stamp = round(stamp if latest is None else max(stamp, latest + TICK), 6)
                with conn.cursor() as cur:
                    cur.executemany(statement, [{**row, "stamp": stamp} for row in chunk])

            self.db.run(upsert)

    def opt_outs(self, since: float | None = None) -> list[OptOut]:
        args: tuple[float, ...] = () if since is None else (since,)
        statement = OPT_OUTS.format(s=self.s, since="" if since is None else "s.recorded_at > %s AND ")
        return [OptOut(*r) for r in self.db.run(lambda c: c.execute(statement, args).fetchall())]

    def clear(self, emails: Iterable[str]) -> None:
        keys = sorted({str(e).lower() for e in emails})
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]

            def delete(conn: Any, chunk: list = chunk) -> None:
                conn.execute(f"DELETE FROM {self.s}.suppressed WHERE email_key = ANY(%s::text[])", (chunk,))

            self.db.run(delete)

    def clear_stale(self, active_since: Mapping[str, float]) -> None:
        rows = [(str(e).lower(), t) for e, t in active_since.items()]
        statement = f"DELETE FROM {self.s}.suppressed WHERE email_key = %s AND at <= %s"
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]

            def delete(conn: Any, chunk: list = chunk) -> None:
                with conn.cursor() as cur:
                    cur.executemany(statement, chunk)

            self.db.run(delete)

    def counts(self) -> dict[str, int]:
        return dict(
            self.db.run(
                lambda c: c.execute(f"SELECT reason, count(*) FROM {self.s}.suppressed GROUP BY reason").fetchall()
            )
        )

    def get_meta(self, key: str) -> str | None:
        return self.meta.get_meta(META_PREFIX + key)

    def set_meta(self, key: str, value: str | None) -> None:
        self.meta.set_meta(META_PREFIX + key, value)
