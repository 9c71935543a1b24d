"""The governor's budget in PostgreSQL: one row for every host (:class:`.interfaces.Budget`).

The rate limit is per API key, not per machine: each ``update`` locks the row (``SELECT … FOR
UPDATE``) for one short transaction, so all hosts' sends share one spacing and one day's count.
"""

import json
from collections.abc import Callable
from typing import Any, TypeVar

from ..interfaces import BudgetState
from .connect import Database

T = TypeVar("T")


class PgBudget:
    path = None  # no file (the governor's repr and `status` name one when there is)

    def __init__(self, db: Database):
        self.db = db
        self.s = f'"{db.schema}"'

    def __repr__(self) -> str:
        return f"PgBudget({self.db.where!r})"

    def read(self) -> BudgetState:
        return self.db.run(lambda c: _load(c, self.s, ""))

    def update(self, change: Callable[[BudgetState], tuple[BudgetState | None, T]]) -> T:
        """``change`` on the locked row in one transaction (run again if the connection broke)."""

        def locked(conn: Any) -> T:
            # no wait for the WAL's flush at COMMIT: the check-in's time is the send's, and the
            # send follows the commit (a crash may lose the last check-in: harmless)
            conn.execute("SET LOCAL synchronous_commit = off")
            before = _load(conn, self.s, " FOR UPDATE")
            after, result = change(before)
            if after is not None and after != before:
                conn.execute(
                    f"UPDATE {self.s}.budget SET next_slot = %s, day = %s, day_count = %s, sent = %s, widen = %s, "
                    "widened_at = %s WHERE id = 1",
                    (
                        after.next_slot,
                        after.day,
                        after.day_count,
                        json.dumps(after.sent),
                        after.widen,
                        after.widened_at,
                    ),
                )
            return result

        return self.db.run(locked)


def _load(conn: Any, s: str, lock: str) -> BudgetState:
    found = conn.execute(
        f"SELECT next_slot, day, day_count, sent, widen, widened_at FROM {s}.budget WHERE id = 1{lock}"
    ).fetchone()
    try:
        sent = [float(t) for t in json.loads(found[3])]
    except (ValueError, TypeError):  # unreadable: as if nothing was sent lately
        sent = []
    return BudgetState(found[0], found[1], found[2], sent, float(found[4]), float(found[5]))
