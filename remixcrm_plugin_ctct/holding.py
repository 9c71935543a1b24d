"""Clients that cannot be sent yet, kept in memory until what blocked them changes.

Blocked means: the config is broken, Constant Contact needs re-authorisation, or the token
endpoint is down. A client waits here until the config or the token store changes (or, for an
outage, a retry time passes) and goes out with the next event after that. Memory only: what
is held when the process exits is lost, and said so. The durable outbox will replace this.
"""

import atexit
import logging
import threading
import time
from collections import deque

log = logging.getLogger("remixcrm_plugin_ctct")

LIMIT = 10_000
LOG_INTERVAL = 60.0  # seconds between "still holding" reports


class Holding:
    def __init__(self, limit: int = LIMIT):
        self.limit = limit
        self._items: deque = deque()
        self._lock = threading.Lock()
        self._signature = None
        self._retry_at: float | None = None
        self._logged_at = -LOG_INTERVAL
        self._atexit = False

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, contact, reason: str, signature, retry_after: float | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._items) >= self.limit:
                dropped = self._items.popleft()
                log.error("%d clients already held in memory; client %s is dropped", self.limit, dropped.client_id)
            self._items.append(contact)
            self._signature = signature
            self._retry_at = now + retry_after if retry_after else None
            count, say = len(self._items), now - self._logged_at >= LOG_INTERVAL
            if say:
                self._logged_at = now
            if not self._atexit:
                self._atexit = True
                atexit.register(self._report_at_exit)
        if say:
            log.warning(
                "%d client(s) held in memory because %s; they go out with the first event after it is fixed "
                "(kept only while this process runs)", count, reason,
            )

    def due(self, signature) -> bool:
        """True when what blocked the held clients may have changed, or their retry time came."""
        return signature != self._signature or (self._retry_at is not None and time.monotonic() >= self._retry_at)

    def take(self) -> list:
        with self._lock:
            items, self._items = list(self._items), deque()
            self._logged_at = -LOG_INTERVAL
        if items:
            log.info("sending %d client(s) that were held", len(items))
        return items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._signature, self._retry_at = None, None
            self._logged_at = -LOG_INTERVAL

    def _report_at_exit(self) -> None:
        if self._items:
            log.error("exiting with %d client(s) held in memory and not sent to Constant Contact", len(self._items))
