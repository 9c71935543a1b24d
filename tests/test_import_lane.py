"""The import lane over real HTTP (the sandbox) and against exact answers (``responses``): who
goes in through contacts_json_import, what it does to their permission, and how an import's
fate reaches each client's row."""

import json
import re
import sqlite3
import threading
import time

import pytest
from conftest import ACCESS_TOKEN, RAW
from prefork_server import wait_until

from remixcrm_plugin_ctct import flush, runtime
from remixcrm_plugin_ctct.admin import cli
from remixcrm_plugin_ctct.delivery.worker import WINDOW_ROUND_EVERY
from remixcrm_plugin_ctct.sandbox import Sandbox
from remixcrm_plugin_ctct.store.outbox import Outbox

API = "https://api.cc.email/v3"
IMPORT_URL = f"{API}/activities/contacts_json_import"


pytestmark = pytest.mark.usefixtures("quick_polls")


@pytest.fixture
def sandbox():
    with Sandbox(access_token=ACCESS_TOKEN) as sb:
        yield sb


def default_lanes(write_config, sandbox, **values):
    """The shipped default: unknown_consent left out of the config (so "implicit")."""
    write_config(api_base_url=sandbox.api_base_url, **{"unknown_consent": None, **values})


def permission(sandbox, email):
    found = sandbox.api.find(email, include_deleted=True)
    return found[0]["email_address"]["permission_to_send"] if found else None


def test_unknown_consent_goes_in_by_import_as_implicit_and_never_by_sign_up_form(pm, write_config, sandbox):
    default_lanes(write_config, sandbox)
    for n in range(5):
        pm.hook.on_client_created(client={"id": n, "email": f"Person{n}@Example.com", "first_name": f"P{n}"})
    pm.hook.on_client_created(client={"id": 9, "email": "yes@example.com", "email_opt_in": True})
    assert flush(30, retries=True)
    assert [c["email"] for c in sandbox.calls] == ["yes@example.com"]  # the only sign_up_form
    assert [permission(sandbox, f"person{n}@example.com") for n in range(5)] == ["implicit"] * 5
    assert permission(sandbox, "yes@example.com") == "explicit"
    assert {m["email_address"] for m in sandbox.members()} >= {f"person{n}@example.com" for n in range(5)}
    assert len(sandbox.imports.activities) <= 2  # together, not one request per client


@pytest.mark.parametrize("kept", ["implicit", "pending_confirmation", "unsubscribed", "not_set", "temp_hold"])
def test_an_existing_contact_keeps_its_permission(pm, write_config, sandbox, kept):
    sandbox.api.seed_contact("known@example.com", permission_to_send=kept)
    default_lanes(write_config, sandbox)
    pm.hook.on_client_created(client={"id": 1, "email": "Known@Example.com"})
    pm.hook.on_lead_converted(lead={"id": 7}, client={"id": 1, "email": "known@example.com"})
    assert flush(30, retries=True)
    assert permission(sandbox, "known@example.com") == kept
    assert sandbox.calls == []


def test_unsubscribed_and_deleted_are_filtered_by_the_mirror(pm, write_config, sandbox, capsys, logs):
    sandbox.api.seed_contact("left@example.com", permission_to_send="unsubscribed")
    sandbox.api.seed_contact("gone@example.com", deleted=True)
    default_lanes(write_config, sandbox)
    pm.hook.on_client_created(client={"id": 1, "email": "LEFT@example.com"})
    pm.hook.on_client_created(client={"id": 2, "email": "gone@example.com"})
    pm.hook.on_client_created(client={"id": 3, "email": "new@example.com"})
    assert flush(30, retries=True)
    assert permission(sandbox, "left@example.com") == "unsubscribed"
    assert sandbox.api.find("gone@example.com") == []  # not revived
    assert permission(sandbox, "new@example.com") == "implicit"
    cli.main(["status", "--client", "2"])
    assert "deleted in Constant Contact" in capsys.readouterr().out
    assert "left@example.com" not in logs.text.lower() and "gone@example.com" not in logs.text.lower()


def test_a_deleted_contact_is_revived_by_import_only_when_asked(pm, write_config, sandbox):
    sandbox.api.seed_contact("gone@example.com", deleted=True)
    default_lanes(write_config, sandbox, restore_deleted=RAW("true"))
    pm.hook.on_client_created(client={"id": 2, "email": "gone@example.com"})
    assert flush(30, retries=True)
    assert sandbox.api.find("gone@example.com") != []


def test_skip_sends_nothing_and_says_why(pm, write_config, sandbox, capsys):
    default_lanes(write_config, sandbox, unknown_consent="skip")
    pm.hook.on_client_created(client={"id": 1, "email": "who@example.com"})
    assert flush(30, retries=True)
    assert sandbox.faults.requests == 0
    cli.main(["status", "--client", "1"])
    assert "skipped: consent unknown" in capsys.readouterr().out


