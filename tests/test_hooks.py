"""The hookimpls through a real PluginManager: what is sent, what is not, and what is logged."""

import json
import logging
import os
import threading
import time

import pytest
import requests
from conftest import ACCESS_TOKEN, LIST_ID, SIGN_UP_URL, api_calls, assert_no_secrets

from remixcrm_plugin_ctct import flush
from remixcrm_plugin_ctct import runtime as dispatch
from remixcrm_plugin_ctct.ctct import client as api_client
from remixcrm_plugin_ctct.sandbox import Sandbox
from remixcrm_plugin_ctct.store import journal, outbox_admin
from remixcrm_plugin_ctct.store.journal import Journal

ADA = {"id": 101, "email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace", "phone": "555-0101"}
CREATED = {"contact_id": "c-101", "action": "created"}


def sent_bodies(mocked):
    return [json.loads(call.request.body) for call in api_calls(mocked)]


def test_created_client_is_pushed_once(pm, write_config, mocked, logs):
    write_config()
    mocked.post(SIGN_UP_URL, status=201, json=CREATED)
    assert pm.hook.on_client_created(client=ADA) == []  # pluggy's list of non-None results
    assert flush(5)
    assert sent_bodies(mocked) == [
        {
            "email_address": "ada@example.com",
            "first_name": "Ada",
            "last_name": "Lovelace",
            "phone_number": "555-0101",
            "list_memberships": [LIST_ID],
        }
    ]
    assert "client 101 (a***@example.com) created contact c-101" in logs.text
    assert "ada@example.com" not in logs.text


def test_converted_lead_pushes_the_new_client(pm, write_config, mocked, logs):
    write_config()
    mocked.post(SIGN_UP_URL, status=200, json={"contact_id": "c-7"})
    pm.hook.on_lead_converted(lead={"id": 7}, client=ADA)
    assert flush(5)
    assert sent_bodies(mocked)[0]["email_address"] == "ada@example.com"
    assert "updated contact c-7" in logs.text and "lead_converted from lead 7" in logs.text


def test_the_provider_radio_takes_effect_on_the_next_event(pm, write_config, mocked):
    mocked.post(SIGN_UP_URL, status=201, json=CREATED)
    write_config()
    pm.hook.on_client_created(client={**ADA, "id": 1})
    write_config(provider="mailchimp")
    pm.hook.on_client_created(client={**ADA, "id": 2})
    write_config(provider="none")
    pm.hook.on_client_created(client={**ADA, "id": 3})
    write_config()
    pm.hook.on_client_created(client={**ADA, "id": 4, "email": "four@example.com"})
    assert flush(5)
    assert sorted(b["email_address"] for b in sent_bodies(mocked)) == ["ada@example.com", "four@example.com"]


def test_no_config_file_means_no_request_and_one_info(pm, mocked, logs, isolated):
    for n in range(3):
        pm.hook.on_client_created(client={**ADA, "id": n})
    assert flush(5)
    assert len(api_calls(mocked)) == 0
    assert not (isolated / "data").exists()  # nothing recorded either: the plugin is off
    infos = [r for r in logs.records if "sync is off" in r.getMessage()]
    assert len(infos) == 1 and infos[0].levelno == logging.INFO


