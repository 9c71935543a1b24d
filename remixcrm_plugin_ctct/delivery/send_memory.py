"""Events kept only in memory (the outbox could not be written: a full or read-only disk), sent
as a durable row would be: the same lanes, the same retry policy and pauses, but their fate goes
back to the memory lane (``memory_lane``) instead of an outbox row. Needs no disk: the governor
and the token manager fall back to this process's memory."""

import logging
import time
from collections.abc import Callable

from .. import config, payload
from ..ctct import client as api_client
from ..ctct.token_manager import NeedsReauth, TokenUnavailable
from ..store import lanes
from . import retry_policy
from .importing import Importing
from .memory_lane import MemoryEvent
from .pauses import Pause
from .sign_up import QuotaUsedUp, SignUp

log = logging.getLogger("remixcrm_plugin_ctct")


class MemorySends:
    """Part of :class:`.send.Delivery` (which provides these attributes and the two pauses)."""

    watcher: config.ConfigWatcher
    importing: Importing
    sign_up: SignUp
    clock: Callable[[], float]

    def signature(self) -> tuple:
        raise NotImplementedError

    def _pause_until_changed(self, reason: str, before: tuple, error: str | None = None) -> Pause:
        raise NotImplementedError

    def _forbidden_pause(self, e: api_client.ApiError, before: tuple) -> Pause:
        raise NotImplementedError

    def _config_pause(self, status: str, seen: tuple) -> Pause:
        """Held until the config or the tokens change from ``seen``, the signature taken *before*
        the config was read: taken after, a fix landing in between (another thread's reading,
        which signature() waits for) would be "seen" and never lift the pause."""
        return Pause(f"the config ({status})", changed=lambda: self.signature() != seen)

    def work_memory(self, item: MemoryEvent) -> Pause | float | None:
        """One event of the memory lane (``memory_lane.MemoryEvent``), decided as a row would be;
        its fate goes back to the lane: None when finished (sent, skipped or given up), an epoch
        time to try again, or a Pause (held back without counting the attempt). Needs no disk:
        the governor and the token manager fall back to this process's memory."""
        record = item.record
        contact = payload.Contact(
            str(record["client_id"]), record["email"], record.get("fields", {}), record.get("email_opt_in")
        )
        who = f"client {payload.shown(contact.client_id)} ({payload.mask_email(contact.email)}, kept in memory)"
        # the signature before the config is read, as for a row: taken after, a fix landing in
        # between (another thread's reading, which signature() waits for) is "seen" and never lifts it
        seen = self.signature()
        loaded = self.watcher.current()
        settings = loaded.settings
        if loaded.status != config.ACTIVE or settings is None:
            return self._config_pause(loaded.status, seen)
        lane = lanes.lane_of(contact.email_opt_in, str(record.get("event")), settings.unknown_consent)
        try:
            if lane == lanes.IMPORT:  # an import of one: its activity is polled right here
                result = self.importing.send([contact], settings, _sleep)[0]
            else:
                result = self.sign_up.send(contact, settings, consent_at=_number(record.get("at")))
        except NeedsReauth:
            return self._pause_until_changed("Constant Contact needs re-authorisation", seen)
        except (TokenUnavailable, OSError) as e:  # OSError: the token store's disk
            return self._memory_retry(item, who, str(e), None)
        except QuotaUsedUp:
            return Pause("the daily quota", until=retry_policy.next_utc_midnight(self.clock()))
        if result.status in ("skipped", "dry_run"):
            outcome = (result.outcome or "").replace(contact.email, payload.mask_email(contact.email))
            log.info("%s %s (%s)", who, outcome, record["event"])
            return None
        if result.error is None:
            log.info(
                "%s %s contact %s in list %s (%s)",
                who,
                result.outcome or result.status,
                result.contact_id,
                ", ".join(result.lists) or settings.list_id,
                record["event"],
            )
            return None
        err = result.error
        decision = retry_policy.classify(err.status, err.error_key)
        if decision.action == retry_policy.QUOTA:
            return Pause("the daily quota", until=retry_policy.next_utc_midnight(self.clock()))
        if decision.action == retry_policy.RETRY:
            return self._memory_retry(item, who, str(err), err.retry_after)
        if decision.action == retry_policy.AUTH:
            log.error(
                "%s: Constant Contact refuses even a freshly refreshed token (%s). Fix: %s",
                who,
                err,
                api_client.FIXES[401],
            )
            return self._pause_until_changed("a refused access token", seen)
        if decision.action == retry_policy.FORBIDDEN:
            return self._forbidden_pause(err, seen)
        log.error(
            "%s not sent, given up: Constant Contact answered %s.%s", who, err, f" Fix: {err.fix}" if err.fix else ""
        )
        return None

    def _memory_retry(self, item: MemoryEvent, who: str, error: str, retry_after: str | None) -> float | None:
        """The outbox rows' retry policy: jittered backoff (or Retry-After) until max_age_hours."""
        now = self.clock()
        settings = self.watcher.current().settings
        max_age = settings.max_age_hours * 3600 if settings else retry_policy.DEFAULT_MAX_AGE
        if retry_policy.expired(item.record.get("at", now), now, max_age):
            log.error("%s not sent, given up after %g h of failures; last error: %s", who, max_age / 3600, error)
            return None
        when = retry_policy.next_attempt_at(now, item.attempts, retry_policy.retry_after_seconds(retry_after, now))
        log.warning("%s not sent yet: %s; attempt %d, next in %.0f s", who, error, item.attempts, when - now)
        return when


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _sleep(seconds: float) -> bool:
    """The memory lane's wait between an import's polls (it is never asked to stop early)."""
    time.sleep(seconds)
    return False
