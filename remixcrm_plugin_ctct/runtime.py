"""The composition root: builds this process's machinery for one data dir, once, and hands each
part what it needs (nothing calls back up through here).

The path of a client: hooks → intake (validate, map, append to the journal, wake) → store
(journal folded into the outbox) → delivery worker (background threads) → delivery.send
(governor, token manager, Constant Contact client) → the row's outcome in the outbox.
"""

import _thread
import logging
import os
import threading
import time
from pathlib import Path
from typing import NamedTuple

from . import config, forksafe
from .ctct.token_manager import TokenManager
from .delivery.governors import Governors
from .delivery.housekeeping import Housekeeper
from .delivery.mirror import Mirror
from .delivery.optouts import OptOutPoller
from .delivery.send import Delivery
from .delivery.worker import Worker
from .spawn import SenderStarter
from .store import backends
from .store.journal import Journal
from .store.journal_watch import JournalWatcher
from .store.outbox import FILE_NAME as OUTBOX_FILE

log = logging.getLogger("remixcrm_plugin_ctct")

_watcher = config.ConfigWatcher()
_lock = threading.Lock()  # short critical sections only: a hook may take it
_build_lock = threading.Lock()  # held while a Runtime is built (milliseconds): never by a hook
_runtime: "Runtime | None" = None
_host: "HostSide | None" = None
_builder: threading.Event | None = None  # sender = "thread": set once the builder (off the request) is done
BUILDER_NAME = "remixcrm-ctct-start"
_start_failed: Exception | None = None  # why the builder could not start (the next hook logs it)
_generation = 0  # reset() bumps it: a builder started before then builds nothing
BUILD_AFTER = 0.02  # seconds the builder lets the hook's request finish before it takes the GIL


class Runtime:
    """This process's outbox, journal, token manager, governors, delivery and worker, for one data
    dir, over the store ``where`` names (default: the one the environment and the config name, read
    now; the SQLite files in the data dir when neither names one); and, for ``sender = "process"``,
    what starts the sender process. ``journal``: the sender process's view of every journal."""

    def __init__(
        self,
        data_dir: Path,
        where: config.StateLocation | None = None,
        journal: Journal | None = None,
        host: "HostSide | None" = None,
    ):
        """``host``: what this process's hooks already used (:func:`host_side`: its journal and
        starter are taken over, one journal per process)."""
        self.data_dir = data_dir
        if where is None:
            where = config.state_location(config.config_path())
        self.store = backends.open_store(data_dir, where)
        self.outbox = self.store.outbox
        if host is not None:
            journal = host.journal
            journal.fold_also_for(self.store.journals)
        self.journal = journal if journal is not None else Journal(data_dir, self.store.journals)
        self.starter = host.starter if host is not None else SenderStarter(data_dir)
        self.tokens = TokenManager(self.store.tokens)
        self.governors = Governors(data_dir, None if self.store.kind == "sqlite" else self.store.budget)
        self.mirror = Mirror(self.store.suppressions)
        self.delivery = Delivery(self.outbox, self.tokens, self.governors, _watcher, mirror=self.mirror)
        self.optouts = OptOutPoller(
            self.mirror, self.delivery.calls, _watcher, paused=lambda: self.delivery.shared_pause() is not None
        )
        housekeeper = Housekeeper(self.outbox, _watcher, state_url=self.store.url, optouts=self.optouts)
        self.worker = Worker(self.outbox, self.delivery, journal=self.journal, housekeeper=housekeeper)


class HostSide(NamedTuple):
    """All a hook needs: its journal and what starts the sender process. No store is opened (no
    SQLite file, no PostgreSQL connection): the first hook call of each worker stays cheap. With
    ``sender = "process"`` that is all a host process ever holds; with ``"thread"`` the sender
    threads build the rest in the background (:func:`wake_threads`)."""

    journal: Journal
    starter: SenderStarter


def wake_threads() -> None:
    """After a hook's append with ``sender = "thread"``: wake this process's sender threads. The
    first time, a thread of ours builds them (opening the store, starting the workers takes
    milliseconds, and a store another process is writing may make it wait): never the host's
    request, whose hook has already recorded the event in the journal."""
    global _builder, _start_failed
    rt = _runtime
    if rt is not None:
        rt.worker.wake()
        return
    failed, _start_failed = _start_failed, None
    with _lock:
        if _runtime is None and _builder is None:
            done = threading.Event()
            # not threading.Thread.start() here: it waits until the new thread has run, and on a
            # busy machine where every worker takes its first request at once that took 5-9 ms of
            # the hook. This returns at once (a short-lived helper starts the named thread and
            # does that waiting)
            try:
                start_thread(_start_builder, (_generation, done))
                _builder = done
            except Exception as e:  # no thread to be had: the next hook tries again
                failed = failed or e
    if failed is not None:  # said here, in the host's thread: a bare thread that logs stays in threading.enumerate()
        log.error("could not start the constant contact sender threads (%s); events wait in the journal", failed)
    rt = _runtime
    if rt is not None:  # built meanwhile
        rt.worker.wake()


