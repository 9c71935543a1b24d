"""The suppression mirror's table: :class:`.interfaces.Suppressions` in ``outbox.sqlite3``.

The table ``suppressed`` lives in the outbox's file and is created by the outbox's schema
(:mod:`.outbox_sql`), so it shares the outbox's per-thread connections, fork safety and
in-process writer lock (SQLite's busy handler sleeps in milliseconds; a Python lock hands over
in microseconds). Its watermarks are rows of the outbox's ``meta`` table, under ``mirror:``.

Sized for the bulk lane: one ``suppressed()`` call with 50,000 emails is a few indexed joins
against ``json_each`` (chunks of ``CHUNK``), not 50,000 statements; writes go in chunks too, so
the writer lock is never held for long.

``recorded_at`` changes only when an email's (reason, at) changes: re-reading the same opt-out
in an overlap window keeps it, so a reader of "what is new since T" (opt-outs back to the CRM)
sees each fact once. It is stamped *inside* the write transaction, strictly later than every
stamp already in the table (and in whole microseconds, so it survives a round trip through a
``datetime``): write transactions are serialised, so a reader that has seen stamp T has seen
every row stamped at or before T, and "after the last stamp I saw" never skips a slow writer's rows.

``client_id``: the RemixCRM client of the newest delivered event for that email, taken when the
fact is recorded (the outbox purges emails after ``retention_days``; the mirror keeps the link).
"""

import json
import time
from collections.abc import Iterable, Iterator, Mapping

from . import db
from .interfaces import OptOut, Suppression
from .outbox import Outbox

__all__ = ["SqliteSuppressions", "Suppression", "OptOut", "CHUNK", "META_PREFIX", "OPT_OUT_WHERE", "TICK"]

CHUNK = 5000  # emails per statement or transaction
META_PREFIX = "mirror:"  # the mirror's keys in the outbox's meta table
_COLUMNS = "s.email_key, s.reason, s.at, s.source, s.contact_id, s.opted_out_at"
_UPSERT = """
INSERT INTO suppressed (email_key, reason, at, source, contact_id, opted_out_at, recorded_at, client_id)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,
        (SELECT e.client_id FROM events e WHERE e.email_key = ?1 AND e.state = 'delivered' ORDER BY e.id DESC LIMIT 1))
ON CONFLICT (email_key) DO UPDATE SET
  recorded_at = CASE WHEN excluded.reason != reason OR excluded.at != at THEN excluded.recorded_at
                ELSE recorded_at END,
  reason = excluded.reason, at = excluded.at, source = coalesce(excluded.source, source),
  contact_id = coalesce(excluded.contact_id, contact_id),
  opted_out_at = coalesce(excluded.opted_out_at, opted_out_at),
  client_id = coalesce(excluded.client_id, client_id)
WHERE excluded.at >= suppressed.at
"""
# What RemixCRM hears of: unsubscribes (by the person or the account), and contacts deleted after
# the person opted out; a deletion alone is the account's housekeeping, not the person's choice.
# A client id not known when the fact was recorded (we never pushed the email) is the newest
# client RemixCRM told us of with that email, if any.
OPT_OUT_WHERE = (
    "(s.reason = 'unsubscribed' OR (s.reason = 'deleted' AND s.source = 'Contact' AND s.opted_out_at IS NOT NULL))"
)
_OPT_OUTS = (
    """
SELECT s.email_key, coalesce(s.client_id, l.client_id), coalesce(s.opted_out_at, s.at), s.source, s.recorded_at
FROM suppressed s LEFT JOIN latest l ON l.email_key = s.email_key
WHERE {since}"""
    + OPT_OUT_WHERE
    + """
ORDER BY s.recorded_at, s.email_key
"""
)
TICK = 1e-6  # recorded_at's resolution: one microsecond, what a datetime holds


class SqliteSuppressions:
    """Suppressed emails beside the outbox (same file, same connections, same writer lock)."""

    def __init__(self, outbox: Outbox):
        self.outbox = outbox

    def __repr__(self) -> str:
        return f"SqliteSuppressions({self.outbox!r})"

    def suppressed(self, emails: Iterable[str]) -> dict[str, Suppression]:
        """The suppressed ones among ``emails`` (any case), keyed by lower-cased email."""
        keys = sorted({str(e).lower() for e in emails})
        conn, found = self.outbox.connections.get(), dict[str, Suppression]()
        for chunk in _chunks(keys):
            # json_each drives the loop; each email is one primary-key probe
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM json_each(?) AS j CROSS JOIN suppressed AS s ON s.email_key = j.value",
                (json.dumps(chunk),),
            ).fetchall()
            found.update((r[0], Suppression(*r)) for r in rows)
        return found

    def record(self, entries: Iterable[Suppression], now: float | None = None) -> None:
        """Upsert: an email's newer fact (by ``at``) replaces the older; an older one is ignored,
        so re-reading a page (an overlap window, another process) changes nothing."""
        rows = [(e.email_key.lower(), e.reason, e.at, e.source, e.contact_id, e.opted_out_at) for e in entries]
        for chunk in _chunks(rows):
            with self.outbox.write_lock, db.transaction(self.outbox.connections.get()) as conn:
                stamp = _stamp(conn, time.time() if now is None else now)
                conn.executemany(_UPSERT, [(*row, stamp) for row in chunk])

    def clear(self, emails: Iterable[str]) -> None:
        """Forget these emails: they are active in Constant Contact again."""
        keys = sorted({str(e).lower() for e in emails})
        for chunk in _chunks(keys):
            with self.outbox.write_lock:
                self.outbox.connections.get().execute(
                    "DELETE FROM suppressed WHERE email_key IN (SELECT value FROM json_each(?))", (json.dumps(chunk),)
                )

    def clear_stale(self, active_since: Mapping[str, float]) -> None:
        """Forget each email unless what we hold happened after ``active_since[email]`` (when
        Constant Contact last updated the contact it showed as active)."""
        rows = [(str(e).lower(), t) for e, t in active_since.items()]
        for chunk in _chunks(rows):
            with self.outbox.write_lock, db.transaction(self.outbox.connections.get()) as conn:
                conn.executemany("DELETE FROM suppressed WHERE email_key = ? AND at <= ?", chunk)

    def counts(self) -> dict[str, int]:
        rows = self.outbox.connections.get().execute("SELECT reason, count(*) FROM suppressed GROUP BY reason")
        return dict(rows.fetchall())

    def opt_outs(self, since: float | None = None) -> list[OptOut]:
        """Opt-outs recorded after ``since`` (exclusive; None: all), oldest recorded first."""
        conn = self.outbox.connections.get()
        if since is None:
            rows = conn.execute(_OPT_OUTS.format(since="")).fetchall()
        else:
            rows = conn.execute(_OPT_OUTS.format(since="s.recorded_at > ? AND "), (since,)).fetchall()
        return [OptOut(*r) for r in rows]

    def get_meta(self, key: str) -> str | None:
        return self.outbox.get_meta(META_PREFIX + key)

    def set_meta(self, key: str, value: str | None) -> None:
        self.outbox.set_meta(META_PREFIX + key, value)


def _stamp(conn, now: float) -> float:
    """``now`` in whole microseconds, but strictly after every stamp in the table (a clock that
    stepped back, another process that wrote a moment ago): taken inside the write transaction."""
    (latest,) = conn.execute("SELECT max(recorded_at) FROM suppressed").fetchone()
    return round(now if latest is None else max(now, latest + TICK), 6)


def _chunks(items: list) -> Iterator[list]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
