"""The sandbox behaves like Constant Contact as far as the facts file and the vendor spec go."""

import datetime as dt
import json
import re

import pytest
import requests

from remixcrm_plugin_ctct.sandbox import SANDBOX_CLIENT_ID, SEEDED_LIST_ID, Sandbox

TOKEN = "static-test-token"


@pytest.fixture
def sb():
    with Sandbox(access_token=TOKEN) as sandbox:
        yield sandbox


def post(sb, body, token=TOKEN, **kwargs):
    return requests.post(
        f"{sb.api_base_url}/contacts/sign_up_form",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
        **kwargs,
    )


def get(sb, path, token=TOKEN, **params):
    return requests.get(
        f"{sb.api_base_url}{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=5
    )


def body(email="ada@example.com", **fields):
    return {"email_address": email, "list_memberships": [SEEDED_LIST_ID], **fields}


def test_upsert_creates_then_updates_and_appends_lists(sb):
    first = post(sb, body(first_name="Ada"))
    second = post(sb, body("ADA@example.com", last_name="Lovelace"))
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["contact_id"] == second.json()["contact_id"]
    (contact,) = sb.members()
    assert (contact["first_name"], contact["last_name"]) == ("Ada", "Lovelace")  # partial update


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"email_address": "a" * 60 + "@example.com"}, "email_address must be a string of at most 50"),
        ({"phone_number": "1" * 26}, "phone_number must be a string of at most 25"),
        ({"street_addresses": []}, "'street_addresses' is not a property of ContactCreateOrUpdateInput"),
        ({"list_memberships": []}, "list_memberships must hold 1 to 50 list ids"),
    ],
)
def test_schema_violations_are_400_with_constant_contacts_error_array(sb, bad, message):
    answer = post(sb, {**body(), **bad})
    assert answer.status_code == 400
    errors = answer.json()
    assert isinstance(errors, list) and any(message in e["error_message"] for e in errors)


def test_wrong_content_type_is_415_and_unknown_list_is_404(sb):
    answer = requests.post(
        f"{sb.api_base_url}/contacts/sign_up_form",
        data="x",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"},
        timeout=5,
    )
    assert answer.status_code == 415
    assert post(sb, {**body(), "list_memberships": ["00000000-0000-4000-8000-000000000000"]}).status_code == 404


def test_sign_up_re_subscribes_an_unsubscribed_contact_as_the_real_service_does(sb):
    sb.api.seed_contact("gone@example.com", permission_to_send="unsubscribed")
    assert (
        get(sb, "/contacts", email="gone@example.com").json()["contacts"][0]["email_address"]["permission_to_send"]
        == "unsubscribed"
    )
    assert post(sb, body("Gone@Example.com")).status_code == 200
    assert (
        get(sb, "/contacts", email="gone@example.com").json()["contacts"][0]["email_address"]["permission_to_send"]
        == "explicit"
    )


def test_deleted_contacts_show_only_with_status_all_and_sign_up_restores_them(sb):
    sb.api.seed_contact("deleted@example.com", deleted=True)
    assert get(sb, "/contacts", email="deleted@example.com").json()["contacts"] == []
    assert len(get(sb, "/contacts", email="deleted@example.com", status="all").json()["contacts"]) == 1
    post(sb, body("deleted@example.com"))
    assert len(get(sb, "/contacts", email="deleted@example.com").json()["contacts"]) == 1


def test_lists_privileges_and_the_read_only_view(sb):
    assert get(sb, f"/contact_lists/{SEEDED_LIST_ID}").json()["name"] == "RemixCRM clients"
    sb.api.delete_list(SEEDED_LIST_ID)
    assert get(sb, f"/contact_lists/{SEEDED_LIST_ID}").json()["deleted_at"]
    assert get(sb, "/account/user/privileges").status_code == 200
    view = requests.get(f"{sb.base_url}/sandbox/view", timeout=5).json()
    assert view["lists"][0]["list_id"] == SEEDED_LIST_ID


def test_expired_tokens_get_constant_contacts_401():
    with Sandbox(access_token=None, access_lifetime=60) as sb:
        pair = sb.authz.seed()
        assert post(sb, body(), token=pair["access_token"]).status_code == 201
        sb.authz.expire_all_access_tokens()
        answer = post(sb, body(), token=pair["access_token"])
        assert answer.status_code == 401 and answer.json() == {
            "error_key": "unauthorized",
            "error_message": "Unauthorized",
        }


