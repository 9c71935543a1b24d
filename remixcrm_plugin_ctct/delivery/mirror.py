"""The suppression mirror: which emails Constant Contact has as unsubscribed or deleted, kept
locally so that import batches are filtered without a lookup per contact.

- **Seed** (no watermark yet): page ``GET /contacts?status=unsubscribed,deleted&limit=500``
  (the spec's ``status`` takes a comma-separated list): one request per 500 suppressed contacts.
- **Catch up** (the last complete pass is older than ``max_age``), two queries from the
  watermark less an overlap window:
  ``status=unsubscribed,deleted&optout_after=…`` — opt-outs, which do not move a contact's
  ``updated_at`` (Constant Contact's ``updated_after`` alone misses them; support confirms);
  deleted contacts carry an ``opt_out_date`` too (the spec), so deletions show here as well;
  ``status=all&updated_after=…`` — deletions, re-subscribes and revivals: a contact shown active
  again (not deleted, not unsubscribed) is cleared, unless what we hold is newer than its
  ``updated_at`` (a page read just before an opt-out must not undo it).
  This query also returns every contact our own pushes touched: one request per 500 of them.
- The watermark is **Constant Contact's clock** (the Date header of the pass's first answer),
  not ours: a host clock that runs ahead would otherwise move it past opt-outs we never read.
  It advances only after a complete pass; a failure mid-paging keeps the old one, and the next
  pass reads again what this one half-applied (upserts are idempotent). The overlap window
  (``OVERLAP``, 10 min) covers clock resolution and changes that become visible to queries late.
- One pass at a time per process (a lock, re-made after a fork); several processes may pass at
  once — they write the same facts. The time of the last complete pass is shared (the store's
  meta), so processes together pass about once per ``max_age``.

Rule when a contact is both: **deleted wins** as the reason (a deleted contact is gone for
every lane), and the opt-out time stays in ``opted_out_at``; ``at`` is then the latest of the
deletion date (a date only, in the spec), the opt-out and ``updated_at`` — the closest we get to
when it was deleted.
"""

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .. import forksafe
from ..ctct.client import ApiError, ContactsPage, CtctClient
from ..store.interfaces import Suppression, Suppressions

log = logging.getLogger("remixcrm_plugin_ctct")

Call = Callable[[Callable[[CtctClient], Any]], Any]  # runs one request in our turn, with a token

OVERLAP = 600.0  # seconds each catch-up reads again before the watermark
PAGE_LIMIT = 500  # GET /contacts's maximum page size (the spec)
SUPPRESSED_STATUSES = "unsubscribed,deleted"
WATERMARK = "watermark"  # meta: Constant Contact's time at the start of the last complete pass
SYNCED_AT = "synced_at"  # meta: this host's time of the last complete pass (max_age, `status`)
UNSUBSCRIBED, DELETED = "unsubscribed", "deleted"


