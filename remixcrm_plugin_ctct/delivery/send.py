"""One send to Constant Contact, and what its outcome does to the outbox row.

Runs on a sender thread: config (still Constant Contact? which list?) → governor (our turn
within 4 requests/s and the day's quota) → auth (which token; refresh on 401) → api_client.
The decisions (retry when, give up when, pause why) come from :mod:`.retry_policy`.
"""

import json
import logging
import time
from typing import NamedTuple

from ..ctct import client as api_client
from .. import config, consent, payload
from . import retry_policy
from ..ctct.token_manager import NeedsReauth, TokenUnavailable
from ..store.outbox import THROTTLED
from .worker import Pause

log = logging.getLogger("remixcrm_plugin_ctct")

QUOTA_KEY = "quota_paused_until"


class Result(NamedTuple):
    status: str  # "created", "updated", "skipped", "dry_run" or "failed"
    contact_id: str | None = None
    error: api_client.ApiError | None = None
    outcome: str | None = None  # why skipped, or what a dry run would have sent


class Delivery:
    """Bound to this process's outbox, token manager, governor factory and config watcher."""

    def __init__(self, outbox, tokens, governor_for, watcher, signature, clock=time.time):
        self.outbox, self.tokens, self.governor_for, self.watcher = outbox, tokens, governor_for, watcher
        self.signature, self.clock = signature, clock
        self.pause = lambda pause: None  # the sender's pause switch; set when the sender is built
        self._quota_said = False
        self._said: dict = {}  # causes already logged as ERROR (setdefault: one thread wins)

    def send(self, contact: payload.Contact, settings: config.Settings) -> Result:
        """The consent guard's lookup if needed, then one POST — or nothing, when the guard says
        no or this is a dry run. Raises NeedsReauth, TokenUnavailable or _QuotaUsedUp; API
        failures (of the lookup or the push) come back in the Result."""
        body = payload.sign_up_body(contact, settings.list_id)
        try:
            verdict = None
            if contact.email_opt_in is False or consent.needs_lookup(contact.email_opt_in, settings):
                found = None if contact.email_opt_in is False else self._call(settings, contact, lambda c: c.find_contact(contact.email))
                verdict = consent.decide(found, contact.email_opt_in, settings.restore_deleted)
                if not verdict.push:
                    return Result("skipped", outcome=verdict.outcome)
            if settings.dry_run:
                predicted = "would update" if verdict and verdict.exists else "would create"
                return Result("dry_run", outcome=f"{predicted}: POST /contacts/sign_up_form {json.dumps(body)}")
            answer = self._call(settings, contact, lambda c: c.sign_up(body))
        except api_client.ApiError as e:
            return Result("failed", error=e)
        return Result("created" if answer.created else "updated", answer.contact_id)

    def _call(self, settings: config.Settings, contact, request):
        """Our turn, a token, one request; on a 401 one refresh (or another process's new token)
        and one more try. Every call counts against the rate governor and the day's quota."""
        token = self.tokens.access_token(settings)
        api_client.session()  # made (and requests imported) before our turn: the turn is when we send
        self._turn(settings)
        try:
            return self._throttle_aware(settings, request, token)
        except api_client.ApiError as e:
            if e.status != 401:
                raise
            log.info("client %s: Constant Contact rejected the access token (401); refreshing it and trying again", contact.client_id)
            token = self.tokens.after_unauthorized(settings, token)
            self._turn(settings)
            return self._throttle_aware(settings, request, token)

    def _throttle_aware(self, settings: config.Settings, request, token: str):
        try:
            return request(api_client.CtctClient(settings.api_base_url, token))
        except api_client.ApiError as e:
            if e.status == 429 and e.error_key != "quota_exceeded":
                # our sends still arrived too close: every process spaces them wider for a while
                self.governor_for(settings).throttled()
                try:
                    self.outbox.bump_counter(THROTTLED)  # for `status`
                except Exception:  # a counter is not worth a failed send (the outbox may be unwritable)
                    log.debug("could not count a throttled answer", exc_info=True)
            raise

    def _turn(self, settings: config.Settings) -> None:
        if self.governor_for(settings).wait_turn() is None:
            raise _QuotaUsedUp()

    # --- a durable row ---
    def work_row(self, row) -> Pause | None:
        # the signature is taken *before* the config is read: taken after, a fix landing in between
        # (another thread's reading, a write just completed) would be "seen" and never lift the pause
        seen = self.signature()
        loaded = self.watcher.current()
        if loaded.status != config.ACTIVE:
            return self._hold(row, Pause(f"the config ({loaded.status})", changed=lambda: self.signature() != seen))
        contact = payload.Contact(row.client_id, row.contact["email"], row.contact.get("fields", {}), row.contact.get("email_opt_in"))
        who = f"client {payload.shown(row.client_id)} ({payload.mask_email(contact.email)})"
        try:
            result = self.send(contact, loaded.settings)
        except NeedsReauth:
            return self._hold(row, self._pause_until_changed("Constant Contact needs re-authorisation"))
        except TokenUnavailable as e:
            return self._retry(row, who, str(e), None)
        except _QuotaUsedUp:
            return self._quota(row, "the daily quota counted here is used up")
        if result.status in ("skipped", "dry_run"):
            self.outbox.finished(row.id, result.status, result.outcome)  # exact, for `status --client`
            # the log gets the same payload with the email masked, as every log line does
            log.info("%s %s (%s)", who, result.outcome.replace(contact.email, payload.mask_email(contact.email)), row.event)
            return None
        if result.error is None:
            self._said.pop("forbidden", None)  # privileges work (again): a new 403 is news
            self.outbox.delivered(row.id, result.contact_id, result.status)
            log.info("%s %s contact %s in list %s (%s)", who, result.status, result.contact_id, loaded.settings.list_id, row.event)
            return None
        e = result.error
        decision = retry_policy.classify(e.status, e.error_key)
        if decision.action == retry_policy.QUOTA:
            return self._quota(row, f"Constant Contact answered 429 {e.error_key}")
        if decision.action == retry_policy.RETRY:  # a failed lookup too: the push never goes out unguarded
            return self._retry(row, who, str(e), e.retry_after)
        if decision.action == retry_policy.AUTH:  # a freshly refreshed token was refused too
            log.error("%s: Constant Contact refuses even a freshly refreshed token (%s). Fix: %s", who, e, api_client.FIXES[401])
            return self._hold(row, self._pause_until_changed("a refused access token"), str(e))
        if decision.action == retry_policy.FORBIDDEN:
            return self._forbidden(row, e)
        self.outbox.dead(row.id, str(e))
        log.error("%s not sent, given up: Constant Contact answered %s.%s", who, e, f" Fix: {e.fix}" if e.fix else "")
        return None

    def _retry(self, row, who: str, error: str, retry_after: str | None) -> None:
        now = self.clock()
        settings = self.watcher.current().settings
        max_age = settings.max_age_hours * 3600 if settings else retry_policy.DEFAULT_MAX_AGE
        if retry_policy.expired(row.created_at, now, max_age):
            self.outbox.dead(row.id, f"gave up after {max_age / 3600:g} h; last error: {error}")
            log.error("%s not sent, given up after %g h of failures; last error: %s (`remixcrm-ctct retry --dead` sends it again)", who, max_age / 3600, error)
            return None
        when = retry_policy.next_attempt_at(now, row.attempts, retry_policy.retry_after_seconds(retry_after, now))
        self.outbox.retry_later(row.id, when, error)
        log.warning("%s not sent yet: %s; attempt %d, next in %.0f s", who, error, row.attempts, when - now)
        return None

    def _forbidden(self, row, e: api_client.ApiError) -> Pause:
        """403: missing scope or privilege, or a deactivated app. Not this row's fault, and no
        other request would fare better: pause (the row stays pending, its attempt uncounted)."""
        return self._hold(row, self._forbidden_pause(e), str(e))

    def _forbidden_pause(self, e: api_client.ApiError) -> Pause:
        """Until the config or tokens change, or, as privileges can be fixed in Constant Contact's
        own UI, until the recheck time."""
        recheck = retry_policy.FORBIDDEN_RECHECK
        marker = object()
        if self._said.setdefault("forbidden", marker) is marker:
            log.error("constant contact refuses our requests (%s): all sending is paused, nothing is dropped; "
                      "it resumes when the config or the tokens change, or tries again in %d min. Fix: %s",
                      e, recheck // 60, api_client.FIXES[403])
        else:
            log.info("constant contact still refuses our requests (%s); sending stays paused", e)
        seen = self.signature()
        return Pause("Constant Contact's 403 (missing scope or privilege)", until=self.clock() + recheck,
                     changed=lambda: self.signature() != seen)

    def _quota(self, row, why: str) -> Pause:
        until = retry_policy.next_utc_midnight(self.clock())
        self.outbox.set_meta(QUOTA_KEY, repr(until))  # every process on this machine stops, not just us
        if not self._quota_said:
            self._quota_said = True
            log.warning("%s: all sending to Constant Contact is paused until 00:00 UTC; nothing is dropped", why)
        pause = Pause("the daily quota", until=until)
        self.pause(pause)
        self.outbox.retry_later(row.id, until, None, count_attempt=False)
        return pause

    def _hold(self, row, pause: Pause, error: str | None = None) -> Pause:
        """Pause this process's sending *first*, then hand the row back: the other way round,
        another worker could take the row in between and meet the same wall again."""
        self.pause(pause)
        self.outbox.retry_later(row.id, self.clock(), error, count_attempt=False)
        return pause

    def quota_pause(self) -> Pause | None:
        """The shared quota pause, if one is in force (set by any process)."""
        raw = self.outbox.get_meta(QUOTA_KEY)
        if raw is None or float(raw) <= self.clock():
            return None
        return Pause("the daily quota", until=float(raw))

    def _pause_until_changed(self, reason: str) -> Pause:
        seen = self.signature()
        return Pause(reason, changed=lambda: self.signature() != seen)

    # --- the in-memory fallback (the outbox could not be written) ---
    def work_memory(self, item) -> Pause | float | None:
        """One event of the memory lane (``memory_lane.MemoryEvent``), decided as a row would be;
        its fate goes back to the lane: None when finished (sent, skipped or given up), an epoch
        time to try again, or a Pause (held back without counting the attempt). Needs no disk:
        the governor and the token manager fall back to this process's memory."""
        record = item.record
        contact = payload.Contact(str(record["client_id"]), record["email"], record.get("fields", {}),
                                  record.get("email_opt_in"))
        who = f"client {payload.shown(contact.client_id)} ({payload.mask_email(contact.email)}, kept in memory)"
        loaded = self.watcher.current()
        if loaded.status != config.ACTIVE:
            return self._memory_pause(self._pause_until_changed(f"the config ({loaded.status})"))
        try:
            result = self.send(contact, loaded.settings)
        except NeedsReauth:
            return self._memory_pause(self._pause_until_changed("Constant Contact needs re-authorisation"))
        except (TokenUnavailable, OSError) as e:  # OSError: the token store's disk
            return self._memory_retry(item, who, str(e), None)
        except _QuotaUsedUp:
            return self._memory_pause(Pause("the daily quota", until=retry_policy.next_utc_midnight(self.clock())))
        if result.status in ("skipped", "dry_run"):
            outcome = result.outcome.replace(contact.email, payload.mask_email(contact.email))
            log.info("%s %s (%s)", who, outcome, record["event"])
            return None
        if result.error is None:
            log.info("%s %s contact %s in list %s (%s)", who, result.status, result.contact_id, loaded.settings.list_id,
                     record["event"])
            return None
        e = result.error
        decision = retry_policy.classify(e.status, e.error_key)
        if decision.action == retry_policy.QUOTA:
            return self._memory_pause(Pause("the daily quota", until=retry_policy.next_utc_midnight(self.clock())))
        if decision.action == retry_policy.RETRY:
            return self._memory_retry(item, who, str(e), e.retry_after)
        if decision.action == retry_policy.AUTH:
            log.error("%s: Constant Contact refuses even a freshly refreshed token (%s). Fix: %s",
                      who, e, api_client.FIXES[401])
            return self._memory_pause(self._pause_until_changed("a refused access token"))
        if decision.action == retry_policy.FORBIDDEN:
            return self._memory_pause(self._forbidden_pause(e))
        log.error("%s not sent, given up: Constant Contact answered %s.%s", who, e, f" Fix: {e.fix}" if e.fix else "")
        return None

    def _memory_pause(self, pause: Pause) -> Pause:
        self.pause(pause)  # first: another worker must not take the event again meanwhile
        return pause

    def _memory_retry(self, item, who: str, error: str, retry_after: str | None) -> float | None:
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


class _QuotaUsedUp(Exception):
    pass
