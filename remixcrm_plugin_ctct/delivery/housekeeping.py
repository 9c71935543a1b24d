"""Chores the worker does now and then between sends: a WAL checkpoint, the hourly purge of
delivered events' personal data past the retention time, the opt-out poll when it is due, and one
WARNING when the config names another state store than the one this process uses (a restart switches)."""

import logging
import os

from .. import config
from ..store import outbox_admin
from ..store.interfaces import Outbox
from .optouts import OptOutPoller

log = logging.getLogger("remixcrm_plugin_ctct")

EVERY = 10.0  # seconds between WAL checkpoints
PURGE_EVERY = 3600.0


class Housekeeper:
    def __init__(
        self,
        outbox: Outbox,
        watcher: config.ConfigWatcher | None = None,
        state_url: str | None = None,
        optouts: OptOutPoller | None = None,
    ):
        self.outbox, self.watcher, self.optouts = outbox, watcher, optouts
        self.state_url = state_url  # the store this process uses (None: SQLite)
        self._moved_said: object = None
        self._kept_at = 0.0
        self._purged_at = 0.0

    def run(self, now: float) -> None:
        """Called by a worker with the epoch time; does something only when it is due."""
        if now - self._kept_at < EVERY:
            return
        self._kept_at = now
        self.outbox.checkpoint()
        settings = self.watcher.current().settings if self.watcher is not None else None
        if settings is not None:
            self._store_moved(settings)
        if settings is not None and now - self._purged_at >= PURGE_EVERY:
            self._purged_at = now
            outbox_admin.purge(self.outbox, settings.retention_days * 86400, now)
        if self.optouts is not None:
            self.optouts.run(now)

    def _store_moved(self, settings: config.Settings) -> None:
        """The store is chosen when a process starts; a config naming another one is said once."""
        if os.environ.get(config.ENV_URL, "").strip():
            return  # the environment's URL wins over the config's
        if settings.state_url == self.state_url or settings.state_url == self._moved_said:
            return
        self._moved_said = settings.state_url
        log.warning(
            "state_url in the config now names %s, but this process keeps using %s until it restarts: "
            "restart RemixCRM (every process, on every host) to switch, after `remixcrm-ctct migrate-state`",
            config.mask_url(settings.state_url) if settings.state_url else "the local SQLite store",
            config.mask_url(self.state_url) if self.state_url else "the local SQLite store",
        )