def refresh(sb, refresh_token):
    return requests.post(
        sb.token_url,
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": SANDBOX_CLIENT_ID},
        timeout=5,
    )


def test_rotating_refresh_tokens_expire_every_earlier_one():
    with Sandbox(access_token=None, rotating=True, token_rate_limit=None) as sb:  # three refreshes in a row
        old = sb.authz.seed()["refresh_token"]
        new = refresh(sb, old).json()["refresh_token"]
        assert new != old
        again = refresh(sb, old)
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
        assert refresh(sb, new).status_code == 200


def test_long_lived_refresh_tokens_come_back_unchanged():
    with Sandbox(access_token=None, rotating=False, token_rate_limit=None) as sb:
        old = sb.authz.seed()["refresh_token"]
        assert refresh(sb, old).json()["refresh_token"] == old
        assert refresh(sb, old).status_code == 200


def test_four_requests_a_second_then_throttled_and_a_daily_quota(sb):
    sb.faults.rate_limit = 4
    answers = [post(sb, body(f"r{n}@example.com")) for n in range(6)]
    assert [a.status_code for a in answers[:4]] == [201] * 4
    refused = [a for a in answers[4:] if a.status_code == 429]
    assert refused and refused[0].json() == {"error_key": "throttled", "error_message": "Too Many Requests"}
    sb.faults.rate_limit = None
    sb.faults.daily_quota = 0
    answer = post(sb, body("q@example.com"))
    assert answer.status_code == 429 and answer.json()["error_key"] == "quota_exceeded"


def test_fault_injection_by_call_and_through_the_admin_endpoint(sb):
    sb.faults.fail_next(1, 503)
    assert post(sb, body()).status_code == 503
    requests.post(f"{sb.base_url}/sandbox/faults", json={"drop_next": 1}, timeout=5).raise_for_status()
    with pytest.raises(requests.ConnectionError):
        post(sb, body())
    assert post(sb, body()).status_code == 201
    stats = requests.get(f"{sb.base_url}/sandbox/stats", timeout=5).json()
    assert stats["members"] == 1
    assert stats["api_requests"] == 3  # every API call counts, the refused and the dropped ones too


# --- issue 11: the sandbox as strict as Constant Contact (bulk import, lookups, COI, limits) ---

IMPORT = "/activities/contacts_json_import"


def post_import(sb, body, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"}
    return requests.post(f"{sb.api_base_url}{IMPORT}", json=body, headers=headers, timeout=30)


def imported(sb, *rows, list_ids=(SEEDED_LIST_ID,)):
    """POST an import, then poll until it is done; returns (the 201 body, every poll's body)."""
    created = post_import(sb, {"import_data": list(rows), "list_ids": list(list_ids)})
    assert created.status_code == 201, created.text
    polls = []
    for _ in range(10):
        answer = get(sb, f"/activities/{created.json()['activity_id']}")
        assert answer.status_code == 200
        polls.append(answer.json())
        if polls[-1]["state"] in ("completed", "failed"):
            return created.json(), polls
    raise AssertionError(f"the import never finished: {polls[-1]}")


def looked_up(sb, email, **params):
    found = get(sb, "/contacts", email=email, status="all", **params).json()["contacts"]
    return found[0] if found else None


def test_an_import_is_an_activity_shaped_as_the_spec_and_completes_after_polls(sb):
    created, polls = imported(sb, {"email": "new@example.com", "first_name": "New", "phone": "555-0100"})
    assert created["state"] == "initialized" and created["percent_done"] == 0
    assert created["_links"] == {"self": {"href": f"/v3/activities/{created['activity_id']}"}}
    assert [p["state"] for p in polls] == ["processing", "completed"]  # import_polls_to_complete=2
    assert 0 < polls[0]["percent_done"] < 100 and polls[-1]["percent_done"] == 100
    assert polls[-1]["status"]["person_count"] == 1 and polls[-1]["activity_errors"] == []
    contact = looked_up(sb, "new@example.com")
    assert contact["email_address"]["permission_to_send"] == "implicit"
    assert contact["email_address"]["opt_in_source"] == "Account" and contact["create_source"] == "Account"
    assert (contact["first_name"], contact["phone_number"]) == ("New", "555-0100")
    assert contact["list_memberships"] == [SEEDED_LIST_ID]


def test_contacts_change_only_when_the_activity_completes_and_polls_are_configurable():
    with Sandbox(access_token=TOKEN, import_polls_to_complete=4) as sb:
        created = post_import(sb, {"import_data": [{"email": "slow@example.com"}], "list_ids": [SEEDED_LIST_ID]}).json()
        states = []
        for _ in range(4):
            states.append(get(sb, f"/activities/{created['activity_id']}").json()["state"])
            if states[-1] != "completed":
                assert looked_up(sb, "slow@example.com") is None  # still being processed
        assert states == ["processing", "processing", "processing", "completed"]
        assert looked_up(sb, "slow@example.com") is not None


def row(**fields):
    return {"import_data": [{"email": "a@example.com", **fields}], "list_ids": [SEEDED_LIST_ID]}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"import_data": [{"email": "a@example.com"}]}, "list_ids is required"),
        ({"list_ids": [SEEDED_LIST_ID]}, "import_data is required"),
        ({"import_data": [], "list_ids": [SEEDED_LIST_ID]}, "import_data is required"),
        ({"import_data": [{"email": "a@example.com"}], "list_ids": [SEEDED_LIST_ID] * 51}, "1 to 50 list ids"),
        ({"import_data": [{"email": "a@example.com"}], "list_ids": ["not-a-uuid"]}, "1 to 50 list ids"),
        ({**row(), "lists": []}, "'lists' is not a property of ContactsJsonImport"),
        (row(email_address="a@example.com"), "import_data[0]: 'email_address' is not a property of JsonImportContact"),
        (row(email="a" * 40 + "@example.com"), "email must be a string of at most 50"),
        (row(street="s" * 256), "street must be a string of at most 255"),
        (row(**{"cf:unknown": "x"}), "custom field 'unknown' does not exist"),
        (row(birthday_month=13, birthday_day=1), "birthday_month must be an integer from 1 to 12"),
        (row(birthday_month=1), "birthday_month and birthday_day must be sent together"),
    ],
)
def test_import_schema_violations_are_400(sb, bad, message):
    answer = post_import(sb, bad)
    assert answer.status_code == 400
    assert any(message in e["error_message"] for e in answer.json()), answer.json()
    assert sb.imports.activities == {}