def test_a_failed_activity_is_retried_and_then_imported(pm, write_config, sandbox, monkeypatch):
    from remixcrm_plugin_ctct.delivery import retry_policy

    monkeypatch.setattr(retry_policy, "BASE_DELAY", 0.01)
    sandbox.faults.fail_imports = 1
    default_lanes(write_config, sandbox)
    pm.hook.on_client_created(client={"id": 1, "email": "again@example.com"})
    assert flush(30, retries=True)
    assert [a["state"] for a in sandbox.imports.view()] == ["failed", "completed"]
    assert permission(sandbox, "again@example.com") == "implicit"


def test_dry_run_records_what_would_be_imported_and_writes_nothing(pm, write_config, sandbox, capsys):
    default_lanes(write_config, sandbox, dry_run=RAW("true"))
    pm.hook.on_client_created(client={"id": 1, "email": "maybe@example.com", "first_name": "May"})
    assert flush(30, retries=True)
    assert sandbox.imports.activities == {} and sandbox.calls == []
    cli.main(["status", "--client", "1"])
    out = capsys.readouterr().out
    assert "would import: POST /activities/contacts_json_import" in out and '"first_name": "May"' in out


# --- exact answers: how an activity's words reach the rows they name ---


def _mock_import(mocked, activity):
    mocked.get(f"{API}/contacts", json={"contacts": [], "_links": {}})  # the mirror's seed: nobody suppressed
    mocked.post(IMPORT_URL, status=201, json={"activity_id": "act-1", "state": "initialized"})
    mocked.get(f"{API}/activities/act-1", json=activity)


def test_activity_errors_reach_the_rows_they_name(pm, write_config, mocked, capsys, logs):
    write_config(unknown_consent=None)
    errors = ["line 2 (import_data[1]): 'two@example.com' is not a valid email address"]
    _mock_import(mocked, {"activity_id": "act-1", "state": "completed", "activity_errors": errors})
    for n in (1, 2, 3):
        pm.hook.on_client_created(client={"id": n, "email": ["one", "two", "three"][n - 1] + "@example.com"})
    assert flush(30)
    states = {r["client_id"]: r["state"] for r in runtime.runtime().outbox.rows()}
    assert states == {"1": "delivered", "2": "dead", "3": "delivered"}
    cli.main(["status", "--client", "2"])
    out = capsys.readouterr().out
    assert "given up" in out or "dead" in out
    cli.main(["status", "--client", "1"])
    assert "imported (activity act-1)" in capsys.readouterr().out
    assert "two@example.com" not in logs.text


def test_a_request_refused_for_its_content_is_split_until_the_bad_contact_is_found(pm, write_config, mocked, capsys):
    write_config(unknown_consent=None)
    mocked.get(f"{API}/contacts", json={"contacts": [], "_links": {}})

    def answer(request):
        rows = json.loads(request.body)["import_data"]
        if any(r["email"] == "bad@example.com" for r in rows):
            return 400, {}, json.dumps([{"error_key": "json.field.invalid", "error_message": "bad row"}])
        return 201, {}, json.dumps({"activity_id": f"act-{len(rows)}", "state": "completed"})

    mocked.add_callback("POST", IMPORT_URL, callback=answer)
    for n, email in enumerate(["a@example.com", "bad@example.com", "c@example.com", "d@example.com"]):
        pm.hook.on_client_created(client={"id": n, "email": email})
    assert flush(30)
    states = {r["client_id"]: r["state"] for r in runtime.runtime().outbox.rows()}
    assert states == {"0": "delivered", "1": "dead", "2": "delivered", "3": "delivered"}


def test_a_403_on_import_pauses_and_drops_nothing(pm, write_config, mocked):
    write_config(unknown_consent=None)
    mocked.get(f"{API}/contacts", json={"contacts": [], "_links": {}})
    mocked.post(IMPORT_URL, status=403, json=[{"error_key": "forbidden", "error_message": "Forbidden"}])
    pm.hook.on_client_created(client={"id": 1, "email": "wait@example.com"})
    assert flush(30)
    assert runtime.runtime().worker.paused is not None
    assert runtime.runtime().outbox.summary().counts.get("pending") == 1


