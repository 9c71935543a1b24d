"""Chores the worker does now and then between sends: a WAL checkpoint, the hourly purge of
delivered events' personal data past the retention time, the opt-out poll when it is due."""

from .. import config
from ..store import outbox_admin
from ..store.outbox import Outbox
from .optouts import OptOutPoller

EVERY = 10.0  # seconds between WAL checkpoints
PURGE_EVERY = 3600.0


class Housekeeper:
    def __init__(
        self, outbox: Outbox, watcher: config.ConfigWatcher | None = None, optouts: OptOutPoller | None = None
    ):
        self.outbox, self.watcher, self.optouts = outbox, watcher, optouts
        self._kept_at = 0.0
        self._purged_at = 0.0

    def run(self, now: float) -> None:
        """Called by a worker with the epoch time; does something only when it is due."""
        if now - self._kept_at < EVERY:
            return
        self._kept_at = now
        self.outbox.checkpoint()
        settings = self.watcher.current().settings if self.watcher is not None else None
        if settings is not None and now - self._purged_at >= PURGE_EVERY:
            self._purged_at = now
            outbox_admin.purge(self.outbox, settings.retention_days * 86400, now)
        if self.optouts is not None:
            self.optouts.run(now)
