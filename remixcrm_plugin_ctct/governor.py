"""Keeps every process on this machine under Constant Contact's rate limits, together.

Constant Contact allows 4 requests/s and 10,000 requests/day per API key; over either, it
answers 429. The governor hands out send *slots* spaced ``1/rate`` seconds apart from one small
SQLite table (``governor.sqlite3``): a ``BEGIN IMMEDIATE`` transaction is the cross-process lock,
so RemixCRM's worker processes share one budget with no extra dependency, and the table also
counts the day's requests (UTC, as the quota resets at 00:00 UTC).

Why spacing and not a burst of 4 per second: the server counts requests as they *arrive*; a
burst plus a little network jitter can put 5 arrivals inside one second. Even spacing, with a
small safety margin, keeps steady load at zero ``throttled`` answers.
"""

import datetime as dt
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path

from . import db, forksafe

FILE_NAME = "governor.sqlite3"
_SCHEMA = ("CREATE TABLE IF NOT EXISTS budget (id INTEGER PRIMARY KEY CHECK (id = 1), "
           "next_slot REAL NOT NULL, day TEXT NOT NULL, day_count INTEGER NOT NULL);")
DEFAULT_RATE = 4.0  # requests per second, all processes together
DEFAULT_DAILY_QUOTA = 10_000
BATCH_WINDOW = 0.05  # seconds of slots one transaction may reserve (1 slot at 4/s, more when raised)
MAX_BATCH = 20  # ...but never more: unused slots still count towards the day
SAFETY = 1.03  # slots 3 % further apart than the limit: jitter must not add up to a 5th request


class Governor:
    def __init__(self, directory: Path, rate: float = DEFAULT_RATE, daily_quota: int = DEFAULT_DAILY_QUOTA,
                 clock=time.time, sleep=time.sleep):
        self.path = Path(directory) / FILE_NAME
        self.rate, self.daily_quota = rate, daily_quota
        self.interval = SAFETY / rate if rate > 0 else 0.0
        self.batch = max(1, min(MAX_BATCH, int(rate * BATCH_WINDOW)))
        self._local: deque = deque()  # slots this process reserved and has not used yet
        self._clock, self._sleep = clock, sleep
        self._conns = db.Connections(self.path, _SCHEMA, busy_timeout=30)
        self._lock = threading.Lock()  # one connection, one transaction at a time
        forksafe.after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held it at fork time

    def __repr__(self) -> str:
        return f"Governor({str(self.path)!r}, rate={self.rate:g}/s, daily_quota={self.daily_quota})"

    def _db(self) -> sqlite3.Connection:
        return self._conns.get()

    def reserve(self) -> tuple[float, int] | None:
        """Take the next slot: (epoch time to send at, requests counted today including this one),
        or None when today's quota is used up (then nothing is reserved)."""
        now = self._clock()
        today = dt.datetime.fromtimestamp(now, dt.timezone.utc).date().isoformat()
        with self._lock:
            while self._local and self._local[0][0] < now - BATCH_WINDOW:
                self._local.popleft()  # reserved but not used in time: spent
            if not self._local:
                self._local.extend(self._reserve_locked(now, today))
            return self._local.popleft() if self._local else None

    def _reserve_locked(self, now: float, today: str) -> list[tuple[float, int]]:
        # at a high rate, a few slots per transaction (``batch``); at Constant Contact's 4/s, one
        with db.transaction(self._db()) as conn:
            found = conn.execute("SELECT next_slot, day, day_count FROM budget WHERE id = 1").fetchone()
            next_slot, day, count = found if found else (now, today, 0)
            count = count if day == today else 0
            take = min(self.batch, self.daily_quota - count)
            if take <= 0:
                return []  # nothing written: the commit is empty
            first = max(now, next_slot)
            slots = [(first + i * self.interval, count + i + 1) for i in range(take)]
            conn.execute("INSERT INTO budget (id, next_slot, day, day_count) VALUES (1, ?, ?, ?) ON CONFLICT (id) "
                         "DO UPDATE SET next_slot = excluded.next_slot, day = excluded.day, day_count = excluded.day_count",
                         (first + take * self.interval, today, count + take))
        return slots

    def wait_turn(self) -> int | None:
        """Block until this process may send; the day's count, or None when the quota is used up
        (nothing reserved then: the caller pauses until midnight UTC)."""
        reserved = self.reserve()
        if reserved is None:
            return None
        slot, count = reserved
        delay = slot - self._clock()
        if delay > 0:
            self._sleep(delay)
        return count

    def today_count(self) -> int:
        now = self._clock()
        today = dt.datetime.fromtimestamp(now, dt.timezone.utc).date().isoformat()
        with self._lock:
            found = self._db().execute("SELECT day, day_count FROM budget WHERE id = 1").fetchone()
        return found[1] if found and found[0] == today else 0
