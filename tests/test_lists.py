"""Lists that follow the client: per-event lists, leaving lists on conversion (remove_list_memberships,
never an unsubscribe), what survives coalescing, the config's checks and `check`'s, over real HTTP."""

import time

import pytest
import requests
from conftest import ACCESS_TOKEN, LIST_ID

from remixcrm_plugin_ctct import config, flush, runtime
from remixcrm_plugin_ctct.admin import cli
from remixcrm_plugin_ctct.delivery import list_changes
from remixcrm_plugin_ctct.sandbox import Sandbox
from remixcrm_plugin_ctct.store.outbox import Outbox

LEADS = "11111111-1111-4111-8111-111111111111"
CLIENTS = "22222222-2222-4222-8222-222222222222"
ONBOARDING = "33333333-3333-4333-8333-333333333333"


pytestmark = pytest.mark.usefixtures("quick_polls")


@pytest.fixture
def sandbox():
    with Sandbox(access_token=ACCESS_TOKEN) as sb:
        sb.api.seed_list("Leads", LEADS)
        sb.api.seed_list("Clients", CLIENTS)
        sb.api.seed_list("Onboarding", ONBOARDING)
        yield sb


def lists_config(write_config, sandbox, **values):
    defaults = {"lead_converted_list_id": CLIENTS, "remove_from_list_ids": [LEADS]}
    write_config(api_base_url=sandbox.api_base_url, **{**defaults, **values})


def memberships(sandbox, email):
    (found,) = sandbox.api.find(email)
    return set(found["list_memberships"]), found["email_address"]["permission_to_send"]


@pytest.mark.parametrize(("opt_in", "lane"), [(True, "sign_up_form"), (None, "import")])
def test_a_converted_lead_leaves_the_leads_list_and_joins_the_clients_list(pm, write_config, sandbox, opt_in, lane):
    kept = "explicit" if opt_in else "implicit"
    sandbox.api.seed_contact("lee@example.com", permission_to_send=kept, list_id=LEADS)
    sandbox.api.seed_contact("other@example.com", permission_to_send="implicit", list_id=LEADS)
    lists_config(write_config, sandbox, unknown_consent=None)  # the default lanes
    client = {"id": 5, "email": "Lee@Example.com", "email_opt_in": opt_in}
    pm.hook.on_lead_converted(lead={"id": 9}, client=client)
    assert flush(30, retries=True)
    assert memberships(sandbox, "lee@example.com") == ({CLIENTS}, kept)  # permission untouched
    assert memberships(sandbox, "other@example.com") == ({LEADS}, "implicit")  # only the converted contact
    assert [c["email"] for c in sandbox.calls] == (["lee@example.com"] if lane == "sign_up_form" else [])
    (removal,) = [a for a in sandbox.imports.view() if a["status"].get("list_count")]
    assert removal["state"] == "completed" and removal["status"]["items_total_count"] == 1
    rows = runtime.runtime().outbox.for_client("5")
    assert rows[-1]["state"] == "delivered" and f"left list(s) {LEADS}" in rows[-1]["outcome"]


def test_a_new_client_joins_its_own_list_and_leaves_none(pm, write_config, sandbox):
    sandbox.api.seed_contact("new@example.com", list_id=LEADS)
    lists_config(write_config, sandbox, client_created_list_id=ONBOARDING)
    pm.hook.on_client_created(client={"id": 1, "email": "new@example.com", "email_opt_in": True})
    assert flush(30, retries=True)
    assert memberships(sandbox, "new@example.com")[0] == {LEADS, ONBOARDING}
    assert sandbox.imports.activities == {}  # no removal activity for a creation


def test_without_per_event_lists_everyone_joins_list_id(pm, write_config, sandbox):
    write_config(api_base_url=sandbox.api_base_url)
    pm.hook.on_client_created(client={"id": 1, "email": "a@example.com", "email_opt_in": True})
    pm.hook.on_lead_converted(lead={"id": 2}, client={"id": 3, "email": "b@example.com", "email_opt_in": True})
    assert flush(30, retries=True)
    assert {m["email_address"] for m in sandbox.members(LIST_ID)} == {"a@example.com", "b@example.com"}
    assert sandbox.imports.activities == {}


# --- coalescing: a row joins the lists of all its own events, and only of its own ---