def test_broken_config_logs_one_error_and_keeps_clients_until_fixed(pm, write_config, mocked, logs):
    write_config(list_id=None)
    for n in range(3):
        pm.hook.on_client_created(client={**ADA, "id": n, "email": f"c{n}@example.com"})
    assert flush(5) and len(api_calls(mocked)) == 0
    assert dispatch.runtime().outbox.due_count() == 3  # recorded, waiting for the fix
    errors = [r.getMessage() for r in logs.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "Settings → Integrations → Email Marketing → List ID" in errors[0]
    for _ in range(3):
        mocked.post(SIGN_UP_URL, status=201, json=CREATED)
    write_config()  # fixed in Settings: sending resumes by itself, no new event needed
    assert flush(5)
    assert sorted(b["email_address"] for b in sent_bodies(mocked)) == [
        "c0@example.com",
        "c1@example.com",
        "c2@example.com",
    ]
    assert "sending resumes" in logs.text


def test_a_declined_client_is_never_sent(pm, write_config, mocked, logs):
    write_config()
    pm.hook.on_client_created(client={**ADA, "email_opt_in": False})
    assert flush(5) and len(api_calls(mocked)) == 0
    assert "client 101 declined marketing email" in logs.text


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (
            400,
            [{"error_key": "json.field.invalid", "error_message": "list_id is required"}],
            "not sent, given up: Constant Contact answered 400 json.field.invalid: list_id is required. "
            "Fix: Constant Contact rejected the data: check that list_id is set",
        ),
        (
            404,
            [{"error_key": "contacts.api.not_found", "error_message": "list not found"}],
            "Fix: the list or endpoint was not found: check List ID",
        ),
    ],
)
def test_permanent_errors_are_dead_at_once_with_constant_contacts_words_and_the_fix(
    pm, write_config, mocked, logs, status, body, expected
):
    write_config()
    mocked.post(SIGN_UP_URL, status=status, json=body)
    assert pm.hook.on_client_created(client=ADA) == []
    assert flush(5)
    (record,) = [r for r in logs.records if "not sent" in r.getMessage()]
    assert record.levelno == logging.ERROR and expected in record.getMessage()
    assert outbox_admin.summary(dispatch.runtime().outbox).counts == {"dead": 1}


@pytest.mark.parametrize(
    "failure",
    [
        {"status": 500, "body": "Internal Server Error"},
        {"status": 503, "json": [{"error_key": "service_unavailable", "error_message": "try later"}]},
        {"status": 409, "json": [{"error_key": "conflict", "error_message": "You sent simultaneous requests"}]},
        {"status": 429, "json": {"error_key": "throttled", "error_message": "Too Many Requests"}},
        {"body": requests.ConnectionError("connection refused")},
    ],
)
def test_transient_failures_are_kept_and_retried_later(pm, write_config, mocked, logs, failure):
    write_config()
    mocked.post(SIGN_UP_URL, **failure)
    assert pm.hook.on_client_created(client=ADA) == []
    assert flush(5)
    (record,) = [r for r in logs.records if "not sent yet" in r.getMessage()]
    assert record.levelno == logging.WARNING and "attempt 1, next in" in record.getMessage()
    outbox = dispatch.runtime().outbox
    assert outbox_admin.summary(outbox).counts == {"pending": 1}
    assert outbox.due_count() == 0 and outbox.due_count(time.time() + 2) == 1  # backoff from ~1 s


def test_a_hanging_api_never_holds_the_hook(pm, write_config, logs, monkeypatch):
    monkeypatch.setattr(api_client, "READ_TIMEOUT", 0.3)
    with Sandbox(access_token=ACCESS_TOKEN) as sandbox:
        sandbox.hang.set()
        write_config(api_base_url=sandbox.api_base_url)
        assert pm.hook.on_client_created(client=ADA) == []
        assert flush(0) is False  # the hook is back while the send still waits on the API
        assert flush(5)
    assert "not sent yet: no response timeout: no answer from" in logs.text


def test_a_record_that_explodes_never_reaches_the_host(pm, write_config, logs):
    write_config()

    class Weird:
        def __getattr__(self, name):
            raise RuntimeError("boom")

    assert pm.hook.on_client_created(client=Weird()) == []
    assert pm.hook.on_lead_converted(lead=None, client=Weird()) == []
    # nothing readable, so nothing to send: said as such, not as a traceback
    assert "client '?' has no email address" in logs.text
    assert "Traceback" not in logs.text and "failed inside the plugin" not in logs.text


def test_a_field_or_lead_that_cannot_be_read_costs_that_field_not_the_client(pm, write_config, mocked, logs):
    # a lazy ORM attribute of a detached record raises; a 5000-digit number cannot become text
    write_config()
    mocked.post(SIGN_UP_URL, status=201, json=CREATED)
    mocked.post(SIGN_UP_URL, status=201, json=CREATED)

    class Detached:
        id, email, first_name = 5, "eve@example.com", "Eve"

        def __getattr__(self, name):
            raise RuntimeError("detached instance")

    class Lead:
        def __getattr__(self, name):
            raise RuntimeError("detached instance")

    assert pm.hook.on_client_created(client={"id": 4, "email": "dan@example.com", "first_name": 10**5000}) == []
    assert pm.hook.on_lead_converted(lead=Lead(), client=Detached()) == []
    assert flush(5)
    assert sorted(b["email_address"] for b in sent_bodies(mocked)) == ["dan@example.com", "eve@example.com"]
    assert "failed inside the plugin" not in logs.text
    assert "client 4: could not read first_name (ValueError); sent without it" in logs.text


