"""Token lifecycle: proactive and reactive refresh, rotation, precedence, re-authorisation."""

import datetime as dt
import json
import logging
import time

import pytest
from conftest import ACCESS_TOKEN, CLIENT_SECRET, RAW, REFRESH_TOKEN, SIGN_UP_URL, api_calls, assert_no_secrets

from remixcrm_plugin_ctct import config, flush
from remixcrm_plugin_ctct import runtime as dispatch
from remixcrm_plugin_ctct.ctct.oauth import Tokens
from remixcrm_plugin_ctct.ctct.token_manager import NeedsReauth, TokenManager
from remixcrm_plugin_ctct.store.tokens import TokenStore

TOKEN_URL = "https://authz.constantcontact.com/oauth2/default/v1/token"
SOON = RAW("2000-01-01T00:00:00Z")  # long expired
LATER = RAW("2099-01-01T00:00:00Z")


def issued(n: int, expires_in=86400) -> dict:
    return {
        "access_token": f"access-{n}",
        "refresh_token": f"refresh-{n}",
        "expires_in": expires_in,
        "token_type": "Bearer",
    }


class Sleeps:
    def __init__(self):
        self.calls = []

    def __call__(self, seconds):
        self.calls.append(seconds)


@pytest.fixture
def setup(write_config, isolated):
    """setup(**config keys) -> (settings, manager) for the current config file."""
    sleeps = Sleeps()

    def make(**values):
        path = write_config(**values)
        settings = config.load(path).settings
        manager = TokenManager(TokenStore(isolated / "data" / "constant_contact"), sleep=sleeps)
        manager.sleeps = sleeps
        return settings, manager

    return make


def test_a_fresh_token_is_used_without_calling_the_endpoint(setup, mocked):
    settings, manager = setup(token_expires_at=LATER)
    assert manager.access_token(settings) == ACCESS_TOKEN
    assert len(api_calls(mocked)) == 0


@pytest.mark.parametrize(
    "expiry", [SOON, None, RAW((dt.datetime.now(dt.UTC) + dt.timedelta(minutes=4)).strftime("%Y-%m-%dT%H:%M:%SZ"))]
)
def test_expired_unknown_or_near_expiry_refreshes_first(setup, mocked, expiry):
    mocked.post(TOKEN_URL, json=issued(1))
    settings, manager = setup(token_expires_at=expiry)
    assert manager.access_token(settings) == "access-1"
    state = manager.store.read()  # saved before use, with the rotated refresh token
    assert (state.access_token, state.refresh_token) == ("access-1", "refresh-1")
    assert state.expires_at == pytest.approx(time.time() + 86400, abs=5)
    assert manager.access_token(settings) == "access-1"  # now fresh: no second call
    assert len(api_calls(mocked)) == 1


def test_a_long_lived_refresh_token_is_kept_when_none_comes_back(setup, mocked):
    mocked.post(TOKEN_URL, json={"access_token": "access-1", "expires_in": 86400})
    settings, manager = setup(token_expires_at=SOON)
    manager.access_token(settings)
    assert manager.store.read().refresh_token == REFRESH_TOKEN


def test_epoch_expires_in_is_read_as_a_time(setup, mocked):
    mocked.post(TOKEN_URL, json=issued(1, expires_in=int(time.time()) + 7200))
    settings, manager = setup(token_expires_at=SOON)
    manager.access_token(settings)
    assert manager.store.read().expires_at == pytest.approx(time.time() + 7200, abs=5)


@pytest.mark.parametrize("secret, basic", [(CLIENT_SECRET, True), (None, False)])
def test_server_apps_use_basic_auth_and_public_apps_send_client_id(setup, mocked, secret, basic):
    mocked.post(TOKEN_URL, json=issued(1))
    settings, manager = setup(token_expires_at=SOON, client_secret=secret)
    manager.access_token(settings)
    request = api_calls(mocked)[0].request
    assert ("Authorization" in request.headers) is basic
    assert ("client_id=app-key-1" in request.body) is (not basic)


def test_a_401_refreshes_once_and_resends_once(pm, write_config, mocked, logs):
    write_config(token_expires_at=LATER)
    mocked.post(SIGN_UP_URL, status=401, json={"error_key": "unauthorized", "error_message": "Unauthorized"})
    mocked.post(TOKEN_URL, json=issued(1))
    mocked.post(SIGN_UP_URL, status=201, json={"contact_id": "c-1"})
    pm.hook.on_client_created(client={"id": 1, "email": "ada@example.com"})
    assert flush(5)
    auths = [c.request.headers.get("Authorization") for c in api_calls(mocked) if c.request.url == SIGN_UP_URL]
    assert auths == [f"Bearer {ACCESS_TOKEN}", "Bearer access-1"]
    assert "created contact c-1" in logs.text
    assert_no_secrets(logs.text)


def test_a_second_401_after_a_refresh_pauses_instead_of_looping(pm, write_config, mocked, logs):
    write_config(token_expires_at=LATER)
    mocked.post(SIGN_UP_URL, status=401, json={"error_key": "unauthorized", "error_message": "Unauthorized"})
    mocked.post(TOKEN_URL, json=issued(1))
    pm.hook.on_client_created(client={"id": 1, "email": "ada@example.com"})
    assert flush(5)
    assert len([c for c in api_calls(mocked) if c.request.url == SIGN_UP_URL]) == 2  # one send, one resend, no more
    assert "Constant Contact refuses even a freshly refreshed token (401 unauthorized: Unauthorized)" in logs.text
    assert dispatch.runtime().outbox.due_count() == 1  # kept, not dropped
    assert dispatch.runtime().worker.paused is not None