def test_at_most_25_custom_fields_per_contact_and_unknown_lists_are_404(sb):
    for n in range(26):
        sb.api.seed_custom_field(f"f{n}")
    custom = {f"cf:f{n}": "x" for n in range(25)}
    assert post_import(sb, row(**custom)).status_code == 201
    answer = post_import(sb, row(**custom, **{"cf:f25": "x"}))
    assert answer.status_code == 400 and "at most 25" in answer.text
    answer = post_import(sb, {**row(), "list_ids": ["00000000-0000-4000-8000-000000000000"]})
    assert answer.status_code == 404 and isinstance(answer.json(), list)


def test_the_40000_contact_and_4_mb_limits(sb):
    rows = [{"email": f"c{n}@example.com", "first_name": "F" * 20} for n in range(40_000)]
    assert post_import(sb, {"import_data": rows, "list_ids": [SEEDED_LIST_ID]}).status_code == 201  # ~2.4 MB: fine
    answer = post_import(sb, {"import_data": rows + [{"email": "one-more@example.com"}], "list_ids": [SEEDED_LIST_ID]})
    assert answer.status_code == 400 and "at most 40000" in answer.text
    # the vendor would import the first 4 MB and drop the rest in silence; the sandbox refuses, so we notice
    big = {
        "import_data": [
            {"email": f"c{n}@example.com", "street": "S" * 255, "work_street": "W" * 255} for n in range(7_000)
        ],
        "list_ids": [SEEDED_LIST_ID],
    }
    assert 4_000_000 <= len(json.dumps(big)) < 4 * 1024 * 1024  # "4 MB" read the strict way: 4,000,000 bytes
    answer = post_import(sb, big)
    assert answer.status_code == 413 and "4 MB" in answer.json()[0]["error_message"]
    assert len(sb.imports.activities) == 1


def test_bad_rows_become_activity_errors_naming_the_line_and_the_rest_are_imported(sb):
    _, polls = imported(
        sb,
        {"email": "good@example.com"},
        {"email": "not-an-email"},
        {"first_name": "No Email"},
        {"email": "also.good@example.com"},
    )
    done = polls[-1]
    assert done["state"] == "completed"
    assert len(done["activity_errors"]) == 2
    assert all(isinstance(e, str) for e in done["activity_errors"])  # the spec types them as strings
    assert "line 2 (import_data[1])" in done["activity_errors"][0] and "not-an-email" in done["activity_errors"][0]
    assert "line 3 (import_data[2])" in done["activity_errors"][1]
    assert done["status"]["person_count"] == 2 and done["status"]["correctable_count"] == 2
    assert {c["email_address"] for c in sb.members()} == {"good@example.com", "also.good@example.com"}