def test_errors_counted_but_not_listed_never_leave_a_row_delivered(pm, write_config, mocked):
    """Constant Contact's support: the service need not list invalid rows in activity_errors; its
    ``status`` counts still say how many were not imported. Halves are imported again until the
    counts name the rows (an import of the same data again changes nothing)."""
    write_config(unknown_consent=None)
    emails = ["a@example.com", "bad@example.com", "c@example.com", "d@example.com"]

    def created(request):
        rows = json.loads(request.body)["import_data"]
        bad = sum(r["email"] == "bad@example.com" for r in rows)
        activity = f"act-{len(rows)}-{bad}"
        return 201, {}, json.dumps({"activity_id": activity, "state": "initialized"})

    def polled(request):
        activity = request.url.rsplit("/", 1)[1]
        total, bad = (int(x) for x in activity.split("-")[1:])
        counts = {"items_total_count": total, "person_count": total - bad, "error_count": 0, "correctable_count": bad}
        return 200, {}, json.dumps({"activity_id": activity, "state": "completed", "status": counts})

    mocked.add_callback("POST", IMPORT_URL, callback=created)
    mocked.add_callback("GET", re.compile(f"{API}/activities/act-.*"), callback=polled)
    for n, email in enumerate(emails):
        pm.hook.on_client_created(client={"id": n, "email": email})
    assert flush(30)
    states = {r["client_id"]: r["state"] for r in runtime.runtime().outbox.rows()}
    assert states == {"0": "delivered", "1": "dead", "2": "delivered", "3": "delivered"}


@pytest.mark.parametrize("status", [400, 404])
def test_a_poll_refused_is_a_failed_activity_not_a_dead_row_nor_a_split(pm, write_config, mocked, status, monkeypatch):
    from remixcrm_plugin_ctct.delivery import retry_policy

    monkeypatch.setattr(retry_policy, "BASE_DELAY", 1000.0)  # the retry is not due within this test
    write_config(unknown_consent=None)
    mocked.post(IMPORT_URL, status=201, json={"activity_id": "act-1", "state": "initialized"})
    mocked.get(f"{API}/activities/act-1", status=status, json=[{"error_key": "not_found", "error_message": "no"}])
    pm.hook.on_client_created(client={"id": 1, "email": "one@example.com"})
    pm.hook.on_client_created(client={"id": 2, "email": "two@example.com"})
    assert flush(30)
    imports_sent = [c for c in mocked.calls if c.request.method == "POST"]
    assert len(imports_sent) == 1  # not split: the request was accepted, only the poll was refused
    rows = runtime.runtime().outbox.rows()
    assert [r["state"] for r in rows] == ["pending", "pending"]  # tried again later, never given up


def test_a_refusal_of_every_part_costs_a_bounded_number_of_requests(pm, write_config, mocked):
    """A 400 that holds for every contact (not one bad row) must not be narrowed down to two
    requests per contact: past the budget the rest ends dead with Constant Contact's words."""
    write_config(unknown_consent=None)
    refused = json.dumps([{"error_key": "json.field.invalid", "error_message": "cf:Plan is not a field"}])
    mocked.add_callback("POST", IMPORT_URL, callback=lambda request: (400, {}, refused))
    for n in range(200):
        pm.hook.on_client_created(client={"id": n, "email": f"p{n}@example.com"})
    assert flush(30)
    posts = [c for c in mocked.calls if c.request.url == IMPORT_URL]
    assert len(posts) <= 1 + 2 * 8 + 8  # the import, then at most 2 per halving level + slack (200 rows)
    states = {r["state"] for r in runtime.runtime().outbox.rows()}
    assert states == {"dead"}  # every row: `remixcrm-ctct retry --dead` sends them again after the fix


def test_while_rows_wait_for_the_import_window_a_hooks_wake_is_no_round(pm, write_config, sandbox, monkeypatch):
    """A round (fold, claims, due times) per event was most of the sender threads' CPU in a
    prefork host; while only the import window is awaited, rounds come at most every 0.25 s."""
    default_lanes(write_config, sandbox, import_window_seconds=60)
    pm.hook.on_client_created(client={"id": 0, "email": "first@example.com"})
    rt = runtime.runtime()
    assert wait_until(lambda: rt.worker._window_until is not None, 10)
    claims = []
    claim_many = rt.outbox.claim_many
    monkeypatch.setattr(rt.outbox, "claim_many", lambda *a, **k: claims.append(1) or claim_many(*a, **k))
    started = time.monotonic()
    for n in range(1, 41):
        pm.hook.on_client_created(client={"id": n, "email": f"p{n}@example.com"})
        threading.Event().wait(0.01)  # pacing the hooks (40 wakes over >= 0.4 s), not synchronisation
    rounds_allowed = (time.monotonic() - started) / WINDOW_ROUND_EVERY + 1
    assert len(claims) <= rounds_allowed, f"{len(claims)} claims for 40 wakes"
    assert flush(30, retries=True)  # someone waiting in flush() does not wait for the window
    assert {m["email_address"] for m in sandbox.members()} >= {f"p{n}@example.com" for n in range(1, 41)}


