"""Every test runs with its own config and data dir and a fresh plugin state."""

import datetime as dt
import logging
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import responses

from remixcrm_plugin_ctct import config, intake
from remixcrm_plugin_ctct import runtime as dispatch
from remixcrm_plugin_ctct.ctct import client as api_client
from remixcrm_plugin_ctct.hookspecs import make_plugin_manager
from remixcrm_plugin_ctct.record import Event
from remixcrm_plugin_ctct.sandbox import SEEDED_LIST_ID, seen
from remixcrm_plugin_ctct.store import journal_map

LIST_ID = SEEDED_LIST_ID
ACCESS_TOKEN = "SECRET-access-0123456789"
REFRESH_TOKEN = "SECRET-refresh-0123456789"
CLIENT_SECRET = "SECRET-client-secret-0123"
SECRETS = (ACCESS_TOKEN, REFRESH_TOKEN, CLIENT_SECRET)
API = "https://api.cc.email/v3"
SIGN_UP_URL = f"{API}/contacts/sign_up_form"


# --- only reversible writes, ever: every request any sandbox saw in the suite is checked ---
# Each sandbox (in this process, the demo's, gunicorn workers') appends its requests to a file in
# this folder (sandbox/seen.py). After each test the lines it added are checked, so the failure
# names the test; at the end of the session every file is checked once more in full (requests
# that came after a test's teardown, from processes still running).


def pytest_configure(config):
    if not os.environ.get(seen.LOG_DIR_ENV):
        folder = tempfile.mkdtemp(prefix="remixcrm-ctct-sandbox-log-")
        os.environ[seen.LOG_DIR_ENV] = folder
        config.stash[_OWN_LOG_DIR] = folder


_OWN_LOG_DIR = pytest.StashKey[str]()


def _sandbox_logs() -> dict[Path, int]:
    folder = Path(os.environ[seen.LOG_DIR_ENV])
    return {p: p.stat().st_size for p in folder.glob("*.jsonl")}


def _irreversible_since(sizes: dict[Path, int]) -> list[str]:
    found = []
    for path in _sandbox_logs():
        requests, _ = seen.read_file(path, sizes.get(path, 0))
        found += seen.irreversible(requests)
    return found