def test_another_process_already_refreshed(setup, mocked):
    settings, manager = setup(token_expires_at=LATER)
    manager.access_token(settings)  # seeds the store from the config
    # another process refreshed meanwhile: its pair is in the store
    manager.store.write(
        manager.store.read().with_(access_token="theirs", refresh_token="their-refresh", expires_at=time.time() + 86400)
    )
    assert manager.after_unauthorized(settings, rejected=ACCESS_TOKEN) == "theirs"
    assert len(api_calls(mocked)) == 0  # and the endpoint was not called: their refresh token stays valid


def test_invalid_grant_means_needs_reauthorisation_once_and_no_more_calls(setup, mocked, logs):
    mocked.post(
        TOKEN_URL,
        status=400,
        json={"error": "invalid_grant", "error_description": "The refresh token is invalid or expired."},
    )
    settings, manager = setup(token_expires_at=SOON)
    for _ in range(3):
        with pytest.raises(NeedsReauth):
            manager.access_token(settings)
    assert len(api_calls(mocked)) == 1
    errors = [r.getMessage() for r in logs.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert (
        "needs re-authorisation" in errors[0]
        and "run `remixcrm-ctct login`, or paste a new access and refresh token in Settings" in errors[0]
    )
    assert_no_secrets(logs.text)


def test_invalid_grant_after_someone_else_rotated_uses_their_tokens(setup, mocked):
    settings, manager = setup(token_expires_at=SOON)

    def rotated_elsewhere(request):
        # e.g. `remixcrm-ctct login` in another process wrote a new pair while we were asking
        manager.store.write(
            manager.store.read().with_(
                access_token="theirs", refresh_token="their-refresh", expires_at=time.time() + 86400
            )
        )
        return 400, {}, json.dumps({"error": "invalid_grant"})

    mocked.add_callback("POST", TOKEN_URL, callback=rotated_elsewhere)
    assert manager.access_token(settings) == "theirs"


def test_reauthorisation_clears_when_new_tokens_are_pasted_in_settings(setup, mocked, logs):
    mocked.post(TOKEN_URL, status=400, json={"error": "invalid_grant"})
    settings, manager = setup(token_expires_at=SOON)
    with pytest.raises(NeedsReauth):
        manager.access_token(settings)
    settings, _ = setup(access_token="pasted-access", refresh_token="pasted-refresh", token_expires_at=LATER)
    assert manager.access_token(settings) == "pasted-access"
    assert "new tokens found in the config (pasted in Settings); they replace the stored ones" in logs.text


def test_reauthorisation_clears_after_a_login(setup, mocked):
    mocked.post(TOKEN_URL, status=400, json={"error": "invalid_grant"})
    settings, manager = setup(token_expires_at=SOON)
    with pytest.raises(NeedsReauth):
        manager.access_token(settings)
    manager.save_login(settings, Tokens("logged-in", "login-refresh", time.time() + 86400, 86400))
    assert manager.access_token(settings) == "logged-in"


def test_the_store_wins_until_the_config_tokens_change(setup, mocked):
    settings, manager = setup(token_expires_at=LATER)
    manager.save_login(settings, Tokens("logged-in", "login-refresh", time.time() + 86400, 86400))
    assert manager.access_token(settings) == "logged-in"  # config unchanged: the newer login wins
    settings, _ = setup(access_token="pasted", refresh_token="pasted-refresh", token_expires_at=LATER)
    assert manager.access_token(settings) == "pasted"  # a new pair in Settings wins over the store


def test_no_refresh_token_means_needs_reauthorisation(setup, mocked):
    settings, manager = setup(token_expires_at=SOON, refresh_token=None)
    with pytest.raises(NeedsReauth, match="no refresh_token"):
        manager.access_token(settings)
    assert len(api_calls(mocked)) == 0


def test_no_token_anywhere_means_needs_reauthorisation(setup, mocked):
    settings, manager = setup(access_token=None, refresh_token=None)
    with pytest.raises(NeedsReauth, match="there is no access token"):
        manager.access_token(settings)


def test_never_more_than_one_token_call_per_second(setup, mocked):
    mocked.post(TOKEN_URL, json=issued(1))
    mocked.post(TOKEN_URL, json=issued(2))
    settings, manager = setup(token_expires_at=SOON)
    manager.refresh(settings, force=True)
    manager.refresh(settings, force=True)
    assert len(manager.sleeps.calls) == 1 and 0.5 < manager.sleeps.calls[0] <= 1.0


def test_clients_wait_while_reauthorisation_is_needed_and_go_after_a_login(pm, write_config, mocked, logs):
    mocked.post(TOKEN_URL, status=400, json={"error": "invalid_grant"})
    write_config(token_expires_at=SOON)
    for n in range(3):
        pm.hook.on_client_created(client={"id": n, "email": f"c{n}@example.com"})
    assert flush(5)
    rt = dispatch.runtime()
    assert rt.outbox.due_count() == 3 and "needs re-authorisation" in rt.worker.paused.reason
    assert len(api_calls(mocked)) == 1  # one refresh attempt, then no more token calls
    for n in range(3):
        mocked.post(SIGN_UP_URL, status=201, json={"contact_id": f"c-{n}"})
    settings = config.load(config.config_path()).settings
    rt.tokens.save_login(settings, Tokens("logged-in", "r", time.time() + 86400, 86400))  # `remixcrm-ctct login`
    assert flush(5)  # resumes by itself: the token store changed
    sent = sorted(
        json.loads(c.request.body)["email_address"] for c in api_calls(mocked) if c.request.url == SIGN_UP_URL
    )
    assert sent == ["c0@example.com", "c1@example.com", "c2@example.com"]
    assert rt.outbox.due_count() == 0
