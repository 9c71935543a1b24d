"""One host's view of the shared store: choosing it (config, environment, a missing driver), the
hooks while PostgreSQL is out of reach, ``migrate-state``, and ``check``/``status``/``retry``/
``flush``/``purge`` against it from any host."""

import json
import logging
import subprocess
import sys
import time

import pytest
from conftest import add_event, render_config

from remixcrm_plugin_ctct import config, flush, forksafe, runtime
from remixcrm_plugin_ctct.admin import cli
from remixcrm_plugin_ctct.hookspecs import make_plugin_manager
from remixcrm_plugin_ctct.sandbox import Sandbox
from remixcrm_plugin_ctct.store.budget import SqliteBudget
from remixcrm_plugin_ctct.store.outbox import Outbox
from remixcrm_plugin_ctct.store.postgres import PgOutbox, open_store, schema
from remixcrm_plugin_ctct.store.tokens import TokenState, TokenStore


def test_state_url_is_checked_masked_and_overridden_by_the_environment(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(render_config(state_url="mysql://u:pw-secret@db/x", state_schema="Bad-Name"))
    loaded = config.load(path)
    assert loaded.status == config.INVALID
    assert (
        "state_url 'mysql://u:***@db/x' must be a URL such as" in loaded.message and "pw-secret" not in loaded.message
    )
    assert "state_schema must be a lower-case name" in loaded.message
    path.write_text(render_config(state_url="postgresql://u:pw@db/x", state_schema="crm_state"))
    assert config.load(path).settings.state_url == "postgresql://u:pw@db/x"
    assert "pw" not in repr(config.load(path).settings)
    assert config.state_location(path, {}) == ("postgresql://u:pw@db/x", "crm_state")
    env = {config.ENV_URL: "postgresql://other@db2/y"}
    assert config.state_location(path, env).url == "postgresql://other@db2/y"
    assert "***" in repr(config.StateLocation("postgresql://u:pw@h/d", "s"))
    path.write_text(render_config())
    assert config.state_location(path, {}) == (None, "remixcrm_ctct")  # SQLite: unchanged, zero-config


def test_importing_and_hooks_on_sqlite_never_import_the_driver(tmp_path):
    probe = (
        "import sys; from remixcrm_plugin_ctct import flush; from remixcrm_plugin_ctct.hookspecs import "
        "make_plugin_manager; pm = make_plugin_manager(); "
        "pm.hook.on_client_created(client={'id': 1, 'email': 'a@example.com'}); "
        "print('psycopg' in sys.modules)"
    )
    (tmp_path / "config.toml").write_text(render_config(api_base_url="http://127.0.0.1:9/v3"))
    env = {"REMIXCRM_CONFIG": str(tmp_path / "config.toml"), "REMIXCRM_DATA_DIR": str(tmp_path / "d"), "PATH": ""}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_the_driver_one_error_names_the_install_command(shared_state, monkeypatch, logs):
    real = forksafe.load_module

    def no_psycopg(name: str):
        if name == "psycopg":
            raise ImportError("No module named 'psycopg'")
        return real(name)

    monkeypatch.setattr(forksafe, "load_module", no_psycopg)
    pm = make_plugin_manager()
    for i in range(3):
        pm.hook.on_client_created(client={"id": str(i), "email": f"n{i}@example.com"})
    assert flush(0.5) is False  # nothing can be sent, nothing is lost: the journal holds them
    errors = [r.getMessage() for r in logs.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and 'pip install "remixcrm-plugin-ctct[postgres]"' in errors[0]
    assert sum(1 for _ in (config.data_dir() / "journal").glob("*.jsonl")) == 1


def test_hooks_stay_fast_while_postgresql_is_unreachable_and_everything_goes_out_once_it_is_back(shared_state, logs):
    url, name, write = shared_state
    with Sandbox() as sandbox:
        write(api_base_url=sandbox.api_base_url, access_token=sandbox.static_token)
        wrong = url.replace("127.0.0.1:5432", "127.0.0.1:1") if "127.0.0.1:5432" in url else url + "-unreachable"
        rt = runtime.runtime()
        assert isinstance(rt.outbox, PgOutbox)
        rt.outbox.db.url = wrong  # PostgreSQL out of reach (the wrong port)...
        pm = make_plugin_manager()
        took = []
        for i in range(200):
            start = time.perf_counter()
            pm.hook.on_client_created(client={"id": str(i), "email": f"u{i}@example.com"})
            took.append(time.perf_counter() - start)
        assert flush(1.0) is False and sandbox.members() == []
        took.sort()
        assert took[len(took) // 2] < 0.0005 and took[-3] < 0.01, took[-5:]  # microseconds, not connects
        errors = [r.getMessage() for r in logs.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "cannot use the shared state store" in errors[0]
        rt.outbox.db.url, rt.outbox.db._retry_at = url, 0.0  # ...then fixed
        assert flush(30)
        assert len(sandbox.members()) == 200


def seed_sqlite_store(data_dir, token: str) -> None:
    """A host's SQLite store as months of running left it: unsent and dead rows, tokens, a budget."""
    from remixcrm_plugin_ctct import payload

    box = Outbox(data_dir)
    add_event(box, payload.Contact("1", "old1@example.com", {"first_name": "A"}, None), "client_created")
    add_event(box, payload.Contact("2", "old2@example.com", {}, True), "client_created")
    add_event(box, payload.Contact("3", "gone@example.com", {}, None), "client_created")
    rows = {r.client_id: r for r in box.claim_many("x", 4)}
    box.dead(rows["3"].id, "400 bad request")
    box.retry_later(rows["1"].id, time.time(), None, count_attempt=False)
    box.retry_later(rows["2"].id, time.time(), None, count_attempt=False)
    box.bump_counter("throttled")
    box.close()
    tokens = TokenStore(data_dir)
    tokens.write(TokenState(token, "refresh-1", time.time() + 86400, seeded_from="x"))
    SqliteBudget(data_dir).update(lambda s: (s._replace(next_slot=time.time(), day="2999-01-01", day_count=42), None))


def test_migrate_state_copies_once_and_the_next_event_flows_through_postgresql(shared_state, capsys):
    url, name, write = shared_state
    with Sandbox() as sandbox:
        write(api_base_url=sandbox.api_base_url, access_token=None, refresh_token=None)
        seed_sqlite_store(config.data_dir(), sandbox.static_token)
        assert cli.main(["migrate-state", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "would copy into PostgreSQL" in out and "rows" in out and " 3\n" in out
        box, tokens, budget = open_store(url, name, config.data_dir())
        assert box.rows() == [] and tokens.read() is None  # a dry run writes nothing
        assert cli.main(["migrate-state"]) == 0
        assert "copied into" in capsys.readouterr().out
        assert cli.main(["migrate-state"]) == 0  # again: nothing twice
        again = capsys.readouterr().out
        assert "already copied         3" in again and "  rows                   0" in again
        assert sorted(r["state"] for r in box.rows()) == ["dead", "pending", "pending"]
        assert tokens.read().access_token == sandbox.static_token and budget.read().day_count == 42
        assert box.counter_today("throttled") == 1
        runtime.reset()
        pm = make_plugin_manager()
        pm.hook.on_client_created(client={"id": "4", "email": "new@example.com"})
        assert flush(30)
        members = {m["email_address"] for m in sandbox.members()}
        assert members == {"old1@example.com", "old2@example.com", "new@example.com"}
        assert {r["client_id"] for r in box.rows() if r["state"] == "delivered"} == {"1", "2", "4"}
        box.close()


def test_check_and_the_admin_commands_work_against_the_shared_store_from_any_host(
    shared_state, capsys, isolated, monkeypatch
):
    url, name, write = shared_state
    with Sandbox() as sandbox:
        write(api_base_url=sandbox.api_base_url, access_token=sandbox.static_token)
        sandbox.hang.set()  # nothing is answered: events stay pending on host a
        box, _, _ = open_store(url, name, isolated / "host-a")
        from remixcrm_plugin_ctct import payload

        add_event(box, payload.Contact("42", "q@example.com", {}, None), "client_created")
        (row,) = box.claim_many("host-a-owner", 1)
        box.retry_later(row.id, time.time() + 3600, "503 unavailable")
        box.close()
        sandbox.hang.clear()
        monkeypatch.setenv("REMIXCRM_DATA_DIR", str(isolated / "host-b"))  # another host asks
        runtime.reset()
        assert cli.main(["status"]) == 0
        out = capsys.readouterr().out
        assert "outbox PostgreSQL postgresql://" in out and "pending          1" in out
        assert cli.main(["status", "--client", "42"]) == 1 and "503 unavailable" in capsys.readouterr().out
        assert cli.main(["retry"]) == 0 and "1 event(s) due now" in capsys.readouterr().out
        assert cli.main(["flush", "--timeout", "30"]) == 0 and "delivered 1" in capsys.readouterr().out
        assert cli.main(["purge"]) == 0 and "forgot the emails" in capsys.readouterr().out
        assert cli.main(["check", "--json"]) == 0
        checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
        store = checks["state store"]
        assert store["status"] == "ok" and f"schema version {schema.LATEST}" in store["detail"]
        assert "2 host(s) active in the last hour" in store["detail"]  # a claimed, b flushed


def test_check_names_an_unreachable_store_and_the_fix(shared_state, capsys, monkeypatch):
    monkeypatch.setenv(config.ENV_URL, "postgresql://nobody:sekrit@127.0.0.1:1/none")
    runtime.reset()
    assert cli.main(["check"]) == 1
    out = capsys.readouterr().out
    assert "✗ state store:" in out and "nobody:***@127.0.0.1:1" in out and "sekrit" not in out
    assert "fix: check state_url" in out
    assert cli.main(["status"]) == 1 and "cannot reach the shared state store" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["migrate-state"], ["migrate-state", "--dry-run"]])
def test_migrate_state_without_a_state_url_says_what_to_set(command, write_config, capsys):
    write_config()
    assert cli.main(command) == 1
    assert "no state_url" in capsys.readouterr().out


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://remix@db/crm?password=pw-secret",  # libpq takes the password from the query too
        "postgresql://remix@db/crm?sslmode=require&sslpassword=pw-secret",
        "host=db user=remix password=pw-secret dbname=crm",  # a key=value conninfo, as the environment may hold
        "host=db password = 'pw-secret' dbname=crm",
        "postgresql://remix:pw@secret@db/crm",  # an '@' the user forgot to encode
    ],
)
def test_every_form_of_password_libpq_accepts_is_masked(url):
    from remixcrm_plugin_ctct.store.backends import Store
    from remixcrm_plugin_ctct.store.postgres.connect import Database, _first_line

    secret = "pw@secret" if "pw@secret" in url else "pw-secret"
    assert secret not in config.mask_url(url) and "***" in config.mask_url(url)
    echoed = _first_line(Exception(f'connection to "{url}" failed: password {secret} rejected'), url)
    assert "secret" not in echoed, echoed
    assert "secret" not in repr(Database(url, "s"))
    assert "secret" not in repr(Store(None, None, None, None, "postgresql", url))  # type: ignore[arg-type]


def test_exit_takes_at_most_about_two_seconds_while_postgresql_hangs(shared_state):
    """A server that takes the connection and never answers (a firewall, a frozen VM): the exit
    handler must not wait out libpq's connect timeout, nor a worker stuck in it."""
    import socket

    url, name, write = shared_state
    with Sandbox() as sandbox, socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes the handshakes; nobody ever answers
        write(api_base_url=sandbox.api_base_url, access_token=sandbox.static_token)
        rt = runtime.runtime()
        pm = make_plugin_manager()
        pm.hook.on_client_created(client={"id": "0", "email": "first@example.com"})
        assert flush(30) and len(sandbox.members()) == 1
        rt.outbox.db.url = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/postgres"
        rt.outbox.db._drop()
        for i in range(1, 20):
            pm.hook.on_client_created(client={"id": str(i), "email": f"u{i}@example.com"})
        start = time.monotonic()
        rt.worker._at_exit()
        took = time.monotonic() - start
        assert took < 2.5, took
