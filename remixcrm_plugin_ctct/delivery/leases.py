"""Keeps the leases of the rows this process is sending, so that a long send (a token refresh
waiting for another process, a slow API) never lets another process take a row meanwhile."""

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from ..store.interfaces import Outbox

log = logging.getLogger("remixcrm_plugin_ctct")


class LeaseKeeper:
    def __init__(self, outbox: Outbox, also: Callable[[], Iterable[int]] = tuple):
        """``also``: more rows to keep (pushed, their outcome not recorded yet: :mod:`.unrecorded`)."""
        self.outbox = outbox
        self.also = also
        self._cond = threading.Condition()
        self._ids: set[int] = set()
        self._thread: threading.Thread | None = None  # the keeper in office; any other one leaves

    @contextmanager
    def holding(self, ids: Iterable[int]) -> Iterator[None]:
        """Renew the leases of ``ids`` while the block runs."""
        ids = set(ids)
        with self._cond:
            self._ids |= ids
        try:
            yield
        finally:
            with self._cond:
                self._ids -= ids

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def start(self, owner: str) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, args=(owner,), name="remixcrm-ctct-leases", daemon=True
                )
                self._thread.start()

    def stop(self) -> threading.Thread | None:
        """The keeper leaves (at once, unless it is renewing); returns it, for a join."""
        with self._cond:
            keeper, self._thread = self._thread, None
            self._cond.notify_all()
        return keeper

    def _run(self, owner: str) -> None:
        me = threading.current_thread()
        while True:
            every = self.outbox.lease_seconds / 3  # read each round: tests shorten it
            with self._cond:
                self._cond.wait_for(lambda: self._thread is not me, timeout=every)
                if self._thread is not me:
                    return
                ids = sorted(self._ids.union(self.also()))
            if ids:
                try:
                    self.outbox.renew(owner, ids, self.outbox.lease_seconds)
                except Exception as e:  # the lease may expire: at worst a second send of the row
                    log.warning("could not renew the leases of %d row(s) being sent: %s", len(ids), e)
