"""The one-by-one lane: the consent guard's lookup if needed, then the sign-up POST (each through
:mod:`.api_calls`: our turn with the rate governor, a token, one refresh on a 401)."""

import json
import logging
from typing import NamedTuple

from .. import config, consent, payload
from ..ctct import client as api_client
from .api_calls import ApiCalls, QuotaUsedUp
from .suppression import SuppressionCheck

__all__ = ["Result", "SignUp", "QuotaUsedUp"]

log = logging.getLogger("remixcrm_plugin_ctct")

UNKNOWN_SKIPPED = 'skipped: consent unknown (unknown_consent = "skip")'


class Result(NamedTuple):
    status: str  # "created", "updated", "skipped", "dry_run" or "failed"
    contact_id: str | None = None
    error: api_client.ApiError | None = None
    outcome: str | None = None  # why skipped, or what a dry run would have sent


class SignUp:
    def __init__(self, calls: ApiCalls, suppression: SuppressionCheck):
        self.calls, self.suppression = calls, suppression

    def send(self, contact: payload.Contact, settings: config.Settings, consent_at: float | None = None) -> Result:
        """The consent guard's lookup if needed, then one POST — or nothing, when the guard says
        no or this is a dry run. ``consent_at``: when the event with ``email_opt_in = True``
        happened. Raises NeedsReauth, TokenUnavailable or QuotaUsedUp; API failures (of the
        lookup or the push) come back in the Result."""
        if contact.email_opt_in is None and settings.unknown_consent == "skip":
            return Result("skipped", outcome=UNKNOWN_SKIPPED)
        body = payload.sign_up_body(contact, settings.list_id)
        who = f"client {payload.shown(contact.client_id)}"
        call = self.calls.caller(settings, who)
        try:
            if contact.email_opt_in is not False:
                # unsubscribed or deleted in Constant Contact, as the mirror knows: no lane sends
                # them (sign_up_form would re-subscribe or restore), and knowing costs no lookup;
                # except someone who opted in again in RemixCRM *after* unsubscribing
                given = consent_at if contact.email_opt_in is True else None
                why = self.suppression.why_not([contact.email], settings, call, given).get(contact.email.lower())
                if why is not None:
                    return Result("skipped", outcome=why)
            verdict = None
            if contact.email_opt_in is False or consent.needs_lookup(contact.email_opt_in, settings):
                found = None
                if contact.email_opt_in is not False:
                    found = call(lambda c: c.find_contact(contact.email))
                verdict = consent.decide(found, contact.email_opt_in, settings.restore_deleted)
                if not verdict.push:
                    return Result("skipped", outcome=verdict.outcome)
            if settings.dry_run:
                predicted = "would update" if verdict and verdict.exists else "would create"
                return Result("dry_run", outcome=f"{predicted}: POST /contacts/sign_up_form {json.dumps(body)}")
            answer = call(lambda c: c.sign_up(body))
        except api_client.ApiError as e:
            return Result("failed", error=e)
        return Result("created" if answer.created else "updated", answer.contact_id)