def test_a_consented_client_does_not_wait_for_the_import_window(pm, write_config, sandbox):
    default_lanes(write_config, sandbox, import_window_seconds=300)
    pm.hook.on_client_created(client={"id": 0, "email": "unknown@example.com"})
    rt = runtime.runtime()
    assert wait_until(lambda: rt.worker._window_until is not None, 10)
    pm.hook.on_client_created(client={"id": 1, "email": "yes@example.com", "email_opt_in": True})
    # no flush(): the worker's own rounds take it, within WINDOW_ROUND_EVERY, not after 300 s
    assert wait_until(lambda: [c["email"] for c in sandbox.calls] == ["yes@example.com"], 10)
    assert not sandbox.imports.activities  # the unknown one still waits for its window


def test_a_hooks_wake_reaches_a_worker_held_by_a_pause_while_rows_wait_for_the_window(pm, write_config, sandbox):
    """A pause taken while rows wait for the import window (here by hand; in life another process's
    quota pause, or a refused token found by a concurrent round) must not leave the window's "a
    wake is no reason for a round" in force: the hook that follows the fix is what lifts it."""
    from remixcrm_plugin_ctct.delivery.pauses import Pause

    default_lanes(write_config, sandbox, import_window_seconds=300)
    pm.hook.on_client_created(client={"id": 0, "email": "unknown@example.com"})
    rt = runtime.runtime()
    assert wait_until(lambda: rt.worker._window_until is not None, 10)
    fixed = threading.Event()
    held: list[tuple[threading.Thread, float]] = []
    holds = rt.worker.pauses.holds

    def watched_holds(now):
        answer = holds(now)
        if answer:
            held.append((threading.current_thread(), time.monotonic()))
        return answer

    rt.worker.pauses.holds = watched_holds
    rt.worker.pauses.hold(Pause("test: the cause needs a fix", changed=fixed.is_set))
    assert wait_until(lambda: len({t for t, _ in held}) == len(rt.worker._threads), 10)
    aligned = time.monotonic()
    rt.worker._wake.set()  # every thread looks at the pause once more now, and waits its second from here
    assert wait_until(lambda: len({t for t, at in held if at >= aligned}) == len(rt.worker._threads), 10)
    fixed.set()
    started = time.monotonic()
    pm.hook.on_client_created(client={"id": 1, "email": "yes@example.com", "email_opt_in": True})
    assert wait_until(lambda: [c["email"] for c in sandbox.calls] == ["yes@example.com"], 10, interval=0.01)
    assert time.monotonic() - started < 0.5, "the hook's wake was ignored: the pause lifted only on its 1 s look"


def test_a_store_error_on_a_later_row_never_undoes_what_the_import_already_took(pm, write_config, mocked, monkeypatch):
    # the import takes rows 1 and 3 and refuses row 2; recording row 2's fate fails once (a full
    # disk): the contacts Constant Contact took stay delivered, never imported again
    write_config(unknown_consent=None)
    errors = ["line 2 (import_data[1]): 'two@example.com' is not a valid email address"]
    _mock_import(mocked, {"activity_id": "act-1", "state": "completed", "activity_errors": errors})
    real_dead, failed = Outbox.dead, []

    def dead(self, row_id, error, now=None):
        if not failed:
            failed.append(row_id)
            raise sqlite3.OperationalError("database or disk is full")
        return real_dead(self, row_id, error, now)

    monkeypatch.setattr(Outbox, "dead", dead)
    for n, name in enumerate(["one", "two", "three"], 1):
        pm.hook.on_client_created(client={"id": n, "email": f"{name}@example.com"})
    flush(5)
    states = {r["client_id"]: r["state"] for r in runtime.runtime().outbox.rows()}
    assert failed and states["1"] == states["3"] == "delivered", states
    assert states["2"] != "delivered"


def test_a_shared_store_out_of_reach_during_an_import_is_retried_like_a_push(
    pm, write_config, sandbox, monkeypatch, logs
):
    """The tokens live in the shared store: out of reach (PostgreSQL restarting), the import is
    retried with that reason, as a single push would be, not logged as a bug in the plugin."""
    from remixcrm_plugin_ctct.delivery import retry_policy
    from remixcrm_plugin_ctct.delivery.importing import Importing
    from remixcrm_plugin_ctct.store.interfaces import StoreUnavailable

    monkeypatch.setattr(retry_policy, "BASE_DELAY", 0.01)
    real_send, failed = Importing.send, []

    def send(self, *args, **kwargs):
        if not failed:
            failed.append(1)
            raise StoreUnavailable("postgresql://db/remixcrm: server closed the connection")
        return real_send(self, *args, **kwargs)

    monkeypatch.setattr(Importing, "send", send)
    default_lanes(write_config, sandbox)
    pm.hook.on_client_created(client={"id": 1, "email": "later@example.com"})
    assert flush(30, retries=True)
    assert failed and permission(sandbox, "later@example.com") == "implicit"
    assert not [r for r in logs.records if "unexpected error" in r.getMessage()]
    assert any("server closed the connection" in r.getMessage() for r in logs.records)