@pytest.fixture(autouse=True)
def reversible_writes_only():
    """Fails the test (in its teardown) that made a write Constant Contact could not undo."""
    before = _sandbox_logs()
    yield
    found = _irreversible_since(before)
    if found:
        pytest.fail("irreversible write(s) to Constant Contact:\n  " + "\n  ".join(found), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    if not os.environ.get(seen.LOG_DIR_ENV):
        return
    found = _irreversible_since({})
    if found:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "irreversible write(s) to Constant Contact seen by the sandbox:\n  " + "\n  ".join(found)
        if reporter is not None:
            reporter.write_line(text, red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    own = session.config.stash.get(_OWN_LOG_DIR, None)
    if own:
        shutil.rmtree(own, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Point RemixCRM's config and data dir at tmp_path; never touch the real ones."""
    monkeypatch.setenv("REMIXCRM_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("REMIXCRM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    config.forget_default_location()
    dispatch.reset()
    intake.reset()
    api_client.reset_session()
    yield tmp_path
    dispatch.reset(timeout=5)
    api_client.reset_session()


@pytest.fixture
def plain_journal(monkeypatch):
    """Journals written with os.write, never through a map (store/journal_map.py): tests that
    make that write fail, or that fake the file system."""
    monkeypatch.setenv(journal_map.ENV, "0")


def render_config(provider: str | None = "constant_contact", **values: config.toml.Value) -> str:
    """config.toml text; ``values`` become keys of [email_marketing.constant_contact]
    (a value of None leaves the key out; strings are quoted unless wrapped in RAW())."""
    section: dict[str, config.toml.Value] = {
        "access_token": ACCESS_TOKEN,
        "refresh_token": REFRESH_TOKEN,
        "client_id": "app-key-1",
        "client_secret": CLIENT_SECRET,
        "list_id": LIST_ID,
        # far away, so tests about sending are not about refreshing
        "token_expires_at": dt.datetime(2099, 1, 1, tzinfo=dt.UTC),
        # tests about the rate limit set their own; the others should not wait for it
        "requests_per_second": 1000,
        # the guard's lookup is a request of its own: tests about it (test_consent.py) switch it on
        "consent_guard": False,
        # tests of one push per client (sign_up_form) send unknown consent that way; tests of the
        # import lane, the default, pass unknown_consent=None (the key left out) or "implicit"
        "unknown_consent": "explicit",
    }
    return config.config_toml(provider, **{**section, **values})


RAW = config.Raw  # TOML text written as it is
# the settings of a token manager test: an access token to replace and a refresh token to spend
REFRESHABLE = config.Settings(
    list_id="00000000-0000-0000-0000-000000000001",
    access_token="access-0",
    refresh_token="refresh-0",
    client_id="app-key",
    client_secret="app-secret",
)


@pytest.fixture
def write_config(isolated):
    """write_config(provider=..., **keys): (re)write the config so the watcher sees a change."""
    path = isolated / "config.toml"

    def write(provider="constant_contact", text=None, **values):
        path.write_text(text if text is not None else render_config(provider, **values), encoding="utf-8")
        # a rewrite within the same clock tick must still look changed to the stat check
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        return path

    return write


@pytest.fixture
def pm():
    """A plugin manager set up as RemixCRM does: specs, then the installed entry points."""
    manager = make_plugin_manager()
    manager.check_pending()
    return manager


@pytest.fixture
def mocked():
    """``responses`` that fails the test if a registered call was not made.

    Tests flush the sender inside the block: a send that outlived it would reach the network."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        # Every lane first brings the suppression mirror up to date (GET /contacts?status=…): here
        # Constant Contact knows nobody as unsubscribed or deleted. Not an expectation of the test:
        # removed before the check that every registered call was made.
        mirror = rsps.get(
            f"{config.DEFAULT_API_BASE_URL}/contacts",
            json={"contacts": [], "_links": {}},
            match=[responses.matchers.query_param_matcher({"status": "unsubscribed,deleted"}, strict_match=False)],
        )
        mirror_catch_up = rsps.get(
            f"{config.DEFAULT_API_BASE_URL}/contacts",
            json={"contacts": [], "_links": {}},
            match=[responses.matchers.query_param_matcher({"status": "all"}, strict_match=False)],
        )
        yield rsps
        rsps.remove(mirror)
        rsps.remove(mirror_catch_up)


def api_calls(mocked) -> list:
    """The calls a test made through ``mocked``, without the suppression mirror's reads."""
    return [
        c
        for c in mocked.calls
        if not (
            c.request.method == "GET"
            and "/contacts?" in c.request.url
            and ("status=unsubscribed" in c.request.url or "status=all&updated_after" in c.request.url)
        )
    ]


@pytest.fixture
def quick_polls(monkeypatch):
    """An import's activity polled every 10 ms (the sandbox completes it on the 2nd poll)."""
    from remixcrm_plugin_ctct.delivery import imports

    monkeypatch.setattr(imports.Importer, "POLL_DELAYS", (0.01,))


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def add_event(box, contact, event: str, now: float | None = None) -> None:
    """Record one event straight into an outbox: what the fold does with the hook's journal line."""
    box.add_records([Event.of(contact, event, time.time() if now is None else now).to_record()])


# --- PostgreSQL (the shared store for several hosts): a real server, each test its own schema ---
PG_URL = os.environ.get("REMIXCRM_TEST_POSTGRES", "").strip()


@pytest.fixture
def pg_schema():
    """(url, schema) of a fresh schema name on REMIXCRM_TEST_POSTGRES (created by the plugin's own
    migration, dropped after the test); skipped without the variable (.ci/run sets it)."""
    if not PG_URL:
        pytest.skip("REMIXCRM_TEST_POSTGRES is not set: the PostgreSQL tests need a server (.ci/run sets it)")
    import psycopg  # the [postgres] extra: with the variable set, a missing driver is a failure

    name = "t_" + secrets.token_hex(6)
    yield PG_URL, name
    dispatch.reset(timeout=5)  # first: a worker still running would create the schema again
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"remixcrm-ctct {name}",),
        )
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def shared_state(pg_schema, write_config, monkeypatch):
    """This test's RemixCRM on the shared store: REMIXCRM_CTCT_STATE_URL and state_schema set."""
    url, name = pg_schema
    monkeypatch.setenv("REMIXCRM_CTCT_STATE_URL", url)

    def write(**values):
        return write_config(state_schema=name, **values)

    write()
    return url, name, write


def pg_sql(url: str, statement: str, args: tuple = ()) -> list:
    """One statement on a connection of the test's own (not the plugin's)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, args)
        return cur.fetchall() if cur.description else []


def terminate_plugin_sessions(url: str, schema: str) -> int:
    """pg_terminate_backend on every session the plugin opened for ``schema``."""
    return pg_sql(
        url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
        (f"remixcrm-ctct {schema}",),
    )[0][0]
