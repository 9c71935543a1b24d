"""When the config is read again: the file is stat-ed on every event and parsed again only when
it changed, so flipping the provider radio in Settings takes effect on the next event without a
restart. No lock is held while reading: other threads keep the last reading until the new one lands."""

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .. import forksafe
from . import loading
from .locate import config_file
from .settings import INACTIVE, INVALID, LoadedConfig

log = logging.getLogger("remixcrm_plugin_ctct")

BEING_READ = "being read"  # the last item of a signature taken while another thread reads a change
# seconds signature() waits for a reading under way to land (the sender's side only: the hook
# never waits, it takes current()). Without the wait, a pause taken while a fix was being read,
# and a flush() looking at it, saw the same "being read" signature twice and called it settled
SIGNATURE_WAIT = 0.25  # a reading takes milliseconds; kept short: exit (2 s) may wait on it once


class ConfigWatcher:
    """Returns the current config, re-parsing only when the file's stat changes.

    Announces each change of state once: INFO for on/off, ERROR (naming the file, the key
    and the fix) for a broken config.

    The thread that notices a change reads the file, with no lock held; meanwhile the other
    threads get the previous reading at once instead of queueing behind a slow disk.
    ``load`` reads one file (:func:`load`; tests pass a slow one).
    """

    def __init__(self, load: Callable[[Path], LoadedConfig] = loading.load) -> None:
        self._load = load
        self._lock = threading.Lock()  # guards the fields below; never held while the file is read
        self._landed = threading.Condition(self._lock)  # a reading landed (or was given up)
        forksafe.after_fork_in_child(self._after_fork)  # an at-fork hook only: nothing starts
        self._snapshot: tuple[tuple, LoadedConfig] | None = None
        self._announced: tuple | None = None
        self._reader: object | None = None  # the token of the thread reading the file now
        self._generation = 0  # forget() bumps it: a reading begun before then is not kept

    def current(self) -> LoadedConfig:
        snapshot = self._snapshot  # the hook's path: one stat, no further call when unchanged
        if snapshot is not None and snapshot[0] == _stat_key(config_file()):
            return snapshot[1]
        return self._current()[1]

    def _current(self) -> tuple[tuple, LoadedConfig]:
        path = config_file()
        key = _stat_key(path)
        snapshot = self._snapshot  # one read: key and config always belong together
        if snapshot is not None and snapshot[0] == key:
            return snapshot
        with self._lock:
            snapshot = self._snapshot
            if snapshot is not None and snapshot[0] == key:
                return snapshot
            if snapshot is not None and self._reader is not None:
                # another thread is reading the change: its predecessor serves meanwhile, under a
                # signature of its own, so that a pause taken on it (or a flush() looking at such
                # a pause) never mistakes "being read" for "unchanged"
                return (*snapshot[0], BEING_READ), snapshot[1]
            token = object() if self._reader is None else None  # else: nothing read yet, read alongside
            if token is not None:
                self._reader = token
            generation = self._generation
        loaded = None
        try:
            loaded = self._load(Path(path))  # never raises
        finally:
            with self._lock:
                if token is not None and self._reader is token:
                    self._reader = None
                    self._landed.notify_all()
                if loaded is not None and generation == self._generation:
                    self._announce(loaded)
                    self._snapshot = (key, loaded)
        return key, loaded

    def forget(self) -> None:
        """Drop what was read and announced (tests, the demo): the next event reads afresh."""
        with self._lock:
            self._snapshot, self._announced, self._reader = None, None, None
            self._generation += 1
            self._landed.notify_all()  # a signature() waiting for the dropped reading reads afresh

    def signature(self, wait: float = SIGNATURE_WAIT) -> tuple:
        """Changes when the file does, when another thread starts reading the change, and when
        that reading lands (a pause taken on the previous reading lifts once the new one is in).
        While another thread reads a change, waits up to ``wait`` seconds for it to land: the
        same "being read" signature seen twice would look like "unchanged"."""
        key = self._current()[0]
        if key[-1] != BEING_READ or wait <= 0:
            return key
        deadline = time.monotonic() + wait
        with self._lock:
            while self._reader is not None and (left := deadline - time.monotonic()) > 0:
                self._landed.wait(left)
        return self._current()[0]  # the reading that landed, or still "being read" (a slow disk)

    def _after_fork(self) -> None:
        # a parent thread may have held the lock, or been reading, at the fork: neither exists here
        self._lock = threading.Lock()
        self._landed = threading.Condition(self._lock)
        self._reader = None

    def _announce(self, loaded: LoadedConfig) -> None:
        said = (loaded.status, loaded.message, loaded.warnings)
        if said == self._announced:
            return
        self._announced = said
        for warning in loaded.warnings:  # a bad [….fields] entry: that entry is ignored, nothing pauses
            log.error("constant contact field mapping problem (that entry is ignored): %s", warning)
        if loaded.status == INVALID:
            log.error("constant contact sync is paused, config problem: %s", loaded.message)
        elif loaded.status == INACTIVE:
            log.info("constant contact sync is off: %s", loaded.message)
        else:
            log.info("constant contact sync is on: %s", loaded.message)


def _stat_key(path: str) -> tuple:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (path, None)
    except OSError as e:
        return (path, "error", e.errno)
    return (path, st.st_mtime_ns, st.st_size, st.st_ino)
