"""The one place that makes per-process state survive ``fork()``.

A child process inherits copies of the parent's locks (possibly *held* by a parent thread that
does not exist in the child), its keep-alive sockets (whose answers the parent may read) and its
SQLite connections (whose POSIX locks the child does not hold). None of them may be used in the
child. Every owner of such state registers a callback here; one ``os.register_at_fork`` hook
runs them all in the child, before any of its threads run.

Inherited objects are *kept*, never closed: closing an inherited SQLite connection may
checkpoint and delete a WAL that the parent still writes, and closing an inherited TLS socket
may end the parent's session. They are parked in ``_inherited`` so the garbage collector never
finalises them either.
"""

import importlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import Any

log = logging.getLogger("remixcrm_plugin_ctct")

_callbacks: list[Callable[[], Callable[[], None] | None]] = []  # each returns the callable, or None once gone
_registered = False
_lock = threading.Lock()
_inherited: list[Any] = []  # objects from a parent process: never closed, never collected
# Held while a background thread imports a heavy module (``requests``) and by every fork: a child
# forked halfway through an import inherits a half-initialised module in sys.modules, and every
# later send there fails with "partially initialized module 'requests' has no attribute …".
_import_lock = threading.Lock()
# SQLite keeps process-wide mutexes (the unix VFS's inode list, its allocator): a fork while a
# thread of ours is inside a SQLite call may copy one of them *held* into the child, and the
# child's first sqlite3.connect then hangs for ever. Every SQLite call enters this gate (shared);
# a fork waits, briefly, until no thread is inside and keeps new ones out until it is done.
_gate = threading.Condition(threading.Lock())
_inside = 0  # threads inside a SQLite call
_forking = False
FORK_WAIT = 1.0  # seconds a fork waits for SQLite calls in flight (a busy wait may outlast it)


def after_fork_in_child(callback: Callable[[], None]) -> None:
    """Run ``callback()`` in every child right after a fork. A bound method is held weakly
    (its object may go away: tests build and drop many runtimes); a function strongly."""
    if isinstance(callback, type(after_fork_in_child)) or not hasattr(callback, "__self__"):
        ref: Callable[[], Callable[[], None] | None] = lambda: callback  # noqa: E731
    else:
        ref = weakref.WeakMethod(callback)
    with _lock:
        _callbacks.append(ref)
        _register_locked()


def _register_locked() -> None:
    global _registered
    if not _registered and hasattr(os, "register_at_fork"):  # POSIX only; Windows has no fork
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_run_in_child)
        _registered = True


def _before_fork() -> None:
    global _forking
    _import_lock.acquire()  # the global, looked up now: a child replaces it with a fresh lock
    with _gate:
        _forking = True
        _gate.wait_for(lambda: _inside == 0, FORK_WAIT)


def _after_fork_in_parent() -> None:
    global _forking
    _import_lock.release()
    with _gate:
        _forking = False
        _gate.notify_all()


class _SqliteGate(threading.local):
    """``with forksafe.sqlite_call:`` around every SQLite call and every transaction (see
    ``_gate``): a transaction's locks are SQLite's in-process bookkeeping too, and a child that
    inherits them "held by another connection of this process" finds the database locked for
    ever. Re-entrant per thread: a statement inside a transaction never waits for a fork."""

    depth = 0

    def __enter__(self) -> None:
        global _inside
        if self.depth == 0:
            with _lock:
                _register_locked()
            with _gate:
                _gate.wait_for(lambda: not _forking, FORK_WAIT)
                _inside += 1
        self.depth += 1

    def __exit__(self, *exc) -> None:
        global _inside
        self.depth -= 1
        if self.depth == 0:
            with _gate:
                _inside -= 1
                if _inside == 0:
                    _gate.notify_all()


sqlite_call = _SqliteGate()


def load_module(name: str) -> ModuleType:
    """``import name`` from any thread, never overlapping a fork (see ``_import_lock``). Cheap
    once loaded: one dict lookup."""
    module = sys.modules.get(name)
    if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
        return module
    with _lock:
        _register_locked()
    with _import_lock:
        return importlib.import_module(name)


def kept() -> list[Any]:
    """The objects parked by ``keep`` in this process (for tests)."""
    return list(_inherited)


def keep(obj: Any) -> None:
    """Park an object inherited from the parent so it is never closed or finalised here."""
    if obj is not None:
        _inherited.append(obj)


def _run_in_child() -> None:
    global _lock, _import_lock, _gate, _inside, _forking
    _lock = threading.Lock()  # the parent may have held it while registering
    _import_lock = threading.Lock()  # held by the forking thread itself (the ``before`` hook)
    _gate, _inside, _forking = threading.Condition(threading.Lock()), 0, False  # the parent's threads are not here
    alive = []
    for ref in _callbacks:
        callback = ref()
        if callback is None:
            continue
        alive.append(ref)
        try:
            callback()
        except Exception:  # one owner's failure must not leave the others unreset
            log.exception("resetting plugin state after fork failed")
    _callbacks[:] = alive
