"""A push that reached Constant Contact, whose outcome the outbox could not record at that moment
(a full disk: SQLite's "database or disk is full"; a shared store out of reach), is recorded
later, never sent again: a second ``sign_up_form`` is a second write to someone's contact (it
re-subscribes a person who unsubscribed meanwhile), a second import a second request."""

import sqlite3

import pytest
from conftest import ACCESS_TOKEN

from remixcrm_plugin_ctct import flush
from remixcrm_plugin_ctct import runtime as dispatch
from remixcrm_plugin_ctct.delivery import steps
from remixcrm_plugin_ctct.sandbox import Sandbox
from remixcrm_plugin_ctct.store import outbox_admin


@pytest.fixture
def sandbox():
    with Sandbox(access_token=ACCESS_TOKEN) as sb:
        yield sb


def fail_once(monkeypatch, outbox, name, times=1):
    """The outbox's ``name`` fails the first ``times`` times as a full disk makes SQLite fail."""
    real, failed = getattr(outbox, name), []

    def full_disk(*args, **kwargs):
        if len(failed) < times:
            failed.append(args)
            raise sqlite3.OperationalError("database or disk is full")
        return real(*args, **kwargs)

    monkeypatch.setattr(outbox, name, full_disk)
    return failed


def test_a_push_whose_outcome_cannot_be_recorded_is_recorded_later_not_sent_again(
    pm, write_config, sandbox, monkeypatch, logs
):
    monkeypatch.setattr(steps, "ERROR_RETRY", 0.0)  # were it tried again, it would be at once
    write_config(api_base_url=sandbox.api_base_url)
    rt = dispatch.runtime()
    failed = fail_once(monkeypatch, rt.outbox, "delivered")
    pm.hook.on_client_created(client={"id": "d1", "email": "d1@example.com", "email_opt_in": True})
    assert flush(20, retries=True)
    assert failed, "the fault was never hit"
    sends = [c for c in sandbox.calls if c["email"] == "d1@example.com"]
    assert len(sends) == 1, f"sent {len(sends)} times"
    assert outbox_admin.summary(rt.outbox).counts == {"delivered": 1}
    said = [r.getMessage() for r in logs.records if r.levelname == "ERROR"]
    assert len(said) == 1 and "could not record" in said[0] and "without sending it again" in said[0], said


def test_an_import_whose_outcome_cannot_be_recorded_is_recorded_later_not_imported_again(
    pm, write_config, sandbox, monkeypatch
):
    monkeypatch.setattr(steps, "ERROR_RETRY", 0.0)
    write_config(api_base_url=sandbox.api_base_url, unknown_consent="implicit", import_window_seconds=0)
    rt = dispatch.runtime()
    failed = fail_once(monkeypatch, rt.outbox, "delivered_many")
    for i in range(3):  # consent unknown: the import lane
        pm.hook.on_client_created(client={"id": f"i{i}", "email": f"i{i}@example.com"})
    assert flush(30, retries=True)
    assert failed, "the fault was never hit"
    imports = [r for r in sandbox.seen if r.method == "POST" and r.path.endswith("/contacts_json_import")]
    assert len(imports) == 1, f"imported {len(imports)} times"
    assert outbox_admin.summary(rt.outbox).counts == {"delivered": 3}


def test_while_the_disk_stays_full_the_pushed_row_waits_to_be_recorded_and_is_never_sent_again(
    pm, write_config, sandbox, monkeypatch
):
    monkeypatch.setattr(steps, "ERROR_RETRY", 0.0)
    write_config(api_base_url=sandbox.api_base_url)
    rt = dispatch.runtime()
    fail_once(monkeypatch, rt.outbox, "delivered")
    still_full = fail_once(monkeypatch, rt.outbox, "delivered_many", times=3)  # the later tries to record it
    pm.hook.on_client_created(client={"id": "d2", "email": "d2@example.com", "email_opt_in": True})
    assert flush(20, retries=True)
    assert len(still_full) == 3
    assert len([c for c in sandbox.calls if c["email"] == "d2@example.com"]) == 1
    assert outbox_admin.summary(rt.outbox).counts == {"delivered": 1}