def test_secrets_never_reach_the_logs_or_output(pm, write_config, mocked, logs, capfd):
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    write_config()
    for status in (201, 400, 401, 404, 409, 429, 500):
        mocked.post(SIGN_UP_URL, status=status, json={"error_key": "k", "error_message": "m", "contact_id": "c"})
    mocked.post(SIGN_UP_URL, body=requests.ConnectionError("down"))
    mocked.post(SIGN_UP_URL, status=403, json={"error_key": "k", "error_message": "m"})  # last: it pauses sending
    for n in range(9):
        pm.hook.on_client_created(client={**ADA, "id": n, "email": f"c{n}@example.com"})
        assert flush(5)
    write_config(list_id="not-a-uuid")
    pm.hook.on_client_created(client=ADA)
    write_config(text="[email_marketing\naccess_token = 'SECRET-access-0123456789'")
    pm.hook.on_client_created(client=ADA)
    out, err = capfd.readouterr()
    assert_no_secrets(logs.text + out + err)
    assert "Bearer" not in logs.text


def test_many_threads_firing_hooks_at_once_lose_nothing(pm, write_config):
    with Sandbox(access_token=ACCESS_TOKEN) as sandbox:
        write_config(api_base_url=sandbox.api_base_url)
        go = threading.Barrier(16)

        def host_thread(t):
            go.wait()
            for n in range(25):
                client = {"id": f"{t}-{n}", "email": f"t{t}n{n}@example.com", "first_name": f"T{t}"}
                if n % 2:
                    pm.hook.on_lead_converted(lead={"id": n}, client=client)
                else:
                    pm.hook.on_client_created(client=client)

        threads = [threading.Thread(target=host_thread, args=(t,)) for t in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert flush(30)
        assert len(sandbox.members()) == 16 * 25
        assert len(sandbox.api.sign_ups) == 16 * 25


def test_an_unwritable_outbox_falls_back_to_memory_and_says_so_once(pm, write_config, mocked, logs, monkeypatch):
    write_config()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Journal, "append", broken)
    for n in range(3):
        mocked.post(SIGN_UP_URL, status=201, json={"contact_id": f"c-{n}"})
    for n in range(3):
        assert pm.hook.on_client_created(client={**ADA, "id": n, "email": f"c{n}@example.com"}) == []
    assert flush(5)
    errors = [r.getMessage() for r in logs.records if "cannot write the outbox" in r.getMessage()]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "kept in memory only" in errors[0]
    assert len(api_calls(mocked)) == 3
    # each one sent once: from memory, or from the outbox they move into once it takes writes
    assert logs.text.count("created contact") == 3


@pytest.mark.parametrize("opt_in", [0, 0.0, "0", "no", "No ", "FALSE", "off", "n"])
def test_a_decline_in_any_common_spelling_is_never_pushed(pm, write_config, mocked, logs, opt_in):
    write_config()
    pm.hook.on_client_created(client={**ADA, "email_opt_in": opt_in})  # SQLite-backed hosts store 0/1
    assert flush(5) and len(api_calls(mocked)) == 0
    assert "client 101 declined marketing email" in logs.text


def test_poison_input_at_the_hook_never_stops_the_stream(pm, write_config, mocked, logs):
    write_config()
    clients = [
        {**ADA, "id": "1\ud800", "email": "c1@example.com"},
        {**ADA, "id": 2, "email": "c\ud8002@example.com"},  # not an address: skipped, said why
        {**ADA, "id": 3, "email": "c3@example.com", "first_name": "A\udfff"},
        {**ADA, "id": "4" * 300_000, "email": "c4@example.com"},  # a line over the fold's chunk, before
        {**ADA, "id": 5, "email": "c5@example.com"},
    ]
    for _ in range(4):
        mocked.post(SIGN_UP_URL, status=201, json=CREATED)
    for client in clients:
        pm.hook.on_client_created(client=client)
    pm.hook.on_lead_converted(lead={"id": "\udc00" * 300_000}, client={**ADA, "id": 6, "email": "c6@example.com"})
    mocked.post(SIGN_UP_URL, status=201, json=CREATED)
    assert flush(5)
    bodies = {b["email_address"]: b for b in sent_bodies(mocked)}
    assert sorted(bodies) == ["c1@example.com", "c3@example.com", "c4@example.com", "c5@example.com", "c6@example.com"]
    assert bodies["c3@example.com"]["first_name"] == "A\ufffd"
    assert "client 2: email c***@example.com is not a valid address (it holds a broken character" in logs.text
    assert not [r for r in logs.records if r.levelno >= logging.ERROR]
    cut = "(300000 characters) is recorded cut to its first 256 characters"
    assert len([r for r in logs.records if cut in r.getMessage()]) == 2


