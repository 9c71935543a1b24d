"""The sandbox behaves like Constant Contact as far as the facts file and the vendor spec go."""

import pytest
import requests

from remixcrm_plugin_ctct.sandbox import SANDBOX_CLIENT_ID, SEEDED_LIST_ID, Sandbox

TOKEN = "static-test-token"


@pytest.fixture
def sb():
    with Sandbox(access_token=TOKEN) as sandbox:
        yield sandbox


def post(sb, body, token=TOKEN, **kwargs):
    return requests.post(f"{sb.api_base_url}/contacts/sign_up_form", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=5, **kwargs)


def get(sb, path, token=TOKEN, **params):
    return requests.get(f"{sb.api_base_url}{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=5)


def body(email="ada@example.com", **fields):
    return {"email_address": email, "list_memberships": [SEEDED_LIST_ID], **fields}


def test_upsert_creates_then_updates_and_appends_lists(sb):
    first = post(sb, body(first_name="Ada"))
    second = post(sb, body("ADA@example.com", last_name="Lovelace"))
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["contact_id"] == second.json()["contact_id"]
    (contact,) = sb.members()
    assert (contact["first_name"], contact["last_name"]) == ("Ada", "Lovelace")  # partial update


@pytest.mark.parametrize("bad, message", [
    ({"email_address": "a" * 60 + "@example.com"}, "email_address must be a string of at most 50"),
    ({"phone_number": "1" * 26}, "phone_number must be a string of at most 25"),
    ({"street_addresses": []}, "'street_addresses' is not a property of ContactCreateOrUpdateInput"),
    ({"list_memberships": []}, "list_memberships must hold 1 to 50 list ids"),
])
def test_schema_violations_are_400_with_constant_contacts_error_array(sb, bad, message):
    answer = post(sb, {**body(), **bad})
    assert answer.status_code == 400
    errors = answer.json()
    assert isinstance(errors, list) and any(message in e["error_message"] for e in errors)


def test_wrong_content_type_is_415_and_unknown_list_is_404(sb):
    answer = requests.post(f"{sb.api_base_url}/contacts/sign_up_form", data="x", headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}, timeout=5)
    assert answer.status_code == 415
    assert post(sb, {**body(), "list_memberships": ["00000000-0000-4000-8000-000000000000"]}).status_code == 404


def test_sign_up_re_subscribes_an_unsubscribed_contact_as_the_real_service_does(sb):
    sb.api.seed_contact("gone@example.com", permission_to_send="unsubscribed")
    assert get(sb, "/contacts", email="gone@example.com").json()["contacts"][0]["email_address"]["permission_to_send"] == "unsubscribed"
    assert post(sb, body("Gone@Example.com")).status_code == 200
    assert get(sb, "/contacts", email="gone@example.com").json()["contacts"][0]["email_address"]["permission_to_send"] == "explicit"


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
        assert answer.status_code == 401 and answer.json() == {"error_key": "unauthorized", "error_message": "Unauthorized"}


def refresh(sb, refresh_token):
    return requests.post(sb.token_url, data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": SANDBOX_CLIENT_ID}, timeout=5)


def test_rotating_refresh_tokens_expire_every_earlier_one():
    with Sandbox(access_token=None, rotating=True) as sb:
        old = sb.authz.seed()["refresh_token"]
        new = refresh(sb, old).json()["refresh_token"]
        assert new != old
        again = refresh(sb, old)
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
        assert refresh(sb, new).status_code == 200


def test_long_lived_refresh_tokens_come_back_unchanged():
    with Sandbox(access_token=None, rotating=False) as sb:
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
