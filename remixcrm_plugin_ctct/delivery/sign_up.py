"""The requests of one send: the consent guard's lookup if needed, then the sign-up POST, each
in our turn with the rate governor, with a token from the token manager (one refresh on a 401)."""

import json
import logging
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from .. import config, consent, payload
from ..ctct import client as api_client
from ..ctct.token_manager import TokenManager
from ..store.interfaces import Outbox
from ..store.outbox import THROTTLED
from .governors import Governors

log = logging.getLogger("remixcrm_plugin_ctct")

T = TypeVar("T")


class Result(NamedTuple):
    status: str  # "created", "updated", "skipped", "dry_run" or "failed"
    contact_id: str | None = None
    error: api_client.ApiError | None = None
    outcome: str | None = None  # why skipped, or what a dry run would have sent


class QuotaUsedUp(Exception):
    """The day's quota counted on this machine is used up."""


class SignUp:
    def __init__(self, outbox: Outbox, tokens: TokenManager, governors: Governors):
        self.outbox, self.tokens, self.governors = outbox, tokens, governors

    def send(self, contact: payload.Contact, settings: config.Settings) -> Result:
        """The consent guard's lookup if needed, then one POST — or nothing, when the guard says
        no or this is a dry run. Raises NeedsReauth, TokenUnavailable or QuotaUsedUp; API
        failures (of the lookup or the push) come back in the Result."""
        body = payload.sign_up_body(contact, settings.list_id)
        try:
            verdict = None
            if contact.email_opt_in is False or consent.needs_lookup(contact.email_opt_in, settings):
                found = None
                if contact.email_opt_in is not False:
                    found = self._call(settings, contact, lambda c: c.find_contact(contact.email))
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

    def _call(
        self, settings: config.Settings, contact: payload.Contact, request: Callable[[api_client.CtctClient], T]
    ) -> T:
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
            log.info(
                "client %s: Constant Contact rejected the access token (401); refreshing it and trying again",
                contact.client_id,
            )
            token = self.tokens.after_unauthorized(settings, token)
            self._turn(settings)
            return self._throttle_aware(settings, request, token)

    def _throttle_aware(
        self, settings: config.Settings, request: Callable[[api_client.CtctClient], T], token: str
    ) -> T:
        try:
            return request(api_client.CtctClient(settings.api_base_url, token))
        except api_client.ApiError as e:
            if e.status == 429 and e.error_key != "quota_exceeded":
                # our sends still arrived too close: every process spaces them wider for a while
                self.governors.for_settings(settings).throttled()
                try:
                    self.outbox.bump_counter(THROTTLED)  # for `status`
                except Exception:  # a counter is not worth a failed send (the outbox may be unwritable)
                    log.debug("could not count a throttled answer", exc_info=True)
            raise

    def _turn(self, settings: config.Settings) -> None:
        if self.governors.for_settings(settings).wait_turn() is None:
            raise QuotaUsedUp()
