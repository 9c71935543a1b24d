"""The consent guard over real HTTP against the sandbox, whose sign_up_form re-subscribes and
restores exactly as Constant Contact documents."""

import itertools

import pytest
from conftest import ACCESS_TOKEN, RAW

from remixcrm_plugin_ctct import flush
from remixcrm_plugin_ctct import runtime as dispatch
from remixcrm_plugin_ctct.admin import cli
from remixcrm_plugin_ctct.sandbox import Sandbox
from remixcrm_plugin_ctct.store import outbox_admin


@pytest.fixture
def sandbox():
    with Sandbox(access_token=ACCESS_TOKEN) as sb:
        yield sb


def guarded(write_config, sandbox, **values):
    write_config(api_base_url=sandbox.api_base_url, consent_guard=RAW("true"), **values)


def permission(sandbox, email):
    found = sandbox.api.find(email, include_deleted=True)
    return found[0]["email_address"]["permission_to_send"] if found else None


def drained():
    return flush(30, retries=True)


def test_an_unsubscribed_contact_stays_unsubscribed_through_create_and_convert(pm, write_config, sandbox, logs, capsys):
    sandbox.api.seed_contact("Left@Example.com", permission_to_send="unsubscribed")
    guarded(write_config, sandbox)
    pm.hook.on_client_created(client={"id": 1, "email": "left@example.com", "first_name": "Lee"})
    pm.hook.on_lead_converted(lead={"id": 9}, client={"id": 2, "email": "LEFT@EXAMPLE.COM"})
    assert drained()
    assert permission(sandbox, "left@example.com") == "unsubscribed"
    assert sandbox.calls == []  # not a single write
    assert "skipped: unsubscribed" in logs.text and "left@example.com" not in logs.text.lower()
    cli.main(["status", "--client", "1"])
    assert "not sent" in capsys.readouterr().out


def test_recorded_consent_is_pushed_and_may_re_subscribe(pm, write_config, sandbox):
    sandbox.api.seed_contact("back@example.com", permission_to_send="unsubscribed")
    guarded(write_config, sandbox)
    pm.hook.on_client_created(client={"id": 1, "email": "back@example.com", "email_opt_in": True})
    pm.hook.on_client_created(client={"id": 2, "email": "new@example.com"})  # unknown to Constant Contact: pushed
    assert drained()
    assert permission(sandbox, "back@example.com") == "explicit"  # by the person's own consent
    assert permission(sandbox, "new@example.com") == "explicit"


@pytest.mark.parametrize("restore, expected", [(False, None), (True, "explicit")])
def test_a_deleted_contact_is_restored_only_when_asked(pm, write_config, sandbox, restore, expected):
    sandbox.api.seed_contact("deleted@example.com", deleted=True)
    guarded(write_config, sandbox, restore_deleted=RAW("true" if restore else "false"))
    pm.hook.on_client_created(client={"id": 1, "email": "deleted@example.com"})
    assert drained()
    live = sandbox.api.find("deleted@example.com")  # without status=all: only contacts that are not deleted
    assert (live[0]["email_address"]["permission_to_send"] if live else None) == expected


def test_dry_run_makes_no_write_and_records_the_payloads(pm, write_config, sandbox, capsys, logs):
    sandbox.api.seed_contact("known@example.com")
    sandbox.api.seed_contact("gone@example.com", permission_to_send="unsubscribed")
    guarded(write_config, sandbox, dry_run=RAW("true"))
    pm.hook.on_client_created(client={"id": 1, "email": "known@example.com", "first_name": "Kim"})
    pm.hook.on_client_created(client={"id": 2, "email": "fresh@example.com", "email_opt_in": True})
    pm.hook.on_client_created(client={"id": 3, "email": "gone@example.com"})
    assert drained()
    assert sandbox.calls == []
    assert outbox_admin.summary(dispatch.runtime().outbox).counts == {"dry_run": 2, "skipped": 1}
    outcomes = {
        r["client_id"]: r["outcome"]
        for c in ("1", "2", "3")
        for r in outbox_admin.for_client(dispatch.runtime().outbox, c)
    }
    assert (
        outcomes["1"].startswith("would update: POST /contacts/sign_up_form {")
        and '"first_name": "Kim"' in outcomes["1"]
    )
    assert outcomes["2"].startswith("would create: POST /contacts/sign_up_form {")
    assert outcomes["3"].startswith("skipped: unsubscribed")  # the mirror knew it, before any lookup
    assert 'would update: POST /contacts/sign_up_form {"email_address": "k***@example.com"' in logs.text
    assert "known@example.com" not in logs.text


def test_a_failed_lookup_never_leads_to_an_unguarded_push(pm, write_config, sandbox, monkeypatch):
    from remixcrm_plugin_ctct.delivery import retry_policy

    monkeypatch.setattr(retry_policy, "BASE_DELAY", 0.01)
    sandbox.api.seed_contact("left@example.com", permission_to_send="unsubscribed")
    guarded(write_config, sandbox)
    sandbox.faults.fail_next(4, 503)  # the lookups fail first
    pm.hook.on_client_created(client={"id": 1, "email": "left@example.com"})
    assert drained()
    assert sandbox.calls == [] and permission(sandbox, "left@example.com") == "unsubscribed"


