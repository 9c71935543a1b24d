"""Pauses: when every send would meet the same wall (no config, a refused token, the day's
quota), the workers stop taking rows until the cause is over.

A pause travels one way: delivery *returns* it for a row, the worker holds it (``PauseSwitch``)
and only then hands the row back, so no other worker takes the row and meets the same wall.
"""

import logging
from collections.abc import Callable
from typing import NamedTuple

log = logging.getLogger("remixcrm_plugin_ctct")

SHARED_PAUSE_CHECK = 1.0  # seconds between looks at the pause other processes may have set


class Pause(NamedTuple):
    """Stop taking rows: until an epoch time, or until ``changed()`` says the cause may be fixed."""

    reason: str
    until: float | None = None
    changed: Callable[[], bool] | None = None
    error: str | None = None  # what the row held back records as its last error

    def over(self, now: float) -> bool:
        if self.until is not None and now >= self.until:
            return True
        return self.changed is not None and self.changed()

    def row_due_at(self, now: float) -> float:
        """When the row held back by this pause may go: at once if a fix can lift the pause
        (it is checked on every claim), at its end if only time lifts it (the daily quota)."""
        return self.until if self.until is not None and self.changed is None else now


class PauseSwitch:
    """This process's pause, and a look every second at the one other processes may have set."""

    def __init__(self, shared: Callable[[], Pause | None] | None = None):
        self.shared = shared
        self.current: Pause | None = None
        self._shared_checked_at = float("-inf")

    def hold(self, pause: Pause) -> None:
        self.current = pause

    def lift(self) -> None:
        self.current = None

    def holds(self, now: float) -> bool:
        """True while a pause is in force; a pause found over is lifted (and said so)."""
        pause = self.current  # read once: another worker may lift it between two reads
        if pause is None and self.shared is not None and now - self._shared_checked_at >= SHARED_PAUSE_CHECK:
            self._shared_checked_at = now
            try:
                pause = self.shared()  # e.g. another process hit the daily quota
            except Exception:  # an unreadable outbox holds no shared pause we could honour
                pause = None
            if pause is not None:  # never write None: another worker may have just paused
                self.current = pause
        if pause is None:
            return False
        if not pause.over(now):
            return True
        if self.current is pause:
            self.current = None
            log.info("sending resumes (%s no longer holds it back)", pause.reason)
        return False
