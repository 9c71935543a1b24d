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
sees each fact once.
"""

import json
import time
from collections.abc import Iterable, Iterator, Mapping

from . import db
from .interfaces import Suppression
from .outbox import Outbox

__all__ = ["SqliteSuppressions", "Suppression", "CHUNK", "META_PREFIX"]

CHUNK = 5000  # emails per statement or transaction
META_PREFIX = "mirror:"  # the mirror's keys in the outbox's meta table
_COLUMNS = "s.email_key, s.reason, s.at, s.source, s.contact_id, s.opted_out_at"
_UPSERT = """
INSERT INTO suppressed (email_key, reason, at, source, contact_id, opted_out_at, recorded_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (email_key) DO UPDATE SET
  recorded_at = CASE WHEN excluded.reason != reason OR excluded.at != at THEN excluded.recorded_at
                ELSE recorded_at END,
  reason = excluded.reason, at = excluded.at, source = coalesce(excluded.source, source),
  contact_id = coalesce(excluded.contact_id, contact_id),
  opted_out_at = coalesce(excluded.opted_out_at, opted_out_at)
WHERE excluded.at >= suppressed.at
"""


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
        now = time.time() if now is None else now
        rows = [(e.email_key.lower(), e.reason, e.at, e.source, e.contact_id, e.opted_out_at, now) for e in entries]
        for chunk in _chunks(rows):
            with self.outbox.write_lock, db.transaction(self.outbox.connections.get()) as conn:
                conn.executemany(_UPSERT, chunk)

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

    def get_meta(self, key: str) -> str | None:
        return self.outbox.get_meta(META_PREFIX + key)

    def set_meta(self, key: str, value: str | None) -> None:
        self.outbox.set_meta(META_PREFIX + key, value)


def _chunks(items: list) -> Iterator[list]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
