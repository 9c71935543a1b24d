"""One send to Constant Contact, and what its outcome does to the outbox row.

Runs on a worker thread: config (still Constant Contact? which list?) → :mod:`.sign_up`
(governor, token manager, Constant Contact client) → the outcome. The decisions (retry when,
give up when, pause why) come from :mod:`.retry_policy`. A row's fate is written to the
outbox here, except a pause: that is returned, and the worker holds it before it hands the
row back.
"""

import logging
import time
from collections.abc import Callable

from .. import config, payload
from ..ctct import client as api_client
from ..ctct.token_manager import NeedsReauth, TokenManager, TokenUnavailable
from ..store import lanes
from ..store.interfaces import Outbox, Row, StoreUnavailable
from . import imports, retry_policy
from .api_calls import ApiCalls
from .custom_fields import CustomFields
from .governors import Governors
from .importing import IMPORTED, Importing
from .pauses import Pause
from .send_memory import MemorySends
from .sign_up import QuotaUsedUp, Result, SignUp
from .suppression import Mirror, SuppressionCheck
from .unrecorded import Unrecorded

log = logging.getLogger("remixcrm_plugin_ctct")

QUOTA_KEY = "quota_paused_until"


class Delivery(MemorySends):
    """Bound to this process's outbox, token manager, governors and config watcher. Events kept
    in memory (the outbox could not be written) are sent by :class:`.send_memory.MemorySends`."""

    def __init__(
        self,
        outbox: Outbox,
        tokens: TokenManager,
        governors: Governors,
        watcher: config.ConfigWatcher,
        clock: Callable[[], float] = time.time,
        mirror: Mirror | None = None,
    ):
        self.outbox, self.tokens, self.governors, self.watcher = outbox, tokens, governors, watcher
        self.clock = clock
        self.calls = ApiCalls(outbox, tokens, governors)
        suppression = SuppressionCheck(mirror)
        custom_fields = CustomFields()  # one per process and API: both lanes resolve names through it
        self.sign_up = SignUp(self.calls, suppression, custom_fields, clock)
        self.importing = Importing(self.calls, suppression, clock, custom_fields)
        self._quota_said = False
        self._said: dict = {}  # causes already logged as ERROR (setdefault: one thread wins)
        # pushes made whose outcome the outbox could not record yet: recorded later, never sent again
        self.unrecorded = Unrecorded()

    def signature(self) -> tuple:
        """What, when changed, may have fixed a pause: the config file, the token store."""
        return self.watcher.signature(), self.tokens.store.signature()

    # --- a durable row ---
    def work_row(self, row: Row) -> Pause | None:
        """Send one leased row and record its fate in the outbox; or return a Pause, leaving the
        row leased: the worker holds the pause first, then hands the row back."""
        # the signature is taken *before* the config is read: taken after, a fix landing in between
        # (another thread's reading, a write just completed) would be "seen" and never lift the pause
        seen = self.signature()
        loaded = self.watcher.current()
        settings = loaded.settings
        if loaded.status != config.ACTIVE or settings is None:
            return self._config_pause(loaded.status, seen)
        contact = _contact(row)
        if lanes.lane_of(contact.email_opt_in, row.event, settings.unknown_consent) == lanes.IMPORT:
            # its newest state moved it to the import lane after the claim (or unknown_consent changed)
            self.outbox.retry_later(row.id, self.clock(), None, count_attempt=False)
            return None
        who = f"client {payload.shown(row.client_id)} ({payload.mask_email(contact.email)})"
        try:
            result = self.sign_up.send(contact, settings, consent_at=row.created_at)
        except NeedsReauth:
            return self._pause_until_changed("Constant Contact needs re-authorisation", seen)
        except (TokenUnavailable, StoreUnavailable) as e:  # (the shared store holds the tokens)
            self._retry([row], who, str(e), None)
            return None
        except QuotaUsedUp:
            return self._quota("the daily quota counted here is used up")
        return self._apply(row, who, contact, result, settings, seen)

    def import_policy(self) -> tuple[str, float] | None:
        """(unknown_consent, import_window_seconds) while the config is active, else None."""
        settings = self.watcher.current().settings
        return None if settings is None else (settings.unknown_consent, settings.import_window_seconds)

    def work_import(self, rows: list[Row], wait: Callable[[float], bool]) -> tuple[Pause | None, list[Row]]:
        """Send leased rows of the import lane together and record each one's fate; returns a
        Pause (or None) and the rows left leased, which the worker hands back after holding it."""
        seen = self.signature()
        loaded = self.watcher.current()
        settings = loaded.settings
        if loaded.status != config.ACTIVE or settings is None:
            return self._config_pause(loaded.status, seen), rows
        mine, contacts = [], []
        for row in rows:
            contact = _contact(row)
            if lanes.lane_of(contact.email_opt_in, row.event, settings.unknown_consent) == lanes.IMPORT:
                mine.append(row)
                contacts.append(contact)
            else:  # a newer event gave or refused consent after the claim: the one-by-one lane's now
                self.outbox.retry_later(row.id, self.clock(), None, count_attempt=False)
        who = f"import of {len(mine)} contact(s)"
        try:
            results = self.importing.send(contacts, settings, wait) if mine else []
        except NeedsReauth:
            return self._pause_until_changed("Constant Contact needs re-authorisation", seen), mine
        except (TokenUnavailable, StoreUnavailable) as e:  # as for one push: retried, no traceback
            self._retry(mine, who, str(e), None)
            return None, []
        except QuotaUsedUp:
            return self._quota("the daily quota counted here is used up"), mine
        except imports.Stopped:
            return None, mine  # stopping: handed back, sent again by the next run
        retry = [(row, r.error) for row, r in zip(mine, results, strict=True) if r.error and _transient(r)]
        if retry:  # failed together (the API is down, the activity failed): one line, one time
            self._retry([row for row, _ in retry], who, str(retry[0][1]), retry[0][1].retry_after)
        # the contacts the import took are marked first, together (one commit, not one each): a
        # later row's failure, even a store error, cannot leave them to be imported again
        imported = [(row, r) for row, r in zip(mine, results, strict=True) if r.error is None and r.status == IMPORTED]
        if imported:
            self._said.pop("forbidden", None)  # privileges work (again): a new 403 is news
            self._delivered([(row.id, r.contact_id, r.outcome or r.status) for row, r in imported], who, many=True)
        taken = {row.id for row, _ in imported}
        for n, (row, contact, result) in enumerate(zip(mine, contacts, results, strict=True)):
            if _transient(result) or row.id in taken:
                continue
            named = f"client {payload.shown(row.client_id)} ({payload.mask_email(contact.email)})"
            pause = self._apply(row, named, contact, result, settings, seen)
            if pause is not None:
                left = zip(mine[n:], results[n:], strict=True)
                return pause, [r for r, res in left if not _transient(res) and r.id not in taken]
        return None, []

    def _apply(
        self,
        row: Row,
        who: str,
        contact: payload.Contact,
        result: Result,
        settings: config.Settings,
        before: tuple,
    ) -> Pause | None:
        """Record the fate of ``row`` as ``result`` says; or return a Pause, leaving the row leased
        (``before``: the signature taken before the config was read for the send)."""
        if result.status in ("skipped", "dry_run"):
            outcome = result.outcome or ""
            self.outbox.finished(row.id, result.status, outcome)  # exact, for `status --client`
            # the log gets the same payload with the email masked, as every log line does
            log.info("%s %s (%s)", who, outcome.replace(contact.email, payload.mask_email(contact.email)), row.event)
            return None
        if result.error is None:
            self._said.pop("forbidden", None)  # privileges work (again): a new 403 is news
            self._delivered([(row.id, result.contact_id, result.outcome or result.status)], who)
            if result.status != IMPORTED:  # an import says it once for all its contacts
                log.info(
                    "%s %s contact %s in list %s (%s)",
                    who,
                    result.outcome or result.status,
                    result.contact_id,
                    ", ".join(result.lists) or settings.list_id,
                    row.event,
                )
            return None
        err = result.error
        decision = retry_policy.classify(err.status, err.error_key)
        if decision.action == retry_policy.QUOTA:
            return self._quota(f"Constant Contact answered 429 {err.error_key}")
        if decision.action == retry_policy.RETRY:  # a failed lookup too: the push never goes out unguarded
            self._retry([row], who, str(err), err.retry_after)
            return None
        if decision.action == retry_policy.AUTH:  # a freshly refreshed token was refused too
            log.error(
                "%s: Constant Contact refuses even a freshly refreshed token (%s). Fix: %s",
                who,
                err,
                api_client.FIXES[401],
            )
            return self._pause_until_changed("a refused access token", before, str(err))
        if decision.action == retry_policy.FORBIDDEN:
            return self._forbidden_pause(err, before)
        self.outbox.dead(row.id, str(err))
        log.error(
            "%s not sent, given up: Constant Contact answered %s.%s", who, err, f" Fix: {err.fix}" if err.fix else ""
        )
        return None

    def _delivered(self, done: list[tuple[int, str | None, str]], who: str, many: bool = False) -> None:
        """Mark rows Constant Contact took as delivered. The push happened whatever the outbox
        says now: if it cannot record that (a full disk), the rows stay leased to us and are
        recorded later (:mod:`.unrecorded`), never sent again."""
        try:
            if many:
                self.outbox.delivered_many(done)
            else:
                self.outbox.delivered(*done[0])
        except Exception as e:
            self.unrecorded.add(done)
            log.error(
                "%s reached Constant Contact, but the outbox could not record it (%s); this process records it as "
                "soon as the outbox takes writes again, without sending it again (fix the disk: full or read-only?)",
                who,
                e,
            )

    def _retry(self, rows: list[Row], who: str, error: str, retry_after: str | None) -> None:
        """Back to pending, all at one time (so rows that failed together go out together again),
        or dead once they have failed for longer than max_age_hours."""
        now = self.clock()
        settings = self.watcher.current().settings
        max_age = settings.max_age_hours * 3600 if settings else retry_policy.DEFAULT_MAX_AGE
        attempts = max(row.attempts for row in rows)
        when = retry_policy.next_attempt_at(now, attempts, retry_policy.retry_after_seconds(retry_after, now))
        expired = [row for row in rows if retry_policy.expired(row.created_at, now, max_age)]
        gone = {row.id for row in expired}
        for row in expired:
            self.outbox.dead(row.id, f"gave up after {max_age / 3600:g} h; last error: {error}")
        if expired:
            log.error(
                "%s: %d event(s) not sent, given up after %g h of failures; last error: %s "
                "(`remixcrm-ctct retry --dead` sends them again)",
                who,
                len(expired),
                max_age / 3600,
                error,
            )
        waiting = [row for row in rows if row.id not in gone]
        for row in waiting:
            self.outbox.retry_later(row.id, when, error)
        if waiting:
            log.warning("%s not sent yet: %s; attempt %d, next in %.0f s", who, error, attempts, when - now)

    def _forbidden_pause(self, e: api_client.ApiError, before: tuple) -> Pause:
        """403: missing scope or privilege, or a deactivated app. Not the event's fault, and no
        other request would fare better: pause (the event stays pending, its attempt uncounted)
        until the config or tokens change, or, as privileges can be fixed in Constant Contact's
        own UI, until the recheck time."""
        recheck = retry_policy.FORBIDDEN_RECHECK
        marker = object()
        if self._said.setdefault("forbidden", marker) is marker:
            log.error(
                "constant contact refuses our requests (%s): all sending is paused, nothing is dropped; "
                "it resumes when the config or the tokens change, or tries again in %d min. Fix: %s",
                e,
                recheck // 60,
                api_client.FIXES[403],
            )
        else:
            log.info("constant contact still refuses our requests (%s); sending stays paused", e)
        seen = self._seen_after_send(before)
        return Pause(
            "Constant Contact's 403 (missing scope or privilege)",
            until=self.clock() + recheck,
            changed=lambda: self.signature() != seen,
            error=str(e),
        )

    def _quota(self, why: str) -> Pause:
        """Until 00:00 UTC, for every process on this machine (the row waits as long)."""
        until = retry_policy.next_utc_midnight(self.clock())
        self.outbox.set_meta(QUOTA_KEY, repr(until))  # every process on this machine stops, not just us
        if not self._quota_said:
            self._quota_said = True
            log.warning("%s: all sending to Constant Contact is paused until 00:00 UTC; nothing is dropped", why)
        return Pause("the daily quota", until=until)

    def shared_pause(self) -> Pause | None:
        """The shared quota pause, if one is in force (set by any process)."""
        raw = self.outbox.get_meta(QUOTA_KEY)
        if raw is None or float(raw) <= self.clock():
            return None
        return Pause("the daily quota", until=float(raw))

    def _pause_until_changed(self, reason: str, before: tuple, error: str | None = None) -> Pause:
        seen = self._seen_after_send(before)
        return Pause(reason, changed=lambda: self.signature() != seen, error=error)

    def _seen_after_send(self, before: tuple) -> tuple:
        """The signature a pause caused by a send waits to change: the config's from ``before`` the
        send (a fix landing during the send, or read by another thread meanwhile, which
        signature() waits for, must lift the pause); the tokens' from now (the send itself may
        have rewritten them: a refresh, needs_reauth)."""
        return before[0], self.tokens.store.signature()


def _contact(row: Row) -> payload.Contact:
    return payload.Contact(
        row.client_id, row.contact["email"], row.contact.get("fields", {}), row.contact.get("email_opt_in")
    )


def _transient(result: Result) -> bool:
    """A failure that time fixes (the API was down, the activity failed): the row is tried again."""
    err = result.error
    return err is not None and retry_policy.classify(err.status, err.error_key).action == retry_policy.RETRY
