"""The governor's shared budget in SQLite (``governor.sqlite3``): :class:`.interfaces.Budget`.

A ``BEGIN IMMEDIATE`` transaction is the cross-process lock, so RemixCRM's worker processes
share one budget with no extra dependency. What the numbers mean, and how they are paced, is
the governor's business (delivery/governor.py); this module only keeps them.
"""

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from . import db
from .interfaces import BudgetState

T = TypeVar("T")

FILE_NAME = "governor.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget (id INTEGER PRIMARY KEY CHECK (id = 1),
  next_slot REAL NOT NULL, day TEXT NOT NULL, day_count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pace (id INTEGER PRIMARY KEY CHECK (id = 1),
  sent TEXT NOT NULL,        -- JSON list: wall times of the last few check-ins, oldest first
  widen REAL NOT NULL,       -- spacing factor set by the last `throttled` answer (1: none)
  widened_at REAL NOT NULL);
"""
_WRITE_BUDGET = """
INSERT INTO budget (id, next_slot, day, day_count) VALUES (1, ?, ?, ?) ON CONFLICT (id)
DO UPDATE SET next_slot = excluded.next_slot, day = excluded.day, day_count = excluded.day_count
"""
_WRITE_PACE = """
INSERT INTO pace (id, sent, widen, widened_at) VALUES (1, ?, ?, ?) ON CONFLICT (id)
DO UPDATE SET sent = excluded.sent, widen = excluded.widen, widened_at = excluded.widened_at
"""


class SqliteBudget:
    def __init__(self, directory: Path):
        self.path = Path(directory) / FILE_NAME
        self._conns = db.Connections(self.path, _SCHEMA, busy_timeout=30)

    def __repr__(self) -> str:
        return f"SqliteBudget({str(self.path)!r})"

    def read(self) -> BudgetState:
        return _load(self._conns.get())

    def update(self, change: Callable[[BudgetState], tuple[BudgetState | None, T]]) -> T:
        """Run ``change`` in one ``BEGIN IMMEDIATE`` transaction; write only the parts it changed
        (a commit that writes nothing is cheap)."""
        with db.transaction(self._conns.get()) as conn:
            before = _load(conn)
            after, result = change(before)
            if after is not None:
                if after.next_slot is not None and after[:3] != before[:3]:
                    conn.execute(_WRITE_BUDGET, (after.next_slot, after.day, after.day_count))
                if after[3:] != before[3:]:
                    conn.execute(_WRITE_PACE, (json.dumps(after.sent), after.widen, after.widened_at))
        return result


def _load(conn: sqlite3.Connection) -> BudgetState:
    budget = conn.execute("SELECT next_slot, day, day_count FROM budget WHERE id = 1").fetchone()
    pace = conn.execute("SELECT sent, widen, widened_at FROM pace WHERE id = 1").fetchone()
    next_slot, day, count = budget if budget else (None, "", 0)
    if pace is None:
        return BudgetState(next_slot, day, count, [], 1.0, 0.0)
    try:
        sent = [float(t) for t in json.loads(pace[0])]
    except (ValueError, TypeError):  # unreadable: as if nothing was sent lately
        sent = []
    return BudgetState(next_slot, day, count, sent, float(pace[1]), float(pace[2]))
