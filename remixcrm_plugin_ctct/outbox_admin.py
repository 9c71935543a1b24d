"""What ``status``, ``retry`` and ``purge`` ask of the outbox (the sending path never needs it)."""

import time
from typing import NamedTuple

from .outbox import Outbox


class Summary(NamedTuple):
    counts: dict  # state -> rows
    oldest_pending_at: float | None
    last_error: str | None
    last_error_at: float | None


def summary(outbox: Outbox) -> Summary:
    counts = dict(outbox._query("SELECT state, count(*) FROM events GROUP BY state"))
    (oldest,) = outbox._query("SELECT min(created_at) FROM events WHERE state IN ('pending', 'sending')")[0]
    found = outbox._query("SELECT last_error, updated_at FROM events WHERE last_error IS NOT NULL "
                          "AND state IN ('pending', 'sending', 'dead') ORDER BY updated_at DESC LIMIT 1")
    error, at = found[0] if found else (None, None)
    return Summary(counts, oldest, error, at)


def for_client(outbox: Outbox, client_id: str) -> list[dict]:
    """Every row that carries this client's event (also when it was coalesced into another)."""
    rows = outbox._query(
        "SELECT id, state, event, attempts, created_at, updated_at, next_attempt_at, contact_id, outcome, last_error, client_id "
        "FROM events WHERE client_id = ? OR instr(' ' || other_clients || ' ', ' ' || ? || ' ') ORDER BY id",
        (client_id, client_id))
    keys = ("id", "state", "event", "attempts", "created_at", "updated_at", "next_attempt_at", "contact_id", "outcome", "last_error", "client_id")
    return [dict(zip(keys, r)) for r in rows]


def retry(outbox: Outbox, dead: bool = False, now: float | None = None) -> int:
    """Make pending rows due now; with ``dead``, give dead rows a new life too. Returns how many."""
    now = time.time() if now is None else now
    count = outbox._exec("UPDATE events SET next_attempt_at = ? WHERE state = 'pending' AND next_attempt_at > ?", (now, now)).rowcount
    if dead:
        for (row_id,) in outbox._query("SELECT id FROM events WHERE state = 'dead' AND contact IS NOT NULL"):
            # via 'sending' so that retry_later can coalesce it with a newer pending row
            outbox._exec("UPDATE events SET state = 'sending', created_at = ?, attempts = 0, outcome = NULL WHERE id = ?", (now, row_id))
            outbox.retry_later(row_id, now, None)  # attempts stay 0: a fresh start
            count += 1
    return count


def purge(outbox: Outbox, retention_seconds: float, now: float | None = None) -> int:
    """Forget emails and names of rows delivered more than ``retention_seconds`` ago; the small
    status record (client id, contact id, outcome, time) stays. Returns how many rows."""
    now = time.time() if now is None else now
    return outbox._exec("UPDATE events SET contact = NULL, email_key = NULL WHERE state IN ('delivered', 'skipped', 'dry_run') "
                        "AND contact IS NOT NULL AND updated_at < ?", (now - retention_seconds,)).rowcount
