"""The composition root: builds this process's machinery for one data dir, once, and hands each
part what it needs (nothing calls back up through here).

The path of a client: hooks → intake (validate, map, append to the journal, wake) → store
(journal folded into the outbox) → delivery worker (background threads) → delivery.send
(governor, token manager, Constant Contact client).
"""

import logging
import os
import sqlite3
import threading
import time

from . import config, forksafe
from .store import journal, outbox_admin
from .ctct.token_manager import TokenManager
from .delivery.send import Delivery
from .delivery.governor import Governor
from .store.outbox import FILE_NAME as OUTBOX_FILE
from .store.outbox import Outbox
from .delivery.worker import OutboxSender
from .store.tokens import TokenStore

log = logging.getLogger("remixcrm_plugin_ctct")

PURGE_EVERY = 3600.0

_watcher = config.ConfigWatcher()
_lock = threading.Lock()
_runtime = None


class Runtime:
    """This process's outbox, token manager, governors, delivery and sender, for one data dir."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.outbox = Outbox(data_dir)
        self.journal = journal.Journal(data_dir)
        self.tokens = TokenManager(TokenStore(data_dir))
        self._governor: tuple | None = None  # ((rate, quota), Governor) for the settings last seen
        self.delivery = Delivery(self.outbox, self.tokens, self.governor_for, _watcher, self.signature)
        self.sender = OutboxSender(self.outbox, self.delivery.work_row, self.delivery.work_memory,
                                   housekeeping=self._housekeep, shared_pause=self.delivery.quota_pause, journal=self.journal)
        self.delivery.pause = self.sender.pause
        self._purged_at = 0.0

    def governor_for(self, settings) -> "DisklessFallback":
        key = (settings.requests_per_second, settings.daily_quota)
        if self._governor is None or self._governor[0] != key:
            self._governor = (key, DisklessFallback(Governor(self.data_dir, *key)))
        return self._governor[1]

    def signature(self) -> tuple:
        """What, when changed, may have fixed a pause: the config file, the token store."""
        return (_watcher.signature(), self.tokens.store.signature())

    def _housekeep(self, now: float) -> None:
        settings = _watcher.current().settings
        if settings is not None and now - self._purged_at >= PURGE_EVERY:
            self._purged_at = now
            outbox_admin.purge(self.outbox, settings.retention_days * 86400, now)


class DisklessFallback:
    """The governor, or plain spacing inside this process when its file cannot be used (a full
    or read-only disk): events kept in memory must still go out, within the rate limit."""

    def __init__(self, governor: Governor):
        self.governor = governor
        self._next = 0.0  # monotonic time of the next free slot in this process
        self._lock = threading.Lock()
        forksafe.after_fork_in_child(self._after_fork)

    def __getattr__(self, name):  # today_count, rate, ...: the governor's own
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


def runtime() -> Runtime:
    """The machinery for the data dir in force when it was first needed (created lazily:
    importing the plugin starts nothing)."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = Runtime(config.data_dir())
    return _runtime


def resume_pending() -> None:
    """Called once when the hooks are loaded: if an earlier run left an outbox or journals in
    the data dir, start the sender so pending work flows without waiting for a hook (a
    restart, or a worker recycled after each request). Only two ``stat`` calls here: no file
    is opened or created, and an empty data dir starts nothing; the sender reads the config in
    its own thread and stops its threads again when nothing is pending."""
    try:
        base = config.data_dir()
        if not (_exists(base / OUTBOX_FILE) or _exists(base / "journal")):
            return
        runtime().sender.wake()
    except Exception:  # loading the plugin must never fail because of this
        log.exception("could not start sending what an earlier run left; it goes out with the next event")


def _exists(path) -> bool:
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def watcher() -> config.ConfigWatcher:
    """The config as this process last read it (re-read when the file changes)."""
    return _watcher


def tokens() -> TokenManager:
    return runtime().tokens


def flush(timeout: float = 5.0, retries: bool = False) -> bool:
    """Wait until nothing is in flight and nothing due can be sent (with ``retries``: nor
    scheduled for a retry); False after ``timeout``."""
    return _runtime.sender.flush(timeout, retries) if _runtime is not None else True


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # a parent thread may have held it while making the runtime
    _watcher._lock = threading.Lock()  # ... or while reading the config


forksafe.after_fork_in_child(_after_fork)  # registers an at-fork hook only: nothing starts


def reset(timeout: float = 5.0) -> None:
    """Stop and forget the sender, the outbox connection, tokens and config cache (tests, demo)."""
    global _runtime
    with _lock:
        rt, _runtime = _runtime, None
    if rt is not None:
        rt.sender.close(timeout)
        rt.outbox.close()
    _watcher.forget()
