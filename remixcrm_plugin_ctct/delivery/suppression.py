"""Who no lane may send: the contacts the suppression mirror knows as unsubscribed or deleted in
Constant Contact. Checked before every push and every import, at no cost per contact: the mirror
is brought up to date (a few requests at most, once a minute) and then read locally."""

import logging
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from .. import config, consent

log = logging.getLogger("remixcrm_plugin_ctct")

MIRROR_MAX_AGE = 60.0  # seconds a mirror sync is trusted before the next send brings it up to date
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

    def why_not(
        self, emails: Iterable[str], settings: config.Settings, call: Callable, consent_at: float | None = None
    ) -> dict[str, str]:
        """{lower-cased email: why it is not sent} for those of ``emails`` that are suppressed.
        ``consent_at``: when the person gave the consent this push carries (``email_opt_in =
        True``); an opt-out *older* than that consent was overruled by the person themselves.
        Raises the mirror sync's ApiError (the send fails as its own request would have)."""
        if self.mirror is None:
            return {}
        try:
            self.mirror.refresh(call, max_age=MIRROR_MAX_AGE)
            known = self.mirror.filter(emails)
        except (OSError, sqlite3.Error) as e:  # the disk (memory lane): the API's own rules still hold
            log.warning("cannot read the suppression mirror (%s); sending on Constant Contact's own rules", e)
            return {}
        found = {}
        for key, suppression in known.items():
            if suppression.reason == "deleted":
                if not settings.restore_deleted:
                    found[key] = SUPPRESSED_DELETED
            elif consent_at is None or suppression.at >= consent_at:
                found[key] = SUPPRESSED_UNSUBSCRIBED
        return found
