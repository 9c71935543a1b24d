"""From a RemixCRM client record to a ``sign_up_form`` body. Pure functions, no I/O.

The field names and limits are those of ``ContactCreateOrUpdateInput`` in Constant Contact's
own OpenAPI document (``tests/test_payload.py`` checks them against it). Nothing else is sent.
"""

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

log = logging.getLogger("remixcrm_plugin_ctct")

EMAIL_MAX = 50
# body field -> (client key, maxLength in the vendor schema)
TEXT_FIELDS = {
    "first_name": ("first_name", 50),
    "last_name": ("last_name", 50),
    "phone_number": ("phone", 25),
    "company_name": ("company", 50),
    "job_title": ("job_title", 50),
}
# deliberately loose: Constant Contact is the judge of deliverability; we only refuse
# what can never be an address (and would come back as a 400 that no retry fixes)
_BY_HAND = "fix the address in RemixCRM, then add the client to the list in Constant Contact by hand: editing a client fires no hook"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")


class Contact(NamedTuple):
    """A client ready to send: every field stripped, checked and within its limit.

    A NamedTuple rather than a frozen dataclass: one is built per hook call, and the
    dataclass's per-field ``object.__setattr__`` would cost the host microseconds."""

    client_id: str
    email: str
    fields: dict  # body fields except email_address and list_memberships
    email_opt_in: bool | None = None


@dataclass(frozen=True)
class Skipped:
    """A client that will not be sent, and why (already phrased for the log)."""

    client_id: str
    reason: str
    level: int = logging.WARNING


def read(record, key):
    """``record[key]`` for a mapping, ``record.key`` for an object; None when absent."""
    return _getter(record)(key)


def _getter(record):
    if isinstance(record, dict):  # the common case first: a plain dict, no ABC check
        return record.get
    if isinstance(record, Mapping):
        return record.get
    return lambda key: getattr(record, key, None)


def mask_email(email) -> str:
    """``j***@example.com``: enough to recognise in a log, not enough to harvest."""
    if not isinstance(email, str) or "@" not in email:
        return "<no valid email>"
    local, _, domain = email.strip().rpartition("@")
    return f"{local[:1]}***@{domain}"


def contact_from_client(client) -> Contact | Skipped:
    """Validate and normalise a client record; never raises."""
    if client is None:
        return Skipped("?", "the hook was called with client=None; RemixCRM must pass the client record")
    get = _getter(client)
    raw_id = get("id")
    client_id = "?" if raw_id is None else str(raw_id)
    opt_in = get("email_opt_in")
    raw_email = get("email")
    email = raw_email.strip() if isinstance(raw_email, str) else ""
    if opt_in is False and not (email and len(email) <= EMAIL_MAX and _EMAIL.match(email)):
        return Skipped(client_id, declined(client_id), logging.INFO)
    if not email:
        return Skipped(client_id, f"client {client_id} has no email address; not sent ({_BY_HAND})")
    if len(email) > EMAIL_MAX or not _EMAIL.match(email):
        why = f"is longer than {EMAIL_MAX} characters, Constant Contact's limit" if len(email) > EMAIL_MAX else "is not a valid address"
        return Skipped(client_id, f"client {client_id}: email {mask_email(email)} {why}; not sent ({_BY_HAND})")

    fields = {}
    for body_key, (client_key, limit) in TEXT_FIELDS.items():
        value = get(client_key)
        if value is None or isinstance(value, bool):
            continue
        value = str(value).strip()
        if not value:
            continue
        if len(value) > limit:
            log.warning("client %s: %s is %d characters, Constant Contact allows %d; sending it truncated", client_id, client_key, len(value), limit)
            value = value[:limit].rstrip()
        fields[body_key] = value
    return Contact(client_id, email, fields, opt_in if isinstance(opt_in, bool) else None)


def declined(client_id: str) -> str:
    return f"client {client_id} declined marketing email (email_opt_in is False); not sent"


def sign_up_body(contact: Contact, list_id: str) -> dict:
    """The JSON body for ``POST /contacts/sign_up_form``."""
    return {"email_address": contact.email, **contact.fields, "list_memberships": [list_id]}
