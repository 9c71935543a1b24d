"""The opt-out poll: every ``optout_poll_minutes`` a worker brings the suppression mirror up to
date, also when nothing is being sent, so that opt-outs reach RemixCRM (``opt_outs.py``: the
hook and ``remixcrm-ctct optouts`` read the mirror only).

- Run by the worker's housekeeping (:mod:`.housekeeping`), so only while the worker runs: after
  an event, after the resume at load (an outbox in the data dir starts the worker), and after a
  host's call of ``email_marketing_opt_outs`` when a poll is due (the hook wakes the worker and
  answers from the mirror at once). Worker threads stop after a minute without work, so a host
  that neither sends nor asks has its mirror brought up to date when it next does either.
- A poll is the mirror's catch-up (:meth:`.mirror.Mirror.refresh` with the period as its maximum
  age): two read-only requests when little changed, each in its turn with the rate governor and
  counted against the daily quota. The last complete pass is shared by all processes, and so is
  the due time: together they poll about once per period; a send's own catch-up (a minute old at
  most) counts as a poll.
- Not while sending is paused for the daily quota; a failure (the API down, no token) is one
  WARNING, no ERROR (the next sends will say what is wrong, if anything), and the poll is tried
  again a period later, not at once.
- Cheap when idle: between polls the worker only compares two times held in memory.
"""

import json
import logging
import sqlite3
from collections.abc import Callable

from .. import config
from ..ctct.client import ApiError
from ..ctct.token_manager import NeedsReauth, TokenUnavailable
from .api_calls import ApiCalls, QuotaUsedUp
from .mirror import Mirror

log = logging.getLogger("remixcrm_plugin_ctct")

LAST_POLL = "optout_poll"  # mirror meta: {"at": epoch, "error": text or null}, for `status`
INACTIVE_RECHECK = 10.0  # seconds: a config that is off (or polls off) is looked at again this soon


class OptOutPoller:
    def __init__(
        self, mirror: Mirror, calls: ApiCalls, watcher: config.ConfigWatcher, paused: Callable[[], bool] = lambda: False
    ):
        self.mirror, self.calls, self.watcher, self.paused = mirror, calls, watcher, paused
        self._next_at = 0.0  # epoch: do not look before (a poll just passed, or failed)
        self._failing = False  # said once per run of failures

    def __repr__(self) -> str:
        return f"OptOutPoller({self.mirror!r})"

    def period(self) -> float | None:
        """Seconds between polls; None when the config is not active or polls are off."""
        settings = self.watcher.current().settings
        if settings is None or not settings.optout_poll_minutes:
            return None
        return settings.optout_poll_minutes * 60

    def due(self, now: float) -> bool:
        """Whether a poll is due now (reads the config and the shared time of the last pass)."""
        if now < self._next_at:
            return False
        period = self.period()
        if period is None:
            return False
        synced = self.mirror.synced_at()
        return synced is None or not abs(now - synced) < period  # as the mirror judges it

    def run(self, now: float, force: bool = False) -> bool:
        """Poll if due (``force``: now, however fresh the mirror; the demo); True when the mirror
        was brought up to date. Never raises for the API."""
        if now < self._next_at and not force:
            return False
        settings = self.watcher.current().settings
        period = settings.optout_poll_minutes * 60 if settings is not None else 0
        if settings is None or not period:
            self._next_at = now + INACTIVE_RECHECK
            return False
        if self.paused():
            self._next_at = now + min(period, INACTIVE_RECHECK * 6)
            return False
        call = self.calls.caller(settings, "opt-out poll")
        try:
            synced = self.mirror.refresh(call, now=now, max_age=0 if force else period)
        except QuotaUsedUp:
            self._next_at = now + period  # the quota pause says it; polls wait as sends do
            return False
        except (ApiError, NeedsReauth, TokenUnavailable, OSError, sqlite3.Error) as e:
            self._next_at = now + period
            self._said(now, str(e) or type(e).__name__)
            return False
        last = self.mirror.synced_at()
        self._next_at = (last if last is not None else now) + period
        if synced:
            if self._failing:
                log.info("opt-out poll: the suppression mirror is up to date again")
            self._failing = False
            self._note(now, None)
        return synced

    def _said(self, now: float, error: str) -> None:
        minutes = (self._next_at - now) / 60
        if not self._failing:
            log.warning(
                "opt-out poll: could not bring the suppression mirror up to date (%s); trying again in %.0f min",
                error,
                minutes,
            )
        else:
            log.info("opt-out poll failed again (%s); next try in %.0f min", error, minutes)
        self._failing = True
        self._note(now, error)

    def _note(self, now: float, error: str | None) -> None:
        try:
            self.mirror.store.set_meta(LAST_POLL, json.dumps({"at": now, "error": error}))
        except (OSError, sqlite3.Error):  # only `status` reads it
            log.debug("could not note the opt-out poll", exc_info=True)


def last_poll(mirror: Mirror) -> tuple[float, str | None] | None:
    """(when, the error or None) of this host's last poll; None if it never polled."""
    raw = mirror.store.get_meta(LAST_POLL)
    try:
        found = json.loads(raw) if raw else None
        return (float(found["at"]), found.get("error")) if isinstance(found, dict) else None
    except (ValueError, TypeError, KeyError):
        return None