@pytest.mark.parametrize("permission", ["implicit", "explicit", "pending_confirmation", "not_set", "temp_hold"])
def test_importing_an_existing_contact_keeps_its_permission_and_updates_only_what_was_sent(sb, permission):
    sb.api.seed_contact("known@example.com", permission_to_send=permission)
    sb.api.contacts["known@example.com"].update(first_name="Kept", last_name="Old")
    imported(sb, {"email": "Known@Example.com", "last_name": "New"})
    contact = looked_up(sb, "known@example.com")
    assert contact["email_address"]["permission_to_send"] == permission
    assert (contact["first_name"], contact["last_name"]) == ("Kept", "New")
    assert contact["list_memberships"] == [SEEDED_LIST_ID]


def test_an_unsubscribed_contact_stays_unsubscribed_and_off_the_list(sb):
    sb.api.seed_contact("gone@example.com", permission_to_send="unsubscribed")
    _, polls = imported(sb, {"email": "gone@example.com", "first_name": "Gone"}, {"email": "fresh@example.com"})
    assert polls[-1]["status"]["cannot_add_to_list_count"] == 1
    contact = looked_up(sb, "gone@example.com")
    assert contact["email_address"]["permission_to_send"] == "unsubscribed" and contact["list_memberships"] == []
    assert [c["email_address"] for c in sb.members()] == ["fresh@example.com"]


def test_an_import_revives_a_deleted_contact_the_pessimistic_reading(sb):
    sb.api.seed_contact("deleted@example.com", permission_to_send="unsubscribed", deleted=True)
    assert get(sb, "/contacts", email="deleted@example.com").json()["contacts"] == []
    imported(sb, {"email": "deleted@example.com"})
    (contact,) = get(sb, "/contacts", email="deleted@example.com").json()["contacts"]
    assert "deleted_at" not in contact and contact["email_address"]["permission_to_send"] == "implicit"
    assert contact["list_memberships"] == [SEEDED_LIST_ID]


def test_unknown_activity_is_404_and_a_fault_makes_the_next_import_fail(sb):
    assert get(sb, "/activities/00000000-0000-4000-8000-000000000000").status_code == 404
    requests.post(f"{sb.base_url}/sandbox/faults", json={"fail_next_imports": 1}, timeout=5).raise_for_status()
    _, polls = imported(sb, {"email": "lost@example.com"})
    assert polls[-1]["state"] == "failed" and polls[-1]["activity_errors"]
    assert sb.members() == []  # a failed job imported nothing
    _, polls = imported(sb, {"email": "lost@example.com"})  # only the next one
    assert polls[-1]["state"] == "completed" and len(sb.members()) == 1


def test_more_than_1000_queued_activities_is_429(sb, monkeypatch):
    from remixcrm_plugin_ctct.sandbox import activities

    monkeypatch.setattr(activities, "MAX_QUEUED", 2)
    answers = [post_import(sb, row()) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 429]


def test_emails_are_stored_lowercase_and_a_mixed_case_query_finds_nothing(sb):
    post(sb, body("Mixed@Example.COM"))
    imported(sb, {"email": "Other@Example.com"})
    assert {c["email_address"] for c in sb.members()} == {"mixed@example.com", "other@example.com"}
    assert get(sb, "/contacts", email="Mixed@Example.COM", status="all").json()["contacts"] == []
    assert looked_up(sb, "mixed@example.com")["email_address"]["address"] == "mixed@example.com"
    assert looked_up(sb, "Other@Example.com") is None


def test_case_blind_lookups_only_when_switched_off():
    with Sandbox(access_token=TOKEN, lowercase_lookups=False) as sb:
        sb.api.seed_contact("Mixed@Example.com")
        assert looked_up(sb, "MIXED@example.com")["email_address"]["address"] == "mixed@example.com"


def test_confirmed_opt_in_makes_new_sign_ups_pending_confirmation():
    with Sandbox(access_token=TOKEN, confirmed_opt_in=True) as sb:
        assert post(sb, body("new@example.com")).status_code == 201
        assert looked_up(sb, "new@example.com")["email_address"]["permission_to_send"] == "pending_confirmation"
    with Sandbox(access_token=TOKEN) as sb:  # off (the default): explicit, opted in by the contact
        post(sb, body("new@example.com"))
        assert looked_up(sb, "new@example.com")["email_address"]["permission_to_send"] == "explicit"
        assert looked_up(sb, "new@example.com")["email_address"]["opt_in_source"] == "Contact"