SETTINGS = config.Settings(
    LIST_ID, client_created_list_id=ONBOARDING, lead_converted_list_id=CLIENTS, remove_from_list_ids=(LEADS,)
)


def record(event: str, at: float, client_id: str = "1") -> dict:
    return {
        "email": "a@example.com",
        "client_id": client_id,
        "event": event,
        "fields": {f"event:{event.split()[0]}": at},
        "at": at,
        "seq": 0,
    }


@pytest.fixture(params=["sqlite", "postgres"])
def box(request, tmp_path):
    """An outbox of either backend (PostgreSQL: skipped without REMIXCRM_TEST_POSTGRES)."""
    if request.param == "sqlite":
        found = Outbox(tmp_path)
    else:
        from remixcrm_plugin_ctct.store.postgres import open_store

        url, name = request.getfixturevalue("pg_schema")
        found = open_store(url, name, tmp_path)[0]
    yield found
    found.close()


def test_a_creation_and_a_conversion_coalesced_join_both_lists_and_leave_the_leads(box):
    now = time.time()
    box.add_records([record("client_created", now - 2), record("lead_converted from lead 9", now - 1)])
    (row,) = box.claim_many("me", 10, now=now)
    assert list_changes.targets(row.contact["fields"], SETTINGS) == ([ONBOARDING, CLIENTS], [LEADS])


def test_an_older_event_folded_late_still_counts_for_the_row(box):
    now = time.time()
    box.add_records([record("client_created", now - 1)])
    box.add_records([record("lead_converted from lead 9", now - 50)])  # another process's journal, folded late
    (row,) = box.claim_many("me", 10, now=now)
    assert list_changes.targets(row.contact["fields"], SETTINGS) == ([ONBOARDING, CLIENTS], [LEADS])


def test_a_conversion_long_done_does_not_follow_later_pushes(box):
    now = time.time()
    box.add_records([record("lead_converted from lead 9", now - 100)])
    (row,) = box.claim_many("me", 10, now=now - 99)
    box.delivered(row.id, "c-1", "updated")
    box.add_records([record("client_created", now - 1, client_id="2")])
    (later,) = box.claim_many("me", 10, now=now)
    assert list_changes.targets(later.contact["fields"], SETTINGS) == ([ONBOARDING], [])


def test_retry_dead_keeps_the_lists_of_the_revived_row(box):
    now = time.time()
    box.add_records([record("lead_converted from lead 9", now - 100)])
    (row,) = box.claim_many("me", 10, now=now - 99)
    box.dead(row.id, "404 the list was not found")
    assert box.retry(dead=True, now=now) == 1
    (again,) = box.claim_many("me", 10, now=now + 1)
    assert list_changes.targets(again.contact["fields"], SETTINGS) == ([CLIENTS], [LEADS])


def test_a_row_without_a_kind_joins_list_id():
    assert list_changes.targets({"first_name": "Ada"}, SETTINGS) == ([LIST_ID], [])


# --- the config and check ---


@pytest.mark.parametrize(
    ("values", "said"),
    [
        ({"client_created_list_id": "nope"}, "client_created_list_id 'nope' is not a UUID"),
        ({"lead_converted_list_id": 5}, "lead_converted_list_id must be a quoted string"),
        ({"remove_from_list_ids": ["x"]}, "remove_from_list_ids: 'x' is not a UUID"),
        ({"remove_from_list_ids": 5}, "remove_from_list_ids must be an array of list ids"),
        ({"remove_from_list_ids": [LEADS, 5]}, "remove_from_list_ids must be an array of list ids"),
        ({"remove_from_list_ids": [CLIENTS], "lead_converted_list_id": CLIENTS}, "would join and leave it at once"),
        ({"remove_from_list_ids": [LIST_ID]}, "would join and leave it at once"),
        ({"remove_from_list_ids": [f"{n:08x}-1111-4111-8111-111111111111" for n in range(51)]}, "at most 50"),
    ],
)
def test_bad_list_keys_are_one_error_naming_the_key(write_config, values, said):
    loaded = config.load(write_config(**values))
    assert loaded.status == config.INVALID and said in loaded.message


def test_one_list_id_as_a_string_is_accepted(write_config):
    loaded = config.load(write_config(remove_from_list_ids=LEADS, lead_converted_list_id=CLIENTS))
    assert loaded.settings is not None and loaded.settings.remove_from_list_ids == (LEADS,)


