"""Who no lane may send: the contacts the suppression mirror knows as unsubscribed or deleted in
Constant Contact. Checked before every push and every import, at no cost per contact: the mirror
is brought up to date (a few requests at most, once a minute) and then read locally."""

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from .. import config, consent
from .mirror import classify

log = logging.getLogger("remixcrm_plugin_ctct")

MIRROR_MAX_AGE = 60.0  # seconds a mirror sync is trusted before the next send brings it up to date
DISK_WARN_EVERY = 60.0  # seconds between warnings about a mirror the disk keeps us from using (not one per send)
SUPPRESSED_UNSUBSCRIBED = f"{consent.UNSUBSCRIBED} (suppression mirror)"
SUPPRESSED_DELETED = f"{consent.DELETED} (suppression mirror; restore_deleted = true restores)"


class Mirror(Protocol):
    """:class:`..delivery.mirror.Mirror` as seen from here."""

    def refresh(
        self, call: Callable[[Callable[[Any], Any]], Any], now: float | None = ..., max_age: float = ...
    ) -> bool: ...
    def filter(self, emails: Iterable[str]) -> dict[str, Any]: ...  # email_key -> Suppression (.reason)


class SuppressionCheck:
    def __init__(self, mirror: Mirror | None = None):
        self.mirror = mirror
        self.clock: Callable[[], float] = time.monotonic
        self._warned_at: dict[str, float] = {}  # what was said -> when (a full disk fails every send)

    def why_not(
        self,
        emails: Iterable[str],
        settings: config.Settings,
        call: Callable,
        consent_at: float | None = None,
        now: float | None = None,
    ) -> dict[str, str]:
        """{lower-cased email: why it is not sent} for those of ``emails`` that are suppressed.
        ``consent_at``: when the person gave the consent this push carries (``email_opt_in =
        True``); an opt-out *older* than that consent was overruled by the person themselves.
        A consent older than the mirror's trust (``MIRROR_MAX_AGE``: the push waited) is checked
        against Constant Contact itself, one lookup each: an opt-out after it, but after the
        mirror's last pass, is otherwise unknown, and sign_up_form would re-subscribe the person.
        Raises the mirror sync's ApiError (the send fails as its own request would have)."""
        if self.mirror is None:
            return {}
        emails = list(emails)
        try:
            self.mirror.refresh(call, max_age=MIRROR_MAX_AGE)
        except (OSError, sqlite3.Error) as e:  # the disk (full, read-only): what it holds still counts
            self._warn("cannot update the suppression mirror (%s); using what it holds", e)
        try:
            known = self.mirror.filter(emails)
        except (OSError, sqlite3.Error) as e:
            # the import has no lookup of its own: sent unchecked, it would revive deleted contacts
            self._warn("cannot read the suppression mirror (%s); looking each contact up instead", e)
            known = _looked_up(emails, call)
        else:
            now = time.time() if now is None else now
            if consent_at is not None and now - consent_at > MIRROR_MAX_AGE:
                known.update(_looked_up(emails, call))  # today's truth; the mirror's facts stay too
        found = {}
        for key, suppression in known.items():
            if suppression.reason == "deleted":
                if not settings.restore_deleted:
                    found[key] = SUPPRESSED_DELETED
            elif consent_at is None or suppression.at >= consent_at:
                found[key] = SUPPRESSED_UNSUBSCRIBED
        return found

    def _warn(self, text: str, error: Exception) -> None:
        """One WARNING per kind a minute: while the disk stays full or read-only, every send meets it."""
        now = self.clock()
        if now - self._warned_at.get(text, float("-inf")) >= DISK_WARN_EVERY:
            self._warned_at[text] = now  # (two threads at once may both say it: harmless)
            log.warning(text, error)


def _looked_up(emails: list[str], call: Callable) -> dict[str, Any]:
    """The suppressed ones among ``emails`` as ``GET /contacts?email=…`` says (one request each)."""
    known = {}
    for email in emails:
        contact = call(lambda c, email=email: c.find_contact(email))
        found = classify(contact, time.time()) if isinstance(contact, dict) else None
        if found is not None and found[1] is not None:
            known[email.lower()] = found[1]
    return known
