"""The suppression mirror lives on disk; a full or read-only disk must not make the import lane
(which has no lookup of its own) revive deleted contacts or touch unsubscribed ones."""

import sqlite3

from remixcrm_plugin_ctct import config
from remixcrm_plugin_ctct.delivery.suppression import SUPPRESSED_DELETED, SUPPRESSED_UNSUBSCRIBED, SuppressionCheck
from remixcrm_plugin_ctct.store.interfaces import Suppression

SETTINGS = config.Settings(list_id="00000000-0000-0000-0000-000000000001")
KNOWN = {
    "gone@example.com": {"email_address": {"address": "gone@example.com"}, "deleted_at": "2024-01-02"},
    "left@example.com": {"email_address": {"address": "left@example.com", "permission_to_send": "unsubscribed"}},
    "fine@example.com": {"email_address": {"address": "fine@example.com", "permission_to_send": "implicit"}},
}


class Lookups:
    """Constant Contact's ``GET /contacts?email=…`` answered from KNOWN; counts the requests."""

    def __init__(self):
        self.asked = []

    def find_contact(self, email):
        self.asked.append(email)
        return KNOWN.get(email.lower())

    def __call__(self, request):
        return request(self)


class FullDisk:
    def refresh(self, call, now=None, max_age=60.0):
        raise sqlite3.OperationalError("database or disk is full")

    def filter(self, emails):
        raise sqlite3.OperationalError("unable to open database file")


class StaleButReadable(FullDisk):
    def filter(self, emails):
        return {e.lower(): Suppression(e.lower(), "deleted", 1.0, None, None) for e in emails if "gone" in e.lower()}


def test_an_unreadable_mirror_falls_back_to_lookups_never_to_sending_unchecked():
    call = Lookups()
    emails = ["Gone@Example.com", "left@example.com", "fine@example.com", "new@example.com"]
    found = SuppressionCheck(FullDisk()).why_not(emails, SETTINGS, call)
    assert found == {"gone@example.com": SUPPRESSED_DELETED, "left@example.com": SUPPRESSED_UNSUBSCRIBED}
    assert len(call.asked) == 4


def test_a_mirror_that_cannot_be_updated_is_still_read():
    call = Lookups()
    found = SuppressionCheck(StaleButReadable()).why_not(["gone@example.com", "new@example.com"], SETTINGS, call)
    assert found == {"gone@example.com": SUPPRESSED_DELETED}
    assert call.asked == []  # what the mirror holds is used: no lookup per contact


def test_a_disk_that_stays_unusable_is_warned_about_once_a_minute_not_once_per_send(caplog):
    """Review (field): with a read-only data dir every event kept in memory logged two WARNINGs
    of its own (20,000 lines for a lane of 10,000), where the contract is one line a minute."""
    check, now = SuppressionCheck(FullDisk()), [1000.0]
    check.clock = lambda: now[0]
    for _ in range(50):
        assert check.why_not(["gone@example.com"], SETTINGS, Lookups()) == {"gone@example.com": SUPPRESSED_DELETED}
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 2, said  # "cannot update" and "cannot read", once each
    now[0] += 61  # a minute later, still broken: said again
    check.why_not(["gone@example.com"], SETTINGS, Lookups())
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 4
