"""Journals of hosts killed on this machine, folded by a live host (the shared store only).

With PostgreSQL each host folds its own journal; a host killed with ``kill -9`` leaves the lines
it had not folded yet (its last milliseconds of events, more under load) on its disk. Hosts on
the same machine can reach that disk: every few seconds a live host's worker looks up the
registered journal directories of this machine whose registering process is provably gone
(:meth:`.interfaces.HostJournals.gone_hosts`), and folds the files there whose writer's lock is
free — the same proof and the same lock as a process adopting a dead sibling's journal in its
own data dir (:mod:`.journal_files`), so a journal whose writer lives is never read, and the
dead host restarting at the same moment never folds a line twice. Hosts on other machines
cannot reach that disk: see the README, "Running on several hosts".
"""

import logging
import os
import time
from pathlib import Path

from . import journal_files
from .interfaces import HostJournals, StoreUnavailable

log = logging.getLogger("remixcrm_plugin_ctct")

LOOK_EVERY = 5.0  # seconds between looks for journals of hosts that died on this machine
REGISTER_EVERY = 60.0  # seconds between notes of where this host's journal lies (and which process lives)


class Neighbours:
    def __init__(self, registry: HostJournals, directory: Path):
        self.registry = registry
        self.directory = os.path.abspath(directory)  # another host's process reads it from another cwd
        self._registered: tuple[int, float] | None = None  # (pid, monotonic time) of the last registration
        self._looked_at = float("-inf")
        self._unreadable: set[str] = set()  # directories whose trouble was said

    def register(self) -> None:
        """Note where this process's journal lies: once per process (a forked child registers
        itself), then once a minute. Raises StoreUnavailable when the store is out of reach."""
        now, pid = time.monotonic(), os.getpid()
        if self._registered is not None and self._registered[0] == pid and now - self._registered[1] < REGISTER_EVERY:
            return
        self.registry.register(self.directory)
        self._registered = (pid, now)

    def adopt(self) -> int:
        """Fold what hosts that died on this machine left in their journals (every few seconds);
        returns how many events."""
        now = time.monotonic()
        if now - self._looked_at < LOOK_EVERY:
            return 0
        self._looked_at = now
        count = 0
        for host in self.registry.gone_hosts(self.directory):
            try:
                if not os.path.isdir(host.directory):
                    self.registry.forget_host(host)  # its data dir was removed: nothing left to fold
                    continue
                folded = journal_files.adopt_dead(Path(host.directory), host.offsets)
            except StoreUnavailable:
                raise
            except OSError as e:  # another user's directory, a disk error: that host folds it when it restarts
                if host.directory not in self._unreadable:
                    self._unreadable.add(host.directory)
                    log.warning(
                        "cannot fold the journal a gone process (pid %d) left in %s (%s); its events go out "
                        "when that host starts again there",
                        host.pid,
                        host.directory,
                        e,
                    )
                continue
            if folded:
                log.info(
                    "folded %d event(s) a gone process (pid %d) left in %s: this host sends them",
                    folded,
                    host.pid,
                    host.directory,
                )
            count += folded
        return count
