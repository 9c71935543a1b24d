import base64
import hashlib
import json
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from conftest import CLIENT_SECRET, REFRESH_TOKEN, assert_no_secrets

from remixcrm_plugin_ctct.ctct import oauth

TOKEN_URL = "https://authz.constantcontact.com/oauth2/default/v1/token"
ISSUED = {"access_token": "new-access", "refresh_token": "new-refresh", "expires_in": 86400, "token_type": "Bearer"}


def form(call) -> dict:
    return {k: v[0] for k, v in parse_qs(call.request.body).items()}


def test_refresh_with_a_secret_uses_http_basic(mocked):
    mocked.post(TOKEN_URL, json=ISSUED)
    tokens = oauth.refresh(TOKEN_URL, REFRESH_TOKEN, "app-key", CLIENT_SECRET)
    call = mocked.calls[0]
    assert form(call) == {"grant_type": "refresh_token", "refresh_token": REFRESH_TOKEN}
    assert (
        call.request.headers["Authorization"]
        == "Basic " + base64.b64encode(f"app-key:{CLIENT_SECRET}".encode()).decode()
    )
    assert call.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert (tokens.access_token, tokens.refresh_token) == ("new-access", "new-refresh")


def test_refresh_without_a_secret_sends_client_id_in_the_body(mocked):
    mocked.post(TOKEN_URL, json=ISSUED)
    oauth.refresh(TOKEN_URL, REFRESH_TOKEN, "app-key", None)
    call = mocked.calls[0]
    assert form(call) == {"grant_type": "refresh_token", "refresh_token": REFRESH_TOKEN, "client_id": "app-key"}
    assert "Authorization" not in call.request.headers


def test_expires_in_as_a_duration_or_an_epoch_time():
    assert oauth.parse_tokens({"access_token": "a", "expires_in": 3600}, now=1000.0).expires_at == 4600.0
    epoch = oauth.parse_tokens({"access_token": "a", "expires_in": 1_900_000_000}, now=1_800_000_000.0)
    assert epoch.expires_at == 1_900_000_000 and epoch.lifetime == 100_000_000


def test_expiry_from_the_jwt_when_expires_in_is_missing():
    claims = base64.urlsafe_b64encode(json.dumps({"exp": 1_900_000_123}).encode()).rstrip(b"=").decode()
    assert oauth.parse_tokens({"access_token": f"h.{claims}.s"}).expires_at == 1_900_000_123
    assert oauth.parse_tokens({"access_token": "opaque"}).expires_at is None


def test_a_refresh_response_without_a_new_refresh_token_keeps_none():
    assert oauth.parse_tokens({"access_token": "a", "expires_in": 10}).refresh_token is None


@pytest.mark.parametrize(
    "status, body, error, transient",
    [
        (
            400,
            {"error": "invalid_grant", "error_description": "The refresh token is invalid or expired."},
            "invalid_grant",
            False,
        ),
        (
            401,
            {"error": "invalid_client", "error_description": "Client authentication failed."},
            "invalid_client",
            False,
        ),
        (503, "busy", "http_503", True),
        (429, {"error": "rate_limited"}, "rate_limited", True),
    ],
)
def test_token_endpoint_errors(mocked, status, body, error, transient):
    kwargs = {"body": body} if isinstance(body, str) else {"json": body}
    mocked.post(TOKEN_URL, status=status, **kwargs)
    with pytest.raises(oauth.OAuthError) as info:
        oauth.refresh(TOKEN_URL, REFRESH_TOKEN, "app-key", CLIENT_SECRET)
    assert (info.value.error, info.value.transient) == (error, transient)
    assert_no_secrets(str(info.value) + repr(info.value))


def test_unreachable_token_endpoint_is_transient(mocked):
    mocked.post(TOKEN_URL, body=requests.ConnectionError("refused"))
    with pytest.raises(oauth.OAuthError) as info:
        oauth.refresh(TOKEN_URL, REFRESH_TOKEN, "app-key", None)
    assert info.value.transient and info.value.error == "connection_error"


def test_other_endpoints_live_beside_the_token_endpoint():
    assert (
        oauth.endpoint(TOKEN_URL, "device/authorize")
        == "https://authz.constantcontact.com/oauth2/default/v1/device/authorize"
    )
    assert (
        oauth.endpoint("http://127.0.0.1:9/oauth2/default/v1/token", "authorize")
        == "http://127.0.0.1:9/oauth2/default/v1/authorize"
    )


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self):
        return self.now


def poll(mocked, answers, start=None):
    for status, body in answers:
        mocked.post(TOKEN_URL, status=status, json=body)
    clock = FakeClock()
    start = start or {"device_code": "dc", "interval": 2, "expires_in": 600}
    return oauth.poll_device_token(TOKEN_URL, "app-key", start, sleep=clock.sleep, clock=clock), clock


def test_device_polling_waits_while_pending_and_slows_down_when_told(mocked):
    tokens, clock = poll(
        mocked,
        [
            (400, {"error": "authorization_pending"}),
            (400, {"error": "slow_down"}),
            (400, {"error": "authorization_pending"}),
            (200, ISSUED),
        ],
    )
    assert tokens.access_token == "new-access"
    assert clock.sleeps == [2, 2, 7, 7]  # slow_down adds 5 s to the interval, for good
    assert form(mocked.calls[0]) == {"grant_type": oauth.DEVICE_GRANT, "device_code": "dc", "client_id": "app-key"}


@pytest.mark.parametrize("error", ["expired_token", "access_denied"])
def test_device_polling_stops_on_a_final_answer(mocked, error):
    with pytest.raises(oauth.OAuthError) as info:
        poll(mocked, [(400, {"error": "authorization_pending"}), (400, {"error": error})])
    assert info.value.error == error


def test_device_polling_gives_up_when_the_code_expires(mocked):
    with pytest.raises(oauth.OAuthError) as info:
        poll(
            mocked,
            [(400, {"error": "authorization_pending"})],
            start={"device_code": "dc", "interval": 5, "expires_in": 9},
        )
    assert info.value.error == "expired_token"


def test_pkce_pair_and_authorize_url():
    verifier, challenge = oauth.pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert challenge == base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    url = oauth.authorize_url(TOKEN_URL, "app-key", "http://127.0.0.1:8765/callback", "st", challenge)
    parts = urlsplit(url)
    assert parts.path == "/oauth2/default/v1/authorize"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query == {
        "client_id": "app-key",
        "redirect_uri": "http://127.0.0.1:8765/callback",
        "response_type": "code",
        "scope": "contact_data offline_access",
        "state": "st",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