class Mirror:
    def __init__(self, store: Suppressions, overlap: float = OVERLAP, page_limit: int = PAGE_LIMIT):
        self.store, self.overlap, self.page_limit = store, overlap, page_limit
        self.requests = 0  # made by this object's passes (for benches)
        self._reset()
        forksafe.after_fork_in_child(self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held it at the fork

    def __repr__(self) -> str:
        return f"Mirror({self.store!r})"

    def filter(self, emails: Iterable[str]) -> dict[str, Suppression]:
        """The suppressed ones among ``emails`` (any case), keyed by lower-cased email."""
        return self.store.suppressed(emails)

    def synced_at(self) -> float | None:
        """This host's time of the last complete pass; None: never synced (nothing to trust yet)."""
        return _float(self.store.get_meta(SYNCED_AT))

    def watermark(self) -> float | None:
        return _float(self.store.get_meta(WATERMARK))

    def refresh(self, call: Call, now: float | None = None, max_age: float = 60.0) -> bool:
        """Seed, or catch up when the last complete pass is older than ``max_age``; True if it
        synced. Raises what ``call`` raises (ApiError): the watermark then stays where it was."""
        now = time.time() if now is None else now
        if self._fresh(now, max_age):
            return False
        with self._lock:  # one pass at a time here; a thread that waited finds it fresh
            if self._fresh(now, max_age):
                return False
            before, started = self.watermark(), time.time()
            if before is None:
                server_time = self._pass(call, {"status": SUPPRESSED_STATUSES})
            else:
                since = before - self.overlap
                server_time = self._pass(call, {"status": SUPPRESSED_STATUSES, "optout_after": since})
                self._pass(call, {"status": "all", "updated_after": since})
            mark = server_time if server_time is not None else started
            latest = self.watermark()  # another process may have passed meanwhile: never move back
            self.store.set_meta(WATERMARK, repr(mark if latest is None else max(latest, mark)))
            self.store.set_meta(SYNCED_AT, repr(now))
        if before is None:
            counts = self.store.counts()
            log.info(
                "suppression mirror seeded: %d unsubscribed, %d deleted",
                counts.get(UNSUBSCRIBED, 0),
                counts.get(DELETED, 0),
            )
        return True

    def _fresh(self, now: float, max_age: float) -> bool:
        synced = self.synced_at()
        # either side: a pass another thread finished just after our ``now`` was taken (we waited for
        # it on the lock) is fresh; a time far ahead (a clock stepped back) is not trusted for ever
        return synced is not None and self.watermark() is not None and abs(now - synced) < max_age

    def _pass(self, call: Call, params: dict) -> float | None:
        """Page through one query, applying each page as it comes; the first answer's server time."""
        query = {**params, "limit": self.page_limit}
        page: ContactsPage = self._get(call, lambda client: client.contacts_page(query))
        first_time, seen = page.server_time, {page.next}
        while True:
            self._apply(page.contacts)
            path = page.next
            if path is None:
                return first_time
            page = self._get(call, functools.partial(_follow, path=path))
            if page.next in seen:  # a link that loops would page for ever; an incomplete pass keeps the watermark
                raise ApiError(None, "bad_link", "Constant Contact's next-page link repeated itself")
            seen.add(page.next)

    def _get(self, call: Call, request: Callable[[CtctClient], ContactsPage]) -> ContactsPage:
        self.requests += 1
        return call(request)

    def _apply(self, contacts: list[dict]) -> None:
        seen_at = time.time()
        suppressed, active = [], {}
        for contact in contacts:
            found = classify(contact, seen_at)
            if found is None:
                continue
            key, suppression, updated = found
            if suppression is not None:
                suppressed.append(suppression)
            else:
                active[key] = updated
        if suppressed:
            self.store.record(suppressed)
        if active:
            self.store.clear_stale(active)


def _follow(client: CtctClient, path: str) -> ContactsPage:
    return client.contacts_page(path=path)


def classify(contact: dict, seen_at: float) -> tuple[str, Suppression | None, float] | None:
    """(email key, its suppression or None if active, when Constant Contact last updated it);
    None for a contact without an email (SMS only)."""
    address = contact.get("email_address")
    if not isinstance(address, dict) or not isinstance(address.get("address"), str) or not address["address"]:
        return None
    key = address["address"].lower()
    updated = _epoch(contact.get("updated_at"))
    opted_out = _epoch(address.get("opt_out_date"))
    source = address.get("opt_out_source") if isinstance(address.get("opt_out_source"), str) else None
    contact_id = contact.get("contact_id") if isinstance(contact.get("contact_id"), str) else None
    if contact.get("deleted_at"):
        times = [t for t in (_epoch(contact["deleted_at"]), opted_out, updated) if t is not None]
        at = max(times) if times else seen_at
        return key, Suppression(key, DELETED, at, source, contact_id, opted_out), at
    if address.get("permission_to_send") == UNSUBSCRIBED:
        at = next((t for t in (opted_out, updated) if t is not None), seen_at)
        return key, Suppression(key, UNSUBSCRIBED, at, source, contact_id, opted_out), at
    return key, None, seen_at if updated is None else updated


def _epoch(value: object) -> float | None:
    """An ISO-8601 date-time (``…Z`` or an offset) or date (``deleted_at``) as epoch seconds, UTC
    when no zone is given; None if absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        found = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (found if found.tzinfo else found.replace(tzinfo=dt.UTC)).timestamp()


def _float(raw: str | None) -> float | None:
    try:
        return None if raw is None else float(raw)
    except ValueError:
        return None