def _start_builder(generation: int, done: threading.Event) -> None:
    """A bare thread (no threading.Thread object: it stays out of threading.enumerate()) that
    starts the builder as a proper, named thread."""
    global _builder, _start_failed
    try:
        threading.Thread(target=_build, args=(generation, done), name=BUILDER_NAME, daemon=True).start()
    except Exception as e:  # no thread to be had: the next hook tries again, and says so
        _start_failed = e
        with _lock:
            if generation == _generation:
                _builder = None
        done.set()


def _build(generation: int, done: threading.Event) -> None:
    global _builder
    try:
        # let the request that started us return first: this thread would otherwise hold the GIL
        # while the hook waits for it
        time.sleep(BUILD_AFTER)
        with _lock:
            current = generation == _generation
        if current and _watcher.current().sender == "thread":  # not switched to the sender process meanwhile
            runtime().worker.wake()
    except Exception:  # the event is in the journal: the next hook, flush() or restart goes on
        log.exception("could not start the constant contact sender threads; events wait in the journal")
    finally:
        with _lock:
            if generation == _generation:
                _builder = None
        done.set()


start_thread = _thread.start_new_thread  # (tests make it fail)


def runtime() -> Runtime:
    """The machinery for the data dir in force when it was first needed (created lazily:
    importing the plugin starts nothing)."""
    global _runtime
    rt = _runtime
    if rt is not None:
        return rt
    with _build_lock:  # never held by a hook: a hook meanwhile writes through the host side
        if _runtime is None:
            host = host_side()  # one journal per process, whoever made it first
            built = Runtime(config.data_dir(), host=host)
            with _lock:
                _runtime = built
    return _runtime


def host_side() -> HostSide:
    """The hook's view, in either mode: made first, before any runtime (:func:`runtime` takes its
    journal and starter over)."""
    global _host
    if _host is None:
        with _lock:
            if _host is None:
                data_dir = config.data_dir()
                _host = HostSide(Journal(data_dir), SenderStarter(data_dir))
    return _host


def for_sender_process() -> Runtime:
    """This process is the sender process (:mod:`.service`): its journal view folds every
    host process's journal, and it never appends one of its own."""
    global _runtime
    with _build_lock:
        if _runtime is None:
            data_dir = config.data_dir()
            _runtime = Runtime(data_dir, journal=JournalWatcher(data_dir))
        return _runtime


def resume_pending() -> None:
    """Called once when the hooks are loaded: if an earlier run left an outbox or journals in
    the data dir, start the worker (or, with ``sender = "process"``, the sender process) so
    pending work flows without waiting for a hook (a restart, or a worker recycled after each
    request). Only two ``stat`` calls here: no file is opened or created, and an empty data dir
    starts nothing; the config is read in a short-lived thread of its own, and sender threads
    stop again when nothing is pending. With the shared store named in the environment
    (``REMIXCRM_CTCT_STATE_URL``), other hosts' work may be waiting: the worker starts (it
    connects from its own thread)."""
    try:
        base = config.data_dir()
        shared = bool(os.environ.get(config.ENV_URL, "").strip())
        if not (shared or _exists(base / OUTBOX_FILE) or _exists(base / "journal")):
            return
        # built in a thread of its own: choosing the store reads the config, never in the host's thread
        threading.Thread(target=_resume, name="remixcrm-ctct-resume", daemon=True).start()
    except Exception:  # loading the plugin must never fail because of this
        log.exception("could not start sending what an earlier run left; it goes out with the next event")


def _resume() -> None:
    try:
        if _watcher.current().sender == "process":
            runtime().starter.ensure()  # the sender process, not threads in the host, sends it
        else:
            runtime().worker.wake()
    except Exception:
        log.exception("could not start sending what an earlier run left; it goes out with the next event")


def _exists(path: Path) -> bool:
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
    rt = _runtime
    if rt is None:
        host = _host
        if host is None or host.journal.hand_off or host.journal.path is None:
            return True  # no event of ours waits here (with "process", the sender process sends)
        rt = runtime()  # "thread": the builder may not have run yet
    return rt.worker.flush(timeout, retries)


def _after_fork() -> None:
    global _lock, _builder, _build_lock
    _lock, _build_lock = threading.Lock(), threading.Lock()  # a parent thread may have held it while making the runtime
    _builder = None  # the parent's builder thread does not exist here: the child's next hook starts its own


forksafe.after_fork_in_child(_after_fork)  # registers an at-fork hook only: nothing starts


def reset(timeout: float = 5.0) -> None:
    """Stop and forget the worker, the outbox connection, tokens and config cache (tests, demo)."""
    global _runtime, _host, _builder, _generation
    with _lock:
        rt, _runtime, _host = _runtime, None, None
        builder, _builder = _builder, None
        _generation += 1
    if builder is not None:
        builder.wait(timeout)
    with _build_lock, _lock:  # a builder (or flush) already past its look may have built one meanwhile
        late, _runtime = _runtime, None
    for one in (rt, late):
        if one is not None:
            one.worker.close(timeout)
            one.outbox.close()
    _watcher.forget()
