"""The one-by-one lane: the consent guard's lookup if needed, then the sign-up POST (each through
:mod:`.api_calls`: our turn with the rate governor, a token, one refresh on a 401)."""

import json
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from .. import config, consent, fieldmap, payload
from ..ctct import client as api_client
from . import list_changes
from .api_calls import ApiCalls, QuotaUsedUp
from .custom_fields import CustomFields
from .suppression import SuppressionCheck

__all__ = ["Result", "SignUp", "QuotaUsedUp"]

log = logging.getLogger("remixcrm_plugin_ctct")

UNKNOWN_SKIPPED = 'skipped: consent unknown (unknown_consent = "skip")'


class Result(NamedTuple):
    status: str  # "created", "updated", "skipped", "dry_run" or "failed"
    contact_id: str | None = None
    error: api_client.ApiError | None = None
    outcome: str | None = None  # why skipped, or what a dry run would have sent
    lists: tuple[str, ...] = ()  # the lists joined


def sleep(seconds: float) -> bool:
    """The one-by-one lane's wait between a list removal's polls (it is never asked to stop early)."""
    time.sleep(seconds)
    return False


def warn_once(said: set[str], what: str, text: str, *args: object) -> None:
    """A WARNING the first time ``what`` is said into ``said`` (a lane's own: one a process)."""
    if what not in said:
        said.add(what)
        log.warning(text, *args)


class SignUp:
    def __init__(
        self,
        calls: ApiCalls,
        suppression: SuppressionCheck,
        custom_fields: CustomFields | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.calls, self.suppression = calls, suppression
        self.custom_fields = custom_fields or CustomFields()
        self.clock = clock
        self._said: set[str] = set()

    def send(self, contact: payload.Contact, settings: config.Settings, consent_at: float | None = None) -> Result:
        """The consent guard's lookup if needed, then one POST — or nothing, when the guard says
        no or this is a dry run. ``consent_at``: when the event with ``email_opt_in = True``
        happened. Raises NeedsReauth, TokenUnavailable or QuotaUsedUp; API failures (of the
        lookup or the push) come back in the Result."""
        if contact.email_opt_in is None and settings.unknown_consent == "skip":
            return Result("skipped", outcome=UNKNOWN_SKIPPED)
        joins, leaves = list_changes.targets(contact.fields, settings)
        who = f"client {payload.shown(contact.client_id)}"
        call = self.calls.caller(settings, who)
        try:
            if contact.email_opt_in is not False:
                # unsubscribed or deleted in Constant Contact, as the mirror knows: no lane sends
                # them (sign_up_form would re-subscribe or restore), and knowing costs no lookup;
                # except someone who opted in again in RemixCRM *after* unsubscribing
                given = consent_at if contact.email_opt_in is True else None
                why = self.suppression.why_not([contact.email], settings, call, given, self.clock()).get(
                    contact.email.lower()
                )
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
            body = payload.sign_up_body(contact, joins, self._custom_ids(contact, settings, call, who))
            if settings.dry_run:
                predicted = "would update" if verdict and verdict.exists else "would create"
                then = f", then leave list(s) {list_changes.shown(leaves)}" if leaves else ""
                return Result("dry_run", outcome=f"{predicted}: POST /contacts/sign_up_form {json.dumps(body)}{then}")
            answer = call(lambda c: c.sign_up(body))
            status = "created" if answer.created else "updated"
            outcome = None
            if leaves and answer.contact_id:
                removal = list_changes.Removal(sleep, self.clock, patience=list_changes.SIGN_UP_PATIENCE)
                refused = removal.remove([answer.contact_id], leaves, call)
                outcome = f"{status}; {refused}" if refused else f"{status}; left list(s) {list_changes.shown(leaves)}"
        except api_client.ApiError as e:
            return Result("failed", error=e)
        return Result(status, answer.contact_id, outcome=outcome, lists=tuple(joins))

    def _custom_ids(self, contact: payload.Contact, settings: config.Settings, call, who: str) -> dict[str, str]:
        """{name: custom_field_id} of the contact's mapped custom fields Constant Contact has."""
        names = list(fieldmap.custom_values(contact.fields))
        if len(names) > fieldmap.SIGN_UP_CUSTOM_MAX:
            warn_once(
                self._said,
                "over",
                "%s has %d custom fields mapped; sign_up_form takes %d per contact: the first %d are sent "
                "(map fewer in [email_marketing.constant_contact.fields])",
                who,
                len(names),
                fieldmap.SIGN_UP_CUSTOM_MAX,
                fieldmap.SIGN_UP_CUSTOM_MAX,
            )
        found = self.custom_fields.resolve(names, settings, call, who)
        return {name: field.custom_field_id for name, field in found.items()}
