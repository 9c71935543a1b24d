"""One request to Constant Contact in our turn: a rate-governor slot (which also counts the day's
quota), a token from the token manager, and on a 401 one refresh and one more try. Every lane
(sign-up, import, activity polls, the suppression mirror's pages) sends through here."""

import logging
from collections.abc import Callable
from typing import TypeVar

from .. import config
from ..ctct import client as api_client
from ..ctct.token_manager import TokenManager
from ..store.interfaces import Outbox
from ..store.outbox import THROTTLED
from .governors import Governors

log = logging.getLogger("remixcrm_plugin_ctct")

T = TypeVar("T")


class QuotaUsedUp(Exception):
    """The day's quota counted on this machine is used up."""


class ApiCalls:
    def __init__(self, outbox: Outbox, tokens: TokenManager, governors: Governors):
        self.outbox, self.tokens, self.governors = outbox, tokens, governors

    def call(self, settings: config.Settings, who: str, request: Callable[[api_client.CtctClient], T]) -> T:
        """Our turn, a token, one request; on a 401 one refresh (or another process's new token)
        and one more try. Raises ApiError, NeedsReauth, TokenUnavailable or QuotaUsedUp."""
        token = self.tokens.access_token(settings)
        api_client.session()  # made (and requests imported) before our turn: the turn is when we send
        self._turn(settings)
        try:
            return self._throttle_aware(settings, request, token)
        except api_client.ApiError as e:
            if e.status != 401:
                raise
            log.info("%s: Constant Contact rejected the access token (401); refreshing it and trying again", who)
            token = self.tokens.after_unauthorized(settings, token)
            self._turn(settings)
            return self._throttle_aware(settings, request, token)

    def caller(self, settings: config.Settings, who: str) -> Callable[[Callable[[api_client.CtctClient], T]], T]:
        """:meth:`call` with the settings and the log name bound (for code that only sends)."""
        return lambda request: self.call(settings, who, request)

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
