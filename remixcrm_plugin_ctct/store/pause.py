"""The shared pause (the daily quota): every process on this machine stops until then.

:class:`.interfaces.SharedPause` over the outbox's meta (key ``quota_paused_until``), so it
lives wherever the outbox lives: a second outbox backend brings its own pause along.
"""

from .interfaces import Outbox

KEY = "quota_paused_until"


class SqlitePause:
    def __init__(self, outbox: Outbox, key: str = KEY):
        self.outbox, self.key = outbox, key

    def __repr__(self) -> str:
        return f"SqlitePause({self.outbox!r}, {self.key!r})"

    def get(self) -> float | None:
        """The epoch time the pause ends, or None (also when it is unreadable: no pause)."""
        raw = self.outbox.get_meta(self.key)
        try:
            return None if raw is None else float(raw)
        except ValueError:
            return None

    def set(self, until: float | None) -> None:
        self.outbox.set_meta(self.key, None if until is None else repr(until))
