"""Never opt anyone back in: the consent guard's decision, as pure functions.

Constant Contact's ``sign_up_form`` sets an existing contact's permission to ``explicit`` "even
if a contact is currently unsubscribed", and restores a deleted one. Its terms call opting someone
back in without their own action a serious violation. So, unless RemixCRM recorded the person's
own consent (``email_opt_in = True``), we look the contact up first (``GET /contacts?email=…&
status=all``) and push only when that cannot re-subscribe or restore anyone.
"""

from typing import NamedTuple

from .config import Settings

UNSUBSCRIBED = "skipped: unsubscribed"
DELETED = "skipped: deleted in Constant Contact"
DECLINED = "skipped: declined marketing email"


class Verdict(NamedTuple):
    push: bool
    outcome: str | None  # why not, when push is False
    exists: bool | None  # None: not looked up


def needs_lookup(email_opt_in: bool | None, settings: Settings) -> bool:
    """Explicit consent goes straight through; everything else is looked up first (and a dry
    run always looks, to predict created vs updated: lookups are read-only)."""
    return settings.dry_run or (settings.consent_guard and email_opt_in is not True)


def decide(found: dict | None, email_opt_in: bool | None, restore_deleted: bool) -> Verdict:
    """``found``: the contact as ``GET /contacts`` returns it (email_address an object), or None."""
    if email_opt_in is False:
        return Verdict(False, DECLINED, found is not None if found is not None else None)
    if found is None:
        return Verdict(True, None, False)
    if email_opt_in is True:  # the person's own consent: sign_up_form exists for exactly this
        return Verdict(True, None, True)
    address = found.get("email_address") or {}
    permission = address.get("permission_to_send") if isinstance(address, dict) else None
    if permission == "unsubscribed":
        return Verdict(False, UNSUBSCRIBED, True)
    if found.get("deleted_at") and not restore_deleted:
        return Verdict(False, DELETED, True)
    return Verdict(True, None, True)
