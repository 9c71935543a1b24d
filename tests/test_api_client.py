import json
import traceback

import pytest
import requests
from conftest import ACCESS_TOKEN, API, LIST_ID, SIGN_UP_URL, assert_no_secrets

from remixcrm_plugin_ctct.ctct import client as api_client
from remixcrm_plugin_ctct.ctct.client import ApiError, CtctClient
from remixcrm_plugin_ctct.delivery import retry_policy

BODY = {"email_address": "ada@example.com", "list_memberships": [LIST_ID]}


def client():
    return CtctClient(API + "/", ACCESS_TOKEN)


@pytest.mark.parametrize("status, created", [(201, True), (200, False)])
def test_sign_up_reads_status_and_contact_id(mocked, status, created):
    mocked.post(SIGN_UP_URL, status=status, json={"contact_id": "c-1", "action": "whatever"})
    result = client().sign_up(BODY)
    assert (result.status, result.created, result.contact_id) == (status, created, "c-1")


def test_request_carries_json_token_user_agent_and_timeouts(mocked):
    mocked.post(SIGN_UP_URL, status=201, json={"contact_id": "c-1"})
    client().sign_up(BODY)
    request = mocked.calls[0].request
    assert json.loads(request.body) == BODY
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert request.headers["User-Agent"].startswith("remixcrm-plugin-ctct/")
    assert request.req_kwargs["timeout"] == (api_client.CONNECT_TIMEOUT, api_client.READ_TIMEOUT)


@pytest.mark.parametrize(
    "status, kwargs, key, message",
    [
        (
            400,
            {"json": [{"error_key": "json.field.invalid", "error_message": "list_memberships is required"}]},
            "json.field.invalid",
            "list_memberships is required",
        ),
        (
            400,
            {"json": [{"error_key": "a", "error_message": "one"}, {"error_key": "b", "error_message": "two"}]},
            "a",
            "one (+1 more)",
        ),
        (401, {"json": {"error_key": "unauthorized", "error_message": "Unauthorized"}}, "unauthorized", "Unauthorized"),
        (
            429,
            {"json": {"error_key": "throttled", "error_message": "Too Many Requests"}},
            "throttled",
            "Too Many Requests",
        ),
        (502, {"body": "<html>Bad Gateway</html>"}, "http_502", "<html>Bad Gateway</html>"),
        (503, {"body": ""}, "http_503", "Service Unavailable"),
    ],
)
def test_error_bodies_of_every_shape(mocked, status, kwargs, key, message):
    mocked.post(SIGN_UP_URL, status=status, **kwargs)
    with pytest.raises(ApiError) as info:
        client().sign_up(BODY)
    assert (info.value.status, info.value.error_key, info.value.error_message) == (status, key, message)


@pytest.mark.parametrize(
    "exc, key",
    [(requests.ConnectionError("reset by peer"), "connection_error"), (requests.ReadTimeout("slow"), "timeout")],
)
def test_transport_failures_become_api_errors(mocked, exc, key):
    mocked.post(SIGN_UP_URL, body=exc)
    with pytest.raises(ApiError) as info:
        client().sign_up(BODY)
    assert info.value.status is None and info.value.error_key == key
    assert retry_policy.classify(info.value.status, info.value.error_key).action == retry_policy.RETRY


def test_fix_texts_for_the_statuses_admins_meet():
    assert "List ID" in ApiError(400, "k", "m").fix
    assert "remixcrm-ctct login" in ApiError(401, "k", "m").fix
    assert ApiError(500, "k", "m").fix is None


def test_secrets_stay_out_of_reprs_and_errors(mocked):
    mocked.post(SIGN_UP_URL, status=401, json={"error_key": "unauthorized", "error_message": "Unauthorized"})
    with pytest.raises(ApiError) as info:
        client().sign_up(BODY)
    assert_no_secrets(repr(client()) + repr(info.value) + "".join(traceback.format_exception(info.value)))


def test_one_session_is_shared_until_reset():
    first = api_client.session()
    assert api_client.session() is first
    api_client.reset_session()
    assert api_client.session() is not first


def test_error_text_is_redacted_where_the_error_is_built(mocked):
    echo = f"ada.lovelace@example.com is invalid (request had token {ACCESS_TOKEN})\n" + "x" * 5000
    mocked.post(SIGN_UP_URL, status=400, json=[{"error_key": "json.field.invalid", "error_message": echo}])
    with pytest.raises(ApiError) as info:
        client().sign_up(BODY)
    message = info.value.error_message
    assert message.startswith("a***@example.com is invalid (request had token <redacted>)")
    assert "\n" not in message and len(message) <= 300
    assert_no_secrets(str(info.value))
