"""Only reversible writes to Constant Contact. conftest.py applies ``seen.irreversible`` to every
request every sandbox saw in the suite (after each test and at the end); these tests show that
the rule catches what it must and lets through what the plugin needs."""

import json

import pytest
import requests
from conftest import ACCESS_TOKEN

from remixcrm_plugin_ctct.sandbox import Sandbox, seen
from remixcrm_plugin_ctct.sandbox.seen import RequestLog, SeenRequest

AUTH = {"Authorization": f"Bearer {ACCESS_TOKEN}"}


def req(method, path, body=None, query=""):
    return SeenRequest(method, path, query, json.dumps(body).encode() if body is not None else b"")


@pytest.mark.parametrize(
    "request_",
    [
        req("DELETE", "/v3/contacts/4f1e2d3c-0000-0000-0000-000000000001"),
        req("PUT", "/v3/contacts/4f1e2d3c", {"email_address": {"permission_to_send": "unsubscribed"}}),
        req("PATCH", "/v3/contacts/4f1e2d3c", {"first_name": "Ada"}),
        req("POST", "/v3/activities/contact_delete", {"contact_ids": ["4f1e2d3c"]}),
        req("POST", "/v3/contacts/unsubscribe", {"email": "ada@example.com"}),
        req("POST", "/v3/contacts", {"email_address": {"address": "a@example.com"}}),
        req("POST", "/v3/activities/list_delete", {"list_ids": ["x"]}),
        req(
            "POST",
            "/v3/contacts/sign_up_form",
            {"email_address": "a@example.com", "permission_to_send": "unsubscribed"},
        ),
        req("POST", "/v3/activities/contacts_json_import", {"import_data": [{"permission_to_send": "UNSUBSCRIBED"}]}),
    ],
)
def test_the_rule_names_each_irreversible_write(request_):
    (found,) = seen.irreversible([request_])
    assert request_.method in found and request_.path in found  # the offending request, in full


@pytest.mark.parametrize(
    "request_",
    [
        req("POST", "/v3/contacts/sign_up_form", {"email_address": "a@example.com", "list_memberships": ["l"]}),
        req("POST", "/v3/activities/contacts_json_import", {"import_data": [{"email": "a@example.com"}]}),
        req("POST", "/v3/activities/add_list_memberships", {"source": {"contact_ids": ["c"]}, "list_ids": ["l"]}),
        req("POST", "/v3/activities/remove_list_memberships", {"source": {"contact_ids": ["c"]}, "list_ids": ["l"]}),
        req("GET", "/v3/contacts", query="status=unsubscribed&limit=500"),
        req("POST", "/sandbox/unsubscribe", {"email": "a@example.com"}),  # the person, not the plugin
        req("POST", "/oauth2/default/v1/token", None),
    ],
)
def test_the_rule_lets_through_what_the_plugin_needs(request_):
    assert seen.irreversible([request_]) == []


def test_the_sandbox_logs_every_method_and_the_rule_catches_it(tmp_path):
    with Sandbox(access_token=ACCESS_TOKEN) as sb:
        sb.seen = RequestLog(directory="")  # kept out of the suite's check: this test makes them on purpose
        url = f"{sb.api_base_url}/contacts/4f1e2d3c"
        assert requests.delete(url, headers=AUTH, timeout=5).status_code == 405
        assert requests.put(url, json={"first_name": "Ada"}, headers=AUTH, timeout=5).status_code == 405
        requests.get(f"{sb.api_base_url}/contacts", params={"email": "a@example.com"}, headers=AUTH, timeout=5)
        logged = list(sb.seen)
    assert [(r.method, r.path) for r in logged] == [
        ("DELETE", "/v3/contacts/4f1e2d3c"),
        ("PUT", "/v3/contacts/4f1e2d3c"),
        ("GET", "/v3/contacts"),
    ]
    assert logged[1].body == b'{"first_name": "Ada"}' and logged[2].params() == {"email": "a@example.com"}
    assert [f.split(":")[0] for f in seen.irreversible(logged)] == [
        "a DELETE (only reversible writes are allowed)",
        "a write outside ['/v3/activities/add_list_memberships', '/v3/activities/contacts_json_import', "
        "'/v3/activities/remove_list_memberships', '/v3/contacts/sign_up_form']",
    ]


def test_a_sandbox_in_another_process_leaves_its_log_in_a_file(tmp_path):
    log = RequestLog(directory=str(tmp_path))
    log.add("POST", "/v3/contacts/sign_up_form?x=1", b'{"email_address": "a@example.com"}')
    log.add("DELETE", "/v3/contacts/1")
    found, offset = seen.read_file(log.file)
    assert found == list(log) and offset == log.file.stat().st_size
    assert seen.read_file(log.file, offset) == ([], offset)  # from where the last check stopped


def test_the_person_unsubscribes_through_the_sandbox_admin_endpoint():
    with Sandbox(access_token=ACCESS_TOKEN) as sb:
        sb.api.seed_contact("ada@example.com")
        answer = requests.post(f"{sb.base_url}/sandbox/unsubscribe", json={"email": "ADA@example.com"}, timeout=5)
        assert answer.status_code == 200
        (contact,) = sb.api.find("ada@example.com")
        assert contact["email_address"]["permission_to_send"] == "unsubscribed"
        assert contact["email_address"]["opt_out_source"] == "Contact"
        assert (
            requests.post(f"{sb.base_url}/sandbox/unsubscribe", json={"email": "x@y.z"}, timeout=5).status_code == 404
        )
        bad = requests.post(f"{sb.base_url}/sandbox/unsubscribe", json={"email": "a", "source": "Robot"}, timeout=5)
        assert bad.status_code == 400
