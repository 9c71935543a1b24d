"""`remixcrm-ctct login` (device and PKCE) and `refresh`, end to end against the sandbox."""

import os
import stat
import subprocess
import sys
import threading

import requests
from conftest import assert_no_secrets

from remixcrm_plugin_ctct import config
from remixcrm_plugin_ctct import runtime as dispatch
from remixcrm_plugin_ctct.admin import cli, login
from remixcrm_plugin_ctct.sandbox import SANDBOX_CLIENT_ID, SEEDED_LIST_ID, Sandbox


def sandbox_config(write_config, sandbox, **values):
    keys = {
        "access_token": None,
        "refresh_token": None,
        "client_secret": None,
        "token_expires_at": None,
        "client_id": SANDBOX_CLIENT_ID,
        "token_url": sandbox.token_url,
        "api_base_url": sandbox.api_base_url,
    }
    return write_config(**{**keys, **values})


def store_state():
    settings, _ = config.load_for_tokens(config.config_path())
    return dispatch.tokens().store.read(), settings


def test_device_login_stores_tokens_and_prints_only_the_expiry(write_config, capsys):
    with Sandbox(access_token=None, device_interval=0, token_rate_limit=None) as sandbox:  # polls at interval 0
        sandbox_config(write_config, sandbox)
        assert cli.main(["login"]) == 0
        out = capsys.readouterr().out
        state, settings = store_state()
        assert sandbox.authz.access_ok(state.access_token) and state.refresh_token in sandbox.authz.refresh_tokens
    assert "enter the code" in out and "logged in; the access token expires at" in out
    assert state.access_token not in out and state.refresh_token not in out
    assert stat.S_IMODE(os.stat(dispatch.tokens().store.path).st_mode) == 0o600


def test_device_login_waits_for_the_user_to_approve(write_config):
    with Sandbox(access_token=None, device_interval=0, auto_approve_device=False, token_rate_limit=None) as sandbox:
        sandbox_config(write_config, sandbox)
        lines = []
        shown = threading.Event()

        def say(text):
            lines.append(text)
            if text.startswith("(or open "):
                shown.set()

        settings, _ = config.load_for_tokens(config.config_path())
        result = {}
        worker = threading.Thread(
            target=lambda: result.update(expires=login.device_login(dispatch.tokens(), settings, say))
        )
        worker.start()
        assert shown.wait(10)
        (complete,) = [line for line in lines if line.startswith("(or open ")]
        approve_url = complete.removeprefix("(or open ").removesuffix(")")
        assert requests.get(approve_url, timeout=5).status_code == 200  # the user approves in a browser
        worker.join(10)
        assert result["expires"] is not None


def test_browser_login_with_pkce_and_a_loopback_redirect(write_config):
    with Sandbox(access_token=None) as sandbox:
        sandbox_config(write_config, sandbox)
        settings, _ = config.load_for_tokens(config.config_path())
        lines, shown, result = [], threading.Event(), {}

        def say(text):
            lines.append(text)
            if text.startswith("open this URL"):
                shown.set()

        worker = threading.Thread(
            target=lambda: result.update(
                expires=login.browser_login(dispatch.tokens(), settings, say, port=0, open_browser=False)
            )
        )
        worker.start()
        assert shown.wait(10)
        (line,) = [line for line in lines if line.startswith("open this URL")]
        url = line.split(": ", 1)[1]
        page = requests.get(url, timeout=5)  # the browser: authorize (auto-approved) → 302 → our callback
        worker.join(10)
        assert page.status_code == 200 and "Logged in" in page.text
        state = dispatch.tokens().store.read()
        assert sandbox.authz.access_ok(state.access_token) and result["expires"] is not None


def test_browser_login_rejects_a_forged_state(write_config):
    with Sandbox(access_token=None) as sandbox:
        sandbox_config(write_config, sandbox)
        settings, _ = config.load_for_tokens(config.config_path())
        lines, shown, errors = [], threading.Event(), []

        def say(text):
            lines.append(text)
            if text.startswith("open this URL"):
                shown.set()

        def run():
            try:
                login.browser_login(dispatch.tokens(), settings, say, port=0, open_browser=False)
            except Exception as e:
                errors.append(e)

        worker = threading.Thread(target=run)
        worker.start()
        assert shown.wait(10)
        redirect = lines[0].split(": ", 1)[1]
        assert requests.get(f"{redirect}?code=stolen&state=forged", timeout=5).status_code == 400
        worker.join(10)
        assert errors and errors[0].error == "invalid_state"
        assert dispatch.tokens().store.read() is None


def test_refresh_command_rotates_and_prints_the_expiry(write_config, capsys):
    with Sandbox(access_token=None) as sandbox:
        pair = sandbox.authz.seed()
        sandbox_config(write_config, sandbox, access_token=pair["access_token"], refresh_token=pair["refresh_token"])
        assert cli.main(["refresh"]) == 0
        state = dispatch.tokens().store.read()
        assert state.refresh_token != pair["refresh_token"] and sandbox.authz.token_calls == 1
    out = capsys.readouterr().out
    assert "refreshed; the access token expires at" in out
    assert_no_secrets(out)
    assert state.access_token not in out


def test_login_without_a_client_id_says_how_to_fix_it(write_config, capsys):
    write_config(client_id=None)
    assert cli.main(["login"]) == 1
    assert "no client_id: set client_id" in capsys.readouterr().out


def test_login_through_the_installed_command(write_config, tmp_path):
    with Sandbox(access_token=None, device_interval=0, token_rate_limit=None) as sandbox:  # polls at interval 0
        path = sandbox_config(write_config, sandbox, list_id=None)  # an admin often logs in before picking a list
        script = os.path.join(os.path.dirname(sys.executable), "remixcrm-ctct")
        proc = subprocess.run(
            [script, "login"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "REMIXCRM_CONFIG": str(path)},
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "logged in" in proc.stdout
    assert SEEDED_LIST_ID not in proc.stdout