def test_user_values_in_log_lines_are_quoted_and_capped(pm, write_config, mocked, logs):
    write_config()
    mocked.post(SIGN_UP_URL, status=201, json=CREATED)
    mocked.post(SIGN_UP_URL, status=201, json=CREATED)
    pm.hook.on_client_created(client={**ADA, "id": "7\nCRITICAL forged", "email": "c7@example.com"})
    pm.hook.on_lead_converted(lead={"id": "9\r\nERROR forged"}, client={**ADA, "id": "x" * 5_000_000})
    pm.hook.on_client_created(client={"id": "8\n" * 1000, "email": None})
    assert flush(5)
    ours = [r.getMessage() for r in logs.records if r.name == "remixcrm_plugin_ctct"]
    assert all("\n" not in m and "\r" not in m and len(m) < 1000 for m in ours), ours
    assert "client '7\\nCRITICAL forged' (c***@example.com) created contact c-101" in logs.text
    assert "lead_converted from lead '9\\r\\nERROR forged'" in logs.text
    assert "client '8\\n8\\n8" in logs.text and "has no email address" in logs.text


def test_a_write_cut_short_by_a_full_disk_keeps_that_event_and_the_next(pm, write_config, mocked, logs, monkeypatch):
    write_config()
    for n in range(3):
        mocked.post(SIGN_UP_URL, status=201, json={"contact_id": f"c-{n}"})
    pm.hook.on_client_created(client={**ADA, "id": 0, "email": "c0@example.com"})
    jr = dispatch.runtime().journal
    real, done = os.write, []

    def half_once(fd, data):  # ENOSPC halfway through the line
        if not done and os.path.samestat(os.fstat(fd), os.stat(jr.path)):
            done.append(fd)
            return real(fd, data[: len(data) // 2])
        return real(fd, data)

    monkeypatch.setattr(journal.os, "write", half_once)
    pm.hook.on_client_created(client={**ADA, "id": 1, "email": "c1@example.com"})  # kept in memory
    pm.hook.on_client_created(client={**ADA, "id": 2, "email": "c2@example.com"})  # the journal again
    assert flush(5)
    sent = sorted(b["email_address"] for b in sent_bodies(mocked))
    assert sent == ["c0@example.com", "c1@example.com", "c2@example.com"]
    assert "damaged" not in logs.text


def test_the_hook_opens_no_store_in_the_hosts_thread_its_sender_threads_do(pm, write_config, mocked, monkeypatch):
    """sender = "thread" (the default): the first hook of a process writes the journal and starts
    one thread of ours; the store is opened and the workers built there, never in the request."""
    write_config()
    mocked.post(SIGN_UP_URL, status=201, json=CREATED)
    built_in, built = [], threading.Event()
    real = dispatch.Runtime

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            built_in.append(threading.current_thread().name)
            super().__init__(*args, **kwargs)
            built.set()

    monkeypatch.setattr(dispatch, "Runtime", Spy)
    pm.hook.on_client_created(client=ADA)
    assert built.wait(5)  # nothing here asks for the runtime: only the builder makes it
    assert built_in == ["remixcrm-ctct-start"]
    assert flush(5)
    assert [b["email_address"] for b in sent_bodies(mocked)] == ["ada@example.com"]


def test_flush_right_after_the_first_hook_delivers_even_before_the_sender_threads_exist(pm, write_config, mocked):
    write_config()
    mocked.post(SIGN_UP_URL, status=201, json=CREATED)
    pm.hook.on_client_created(client=ADA)
    assert flush(5)  # builds them itself when the builder has not yet
    assert [b["email_address"] for b in sent_bodies(mocked)] == ["ada@example.com"]
