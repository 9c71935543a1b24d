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
    return Summary(outbox.state_counts(), outbox.oldest_unsent_at(), *outbox.last_error())


def for_client(outbox: Outbox, client_id: str) -> list[dict]:
    """Every row that carries this client's event (also when it was coalesced into another)."""
    return outbox.rows_for_client(client_id)


def retry(outbox: Outbox, dead: bool = False, now: float | None = None) -> int:
    """Make pending rows due now; with ``dead``, give dead rows a new life too. Returns how many."""
    now = time.time() if now is None else now
    count = outbox.make_due(now)
    if dead:
        count += outbox.revive_dead(now)
    return count


def purge(outbox: Outbox, retention_seconds: float, now: float | None = None) -> int:
    """Forget emails and names of rows delivered more than ``retention_seconds`` ago; the small
    status record (client id, contact id, outcome, time) stays. Returns how many rows."""
    now = time.time() if now is None else now
    return outbox.purge(now - retention_seconds)
