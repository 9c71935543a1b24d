"""Upstream text (error bodies, OAuth errors, urllib3's request lines) never carries an email
or a token into a log record or the outbox."""

import json
import logging

import pytest
import responses
from conftest import ACCESS_TOKEN, RAW, SIGN_UP_URL, assert_no_secrets

from remixcrm_plugin_ctct import flush
from remixcrm_plugin_ctct.admin import commands
from remixcrm_plugin_ctct.ctct import client as api_client
from remixcrm_plugin_ctct.ctct import oauth, redact
from remixcrm_plugin_ctct.ctct.client import ApiError
from remixcrm_plugin_ctct.sandbox import Sandbox

EMAIL = "Ada.Lovelace@example.com"
RAW_FORMS = ("ada.lovelace@example.com", "ada.lovelace%40example.com")


def assert_no_email(text: str) -> None:
    for form in RAW_FORMS:
        assert form not in text.lower()


def all_records(logs) -> str:
    return "\n".join(f"{r.name} {r.getMessage()}" for r in logs.records)


def test_error_bodies_that_echo_an_email_or_a_token_are_redacted_in_logs_and_status(pm, write_config, mocked, logs):
    logging.getLogger().setLevel(logging.DEBUG)  # every logger, ours, requests' and urllib3's
    write_config()

    def answer(request):
        email = json.loads(request.body)["email_address"]
        if email == EMAIL:  # Constant Contact's 400 echoes the address it refused
            body = [{"error_key": "json.field.invalid", "error_message": f"Email {email} is not valid"}]
            return 400, {}, json.dumps(body)
        # a proxy's text page echoing our request, headers and all (Retry-After: no retry within the test)
        page = f"upstream down\nGET /v3/contacts HTTP/1.1\nAuthorization: Bearer {ACCESS_TOKEN}\n"
        return 503, {"Retry-After": "300"}, page

    mocked.add_callback(responses.POST, SIGN_UP_URL, callback=answer)
    pm.hook.on_client_created(client={"id": "ada", "email": EMAIL})
    pm.hook.on_client_created(client={"id": "bob", "email": "bob@example.com"})
    assert flush(10)
    said = []
    commands.status(said.append, "ada")
    commands.status(said.append, "bob")
    commands.status(said.append)
    text = "\n".join(said) + "\n" + all_records(logs)
    assert "A***@example.com is not valid" in text and "Bearer <redacted>" in text  # still says what happened
    assert_no_email(text)
    assert_no_secrets(text)


def test_a_consent_lookup_logs_no_email_even_at_debug(pm, write_config, logs):
    logging.getLogger().setLevel(logging.DEBUG)
    with Sandbox(access_token=ACCESS_TOKEN) as sandbox:
        write_config(api_base_url=sandbox.api_base_url, consent_guard=RAW("true"))  # consent unknown: looked up first
        pm.hook.on_client_created(client={"id": "ada", "email": EMAIL})
        assert flush(10)
        assert sandbox.members()  # the lookup and the push happened
    records = all_records(logs)
    assert "GET /v3/contacts?email=a***%40example.com" in records  # urllib3's line, masked
    assert_no_email(records)


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"Email {EMAIL} is invalid", "Email A***@example.com is invalid"),
        (
            "/v3/contacts?email=Ada.Lovelace%40example.com&status=all",
            "/v3/contacts?email=A***%40example.com&status=all",
        ),
        (f"Authorization: Bearer {ACCESS_TOKEN}", "Authorization: Bearer <redacted>"),
        (
            '{"access_token": "abc", "refresh_token":"def"}',
            '{"access_token": "<redacted>", "refresh_token":"<redacted>"}',
        ),
        ("jwt eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcDEF123456", "jwt <redacted>"),
        ("list 4a0d4fd2-1c3b-11ee-a2d3-fa163e3d2cf3 not found", "list 4a0d4fd2-1c3b-11ee-a2d3-fa163e3d2cf3 not found"),
        ("line one\r\nline two", "line one line two"),
        # addresses the hook accepts (payload.EMAIL_PATTERN is loose): non-ASCII, URL-encoded, RFC punctuation
        ("zoë@exämple.de is invalid", "z***@exämple.de is invalid"),
        ("/contacts?email=zo%C3%AB%40m%C3%BCnchen.de&status=all", "/contacts?email=z***%40m%C3%BCnchen.de&status=all"),
        ("o'brien@example.com, a!b@example.org", "o***@example.com, a***@example.org"),
    ],
)
def test_upstream_text(text, expected):
    assert redact.upstream_text(text) == expected


def test_upstream_text_is_capped_and_every_error_type_uses_it():
    assert len(redact.upstream_text("x " * 100_000)) <= redact.LIMIT
    long = ApiError(400, "k", f"{EMAIL} " * 1000)
    assert len(long.error_message) <= redact.LIMIT and EMAIL not in str(long)
    opaque = "sbx-rt-Q2hhbmdlZCBteSBtaW5kIGFnYWluIDEyMzQ1Njc4OTA"  # a refresh token's shape
    refused = oauth.OAuthError("invalid_grant", f"refresh token {opaque} for {EMAIL} is invalid")
    assert_no_email(str(refused) + refused.description)
    assert opaque not in str(refused) and "<redacted>" in refused.description


def test_an_address_where_a_long_error_body_is_cut_is_masked_too():
    class Page:  # a proxy's text page; the address straddles where the body used to be cut
        status_code, reason = 503, "Service Unavailable"
        text = "x" * 190 + " Ada.Lovelace@example.com was refused"

        def json(self):
            raise ValueError("not JSON")

    error = ApiError(503, *api_client.parse_error(Page()))
    assert "Lovelace" not in str(error)  # was: "… Ada.Lovelace@exa", the local part in full
    assert "A***@example.com" in str(error)