def test_check_shows_every_configured_list_by_name(write_config, sandbox, capsys):
    sandbox.api.delete_list(ONBOARDING)
    missing = "44444444-4444-4444-8444-444444444444"
    lists_config(write_config, sandbox, client_created_list_id=ONBOARDING, remove_from_list_ids=[LEADS, missing])
    assert cli.main(["check"]) == 1
    out = capsys.readouterr().out
    assert f"✓ list lead_converted_list_id: 'Clients' ({CLIENTS})" in out
    assert f"✓ list remove_from_list_ids: 'Leads' ({LEADS})" in out
    assert "✗ list client_created_list_id: list 'Onboarding'" in out and "was deleted" in out
    assert f"✗ list remove_from_list_ids: no list {missing} in this account" in out


# --- the sandbox's activity ---


def post_removal(sandbox, body):
    return requests.post(
        f"{sandbox.api_base_url}/activities/remove_list_memberships",
        json=body,
        headers={"Authorization": f"Bearer {ACCESS_TOKEN}"},
        timeout=5,
    )


def test_the_sandbox_removal_is_an_activity_that_unsubscribes_nobody(sandbox):
    seeded = sandbox.api.seed_contact("a@example.com", permission_to_send="implicit", list_id=LEADS)
    answer = post_removal(sandbox, {"source": {"contact_ids": [seeded["contact_id"]]}, "list_ids": [LEADS]})
    assert answer.status_code == 201 and answer.json()["state"] == "initialized"
    assert memberships(sandbox, "a@example.com")[0] == {LEADS}  # not before the activity completes
    activity = f"{sandbox.api_base_url}/activities/{answer.json()['activity_id']}"
    auth = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
    states = [requests.get(activity, headers=auth, timeout=5).json()["state"] for _ in range(2)]
    assert states == ["processing", "completed"]
    assert memberships(sandbox, "a@example.com") == (set(), "implicit")


@pytest.mark.parametrize(
    "body",
    [
        {"source": {"all_active_contacts": True}, "list_ids": [LEADS]},
        {"source": {"contact_ids": ["x"]}, "list_ids": [LEADS]},
        {"source": {"contact_ids": []}, "list_ids": [LEADS]},
        {"source": {"contact_ids": [LEADS], "list_ids": [LEADS]}, "list_ids": [LEADS]},
        {"source": {"contact_ids": [LEADS]}, "list_ids": []},
        {"source": {"contact_ids": [LEADS]}, "list_ids": [LEADS], "unsubscribe": True},
        [],
    ],
)
def test_the_sandbox_refuses_removals_outside_the_spec(sandbox, body):
    assert post_removal(sandbox, body).status_code == 400


def test_a_list_gone_since_costs_the_removal_not_the_push(pm, write_config, sandbox, logs):
    sandbox.api.seed_contact("lee@example.com", list_id=LEADS)
    lists_config(write_config, sandbox)
    del sandbox.api.lists[LEADS]  # deleted for good after the config was written: the removal is a 404
    pm.hook.on_lead_converted(lead={"id": 9}, client={"id": 5, "email": "lee@example.com", "email_opt_in": True})
    assert flush(30, retries=True)
    assert CLIENTS in memberships(sandbox, "lee@example.com")[0]
    (row,) = runtime.runtime().outbox.for_client("5")
    assert row["state"] == "delivered" and f"not removed from list(s) {LEADS}" in row["outcome"]
    assert "Fix: check remove_from_list_ids" in logs.text


def test_hostile_journal_fields_are_cut_to_what_could_be_sent():
    from remixcrm_plugin_ctct import fieldmap

    hostile = {
        "custom:Plan": "x" * 10_000,
        "custom:" + "n" * 60: "v",
        "street": "s" * 1000,
        "birthday_month": 99,
        "birthday_day": 3,
        "anniversary": "not a date",
        "event:lead_converted": float("nan"),
        "event:client_created": 5.0,
        "event:other": 1.0,
        "__proto__": "x",
        "first_name": "A" * 80,
    }
    kept = fieldmap.bounded(hostile, {"first_name": 50})
    assert kept == {
        "custom:Plan": "x" * 255,
        "street": "s" * 255,
        "birthday_day": 3,
        "event:client_created": 5.0,
        "first_name": "A" * 50,
    }
