"""The rate governor for the settings in force, made once per (rate, quota) and kept; with a
plain in-process spacing behind it for when its file cannot be used."""

import sqlite3
import threading
import time
from pathlib import Path

from .. import config, forksafe
from ..store.interfaces import Budget
from .governor import Governor


class DisklessFallback:
    """The governor, or plain spacing inside this process when its file cannot be used (a full
    or read-only disk): events kept in memory must still go out, within the rate limit."""

    def __init__(self, governor: Governor):
        self.governor = governor
        self._next = 0.0  # monotonic time of the next free slot in this process
        self._lock = threading.Lock()
        forksafe.after_fork_in_child(self._after_fork)

    def __getattr__(self, name: str):  # today_count, rate, ...: the governor's own
        return getattr(self.governor, name)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held it at fork time

    def wait_turn(self) -> int | None:
        try:
            return self.governor.wait_turn()
        except (OSError, sqlite3.Error):
            pass
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.governor.interval
        if slot > now:
            time.sleep(slot - now)  # our turn, as the governor would sleep
        return 0  # the day's count is unknown without the file


class Governors:
    """This process's governor for a data dir; a new one when the rate or quota setting changes."""

    def __init__(self, data_dir: Path, budget: Budget | None = None):
        self.data_dir, self.budget = data_dir, budget  # budget None: the SQLite one in data_dir
        self._current: tuple[tuple, DisklessFallback] | None = None  # ((rate, quota), governor) last seen

    def for_settings(self, settings: config.Settings) -> DisklessFallback:
        key = (settings.requests_per_second, settings.daily_quota)
        current = self._current  # read once: another thread may replace it
        if current is None or current[0] != key:
            current = self._current = (key, DisklessFallback(Governor(self.data_dir, *key, budget=self.budget)))
        return current[1]