def test_a_later_decline_cancels_a_waiting_push(pm, write_config, sandbox):
    guarded(write_config, sandbox)
    rt = dispatch.runtime()
    rt.outbox.set_meta("quota_paused_until", "9999999999")  # nothing goes out while both events arrive
    pm.hook.on_client_created(client={"id": 1, "email": "maybe@example.com", "email_opt_in": True})
    pm.hook.on_client_created(client={"id": 2, "email": "maybe@example.com", "email_opt_in": False})
    rt.journal.fold_into(rt.outbox)
    rt.outbox.set_meta("quota_paused_until", None)
    rt.worker.pauses.lift()
    assert drained()
    assert sandbox.calls == [] and permission(sandbox, "maybe@example.com") is None
    (row,) = outbox_admin.for_client(rt.outbox, "2")
    assert row["outcome"] == "skipped: declined marketing email"


EVENTS = {
    "created": lambda pm, email, n: pm.hook.on_client_created(client={"id": n, "email": email}),
    "created, opt-in None": lambda pm, email, n: pm.hook.on_client_created(
        client={"id": n, "email": email, "email_opt_in": None}
    ),
    "created, declined": lambda pm, email, n: pm.hook.on_client_created(
        client={"id": n, "email": email, "email_opt_in": False}
    ),
    "converted": lambda pm, email, n: pm.hook.on_lead_converted(lead={"id": n}, client={"id": n, "email": email}),
}


def test_no_sequence_of_events_without_recorded_consent_re_subscribes_anyone(pm, write_config, sandbox):
    """Every sequence of up to three events without email_opt_in = True, with the email in varying
    letter case, for a contact who unsubscribed: none is ever re-subscribed, none is written to."""
    guarded(write_config, sandbox)
    sequences = [seq for length in (1, 2, 3) for seq in itertools.product(EVENTS, repeat=length)]
    for n, sequence in enumerate(sequences):
        email = f"unsub{n}@example.com"
        sandbox.api.seed_contact(email, permission_to_send="unsubscribed")
        for k, event in enumerate(sequence):
            spelled = email.upper() if k % 2 else email.title()
            EVENTS[event](pm, spelled, f"{n}-{k}")
    assert drained()
    assert len(sequences) == 84
    assert sandbox.calls == []
    assert {permission(sandbox, f"unsub{n}@example.com") for n in range(len(sequences))} == {"unsubscribed"}


def test_consent_already_pushed_is_not_reused_by_a_later_event_without_consent(pm, write_config, sandbox):
    """Ada opted in (pushed), then unsubscribed through a link in a mail; months later a lead of
    hers is converted with email_opt_in unknown. The old "yes" was used up by the first push:
    the new event is looked up like any event without consent, and she stays unsubscribed."""
    guarded(write_config, sandbox)
    pm.hook.on_client_created(client={"id": 1, "email": "ada@example.com", "email_opt_in": True})
    assert drained()
    assert permission(sandbox, "ada@example.com") == "explicit"
    sandbox.api.unsubscribe("ada@example.com")
    pm.hook.on_lead_converted(lead={"id": 9}, client={"id": 2, "email": "Ada@example.com", "first_name": "Ada"})
    assert drained()
    assert permission(sandbox, "ada@example.com") == "unsubscribed"


def test_an_opt_out_after_a_waiting_consent_is_not_undone_by_a_mirror_a_minute_old(pm, write_config, sandbox):
    """Bo gave consent in RemixCRM an hour ago; the push waited (the daily quota, retries, the
    sender down). Bo has since unsubscribed through a link in a mail, just after the mirror's last
    pass: the mirror, trusted for a minute, does not know yet. sign_up_form would re-subscribe Bo
    on the strength of a consent the person has withdrawn since."""
    sandbox.api.seed_contact("bo@example.com")
    guarded(write_config, sandbox)
    rt = dispatch.runtime()
    pm.hook.on_client_created(client={"id": 1, "email": "al@example.com", "email_opt_in": True})
    assert drained()  # the mirror is synced: trusted for a minute
    rt.outbox.set_meta("quota_paused_until", "9999999999")  # Bo's push waits
    pm.hook.on_client_created(client={"id": 2, "email": "Bo@Example.com", "email_opt_in": True})
    rt.journal.fold_into(rt.outbox)
    conn = rt.outbox.connections.get()
    with rt.outbox.write_lock:  # the consent is an hour old
        conn.execute("UPDATE events SET created_at = created_at - 3600 WHERE client_id = '2'")
    sandbox.api.unsubscribe("bo@example.com")  # after the consent, after the mirror's pass
    rt.outbox.set_meta("quota_paused_until", None)
    rt.worker.pauses.lift()
    assert drained()
    assert permission(sandbox, "bo@example.com") == "unsubscribed"
    assert [c for c in sandbox.calls if c.get("email") == "bo@example.com"] == []
    (row,) = outbox_admin.for_client(rt.outbox, "2")
    assert row["state"] == "skipped" and "unsubscribed" in row["outcome"]


def test_a_prompt_consent_costs_no_lookup(pm, write_config, sandbox):
    guarded(write_config, sandbox)
    pm.hook.on_client_created(client={"id": 1, "email": "al@example.com", "email_opt_in": True})
    pm.hook.on_client_created(client={"id": 2, "email": "cy@example.com", "email_opt_in": True})
    assert drained()
    assert [r for r in sandbox.seen if "email=" in r.query] == []