def test_the_daily_quota_starts_again_at_midnight_utc(sb):
    now = [dt.datetime(2026, 11, 27, 23, 59, 59, tzinfo=dt.UTC).timestamp()]
    sb.faults.wall_clock = lambda: now[0]
    sb.faults.daily_quota = 2
    assert [post(sb, body(f"d{n}@example.com")).status_code for n in range(3)] == [201, 201, 429]
    now[0] += 0.5  # still the same UTC day
    assert post(sb, body("d3@example.com")).json()["error_key"] == "quota_exceeded"
    now[0] += 0.5  # 00:00:00 UTC
    assert post(sb, body("d4@example.com")).status_code == 201


def test_the_token_endpoint_allows_one_request_a_second():
    now = [1000.0]
    with Sandbox(access_token=None, rotating=False, rate_clock=lambda: now[0]) as sb:
        token = sb.authz.seed()["refresh_token"]
        assert refresh(sb, token).status_code == 200
        now[0] += 0.9
        throttled = refresh(sb, token)
        assert throttled.status_code == 429 and sb.authz.token_throttled == 1
        now[0] += 0.1
        assert refresh(sb, token).status_code == 200


def test_privileges_in_the_spec_shape_and_deleted_at_formats(sb):
    privileges = get(sb, "/account/user/privileges").json()
    assert privileges and all(set(p) == {"privilege_id", "privilege_name"} for p in privileges)
    assert all(isinstance(p["privilege_id"], int) for p in privileges)
    assert "contacts:write" in {p["privilege_name"] for p in privileges}
    sb.api.seed_contact("deleted@example.com", deleted=True)
    deleted = looked_up(sb, "deleted@example.com")["deleted_at"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", deleted)  # ContactResource.deleted_at: format date
    sb.api.delete_list(SEEDED_LIST_ID)
    deleted = get(sb, f"/contact_lists/{SEEDED_LIST_ID}").json()["deleted_at"]  # ContactList: a date-time
    assert dt.datetime.fromisoformat(deleted.replace("Z", "+00:00")).tzinfo is not None


def test_status_filters_and_optout_after_find_opt_outs_that_updated_after_misses(sb):
    now = [dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()]
    sb.api.clock = lambda: now[0]
    for email in ("a@example.com", "b@example.com", "c@example.com"):
        sb.api.seed_contact(email)
    sb.api.seed_contact("d@example.com", deleted=True)
    now[0] += 3600
    sb.api.unsubscribe("b@example.com")

    def emails(**params):
        answer = get(sb, "/contacts", **params)
        assert answer.status_code == 200, answer.text
        return sorted(c["email_address"]["address"] for c in answer.json()["contacts"])

    assert emails(status="unsubscribed,deleted") == ["b@example.com", "d@example.com"]
    assert emails() == ["a@example.com", "b@example.com", "c@example.com"]  # not deleted ones by default
    assert emails(updated_after="2026-11-01T00:30:00Z") == []  # an opt-out does not move updated_at
    assert emails(optout_after="2026-11-01T00:30:00Z") == ["b@example.com"]
    assert get(sb, "/contacts", status="explicit").status_code == 400  # not in the spec's enum


def test_the_view_shows_activities(sb):
    created, _ = imported(sb, {"email": "seen@example.com"})
    view = requests.get(f"{sb.base_url}/sandbox/view", timeout=5).json()
    assert [(a["activity_id"], a["state"]) for a in view["activities"]] == [(created["activity_id"], "completed")]
    assert "seen@example.com" in {c["email_address"]["address"] for c in view["contacts"]}


def test_get_contacts_pages_with_a_cursor(sb):
    for n in range(7):
        sb.api.seed_contact(f"p{n}@example.com", permission_to_send="unsubscribed")
    assert len(get(sb, "/contacts").json()["contacts"]) == 7  # under the default 50: one page
    seen, params = [], {"status": "unsubscribed", "limit": 3}
    while True:
        page = get(sb, "/contacts", **params).json()
        assert len(page["contacts"]) <= 3 and page["contacts_count"] == 7
        seen += [c["email_address"]["address"] for c in page["contacts"]]
        if "next" not in page.get("_links", {}):
            break
        params = {"cursor": page["_links"]["next"]["href"].partition("cursor=")[2]}
    assert seen == [f"p{n}@example.com" for n in range(7)]
    assert get(sb, "/contacts", limit=501).status_code == 400
