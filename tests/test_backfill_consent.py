"""A backfill's ``email_opt_in = True`` is history (perhaps older than an unsubscribe): it may take
a client into the import, never into ``sign_up_form`` — also once the backfill's row has met a hook
event of the same person (coalesced, handed back, or folded late from an older journal)."""

import pytest
from conftest import add_event

from remixcrm_plugin_ctct.payload import Contact
from remixcrm_plugin_ctct.store import lanes
from remixcrm_plugin_ctct.store.outbox import Outbox

EMAIL = "ada@example.com"


def backfilled(box, at):
    add_event(box, Contact("1", EMAIL, {"first_name": "Ada"}, True), lanes.BACKFILL, now=at)


def edited(box, at, opt_in=None):
    add_event(box, Contact("1", EMAIL, {"first_name": "Augusta"}, opt_in), "client_updated", now=at)


def sign_up_rows(box, now):
    return box.claim_many("me", 10, now=now, lane=lanes.SIGN_UP, unknown_consent="implicit")


def import_rows(box, now):
    return box.claim_many("me", 10, now=now, lane=lanes.IMPORT, unknown_consent="implicit")


def assert_imported_not_signed_up(box, now):
    assert sign_up_rows(box, now) == []
    (row,) = import_rows(box, now)
    assert row.contact.get("email_opt_in") is not True
    assert lanes.lane_of(row.contact.get("email_opt_in"), row.event, "implicit") == lanes.IMPORT
    assert box.take("me", row, now=now).contact.get("email_opt_in") is not True


def test_a_hook_event_coalesced_into_a_pending_backfill_row(tmp_path):
    box = Outbox(tmp_path)
    backfilled(box, 1000.0)
    edited(box, 1001.0)  # the client is edited in RemixCRM while the backfill drains
    assert_imported_not_signed_up(box, 1002.0)


def test_a_backfill_row_handed_back_into_a_pending_hook_row(tmp_path):
    box = Outbox(tmp_path)
    backfilled(box, 1000.0)
    (row,) = import_rows(box, 1000.5)  # the import is in flight…
    edited(box, 1001.0)  # …a hook event makes a new pending row…
    box.retry_later(row.id, 1001.5, "503 the API is down")  # …and the failed import merges into it
    assert_imported_not_signed_up(box, 1002.0)


@pytest.mark.parametrize("delivered", [True, False])
def test_an_older_hook_event_folded_after_the_backfill(tmp_path, delivered):
    box = Outbox(tmp_path)
    backfilled(box, 1000.0)
    (row,) = import_rows(box, 1000.5)
    if delivered:
        box.delivered(row.id, None, "imported")
    edited(box, 999.0)  # another process's journal, folded late: its event is older than the backfill
    if not delivered:
        assert sign_up_rows(box, 1001.0) == []
        box.retry_later(row.id, 1001.5, "503 the API is down")
    assert_imported_not_signed_up(box, 1002.0)


def test_a_fresh_yes_from_remixcrm_still_goes_through_sign_up_form(tmp_path):
    box = Outbox(tmp_path)
    backfilled(box, 1000.0)
    edited(box, 1001.0, opt_in=True)  # the person's own consent, after the backfill
    (row,) = sign_up_rows(box, 1002.0)
    assert row.contact["email_opt_in"] is True and row.event == "client_updated"
