"""Opt-outs flow back to RemixCRM, over real HTTP against the sandbox: the worker's poll records
them with the client id, the hook and `remixcrm-ctct optouts` give them, and the next event for
that email costs nothing."""

import datetime as dt
import json
import logging
import threading
import time

import pytest
import requests
from conftest import ACCESS_TOKEN, RAW

from remixcrm_plugin_ctct import flush
from remixcrm_plugin_ctct import runtime as dispatch
from remixcrm_plugin_ctct.admin import cli
from remixcrm_plugin_ctct.delivery.mirror import SYNCED_AT
from remixcrm_plugin_ctct.delivery.send import QUOTA_KEY
from remixcrm_plugin_ctct.sandbox import Sandbox
from remixcrm_plugin_ctct.store import outbox_admin
from remixcrm_plugin_ctct.store.interfaces import Suppression

PERIOD = 15 * 60  # the default optout_poll_minutes, in seconds


@pytest.fixture
def sb():
    with Sandbox(access_token=ACCESS_TOKEN) as sandbox:
        yield sandbox


@pytest.fixture
def configured(write_config, sb):
    def write(**values):
        write_config(api_base_url=sb.api_base_url, **values)

    write()
    return write


def opt_outs(pm, since=None):
    """What a host gets: pluggy's one answer per plugin, flattened."""
    return [e for answer in pm.hook.email_marketing_opt_outs(since=since) for e in answer]


def person_unsubscribes(sb, email):
    """Through the sandbox's admin endpoint, as a script in another process would."""
    answer = requests.post(f"{sb.base_url}/sandbox/unsubscribe", json={"email": email}, timeout=5)
    assert answer.status_code == 200, answer.text


def one_poll(later=PERIOD):
    """The worker's opt-out poll, run as it runs one period after the last pass."""
    return dispatch.runtime().optouts.run(time.time() + later)


def pushed(pm, client_id, email):
    pm.hook.on_client_created(client={"id": client_id, "email": email, "first_name": "Ada", "email_opt_in": True})
    assert flush(30, retries=True)
    assert outbox_admin.for_client(dispatch.runtime().outbox, str(client_id))[-1]["state"] == "delivered"


def test_an_unsubscribe_flows_back_within_one_poll_with_the_client_id(pm, configured, sb, capsys):
    pushed(pm, 7, "Ada@Example.com")
    assert opt_outs(pm) == []
    before = time.time()
    person_unsubscribes(sb, "ada@example.com")
    assert opt_outs(pm) == []  # not yet polled: the hook reads the local mirror only
    assert one_poll() is True
    (entry,) = opt_outs(pm)
    assert set(entry) == {"client_id", "email", "opted_out_at", "source", "recorded_at"}
    assert (entry["client_id"], entry["email"], entry["source"]) == ("7", "ada@example.com", "Contact")
    assert entry["opted_out_at"].tzinfo == dt.UTC and before - 1 <= entry["opted_out_at"].timestamp() <= time.time()
    assert cli.main(["optouts", "--json", "--offline"]) == 0
    (shown,) = json.loads(capsys.readouterr().out)
    assert shown == {
        "recorded_at": entry["recorded_at"].isoformat().replace("+00:00", "Z"),
        "opted_out_at": entry["opted_out_at"].isoformat().replace("+00:00", "Z"),
        "email": "ada@example.com",  # in full: the admin's own data, not a log line
        "client_id": "7",
        "source": "Contact",
    }


@pytest.mark.parametrize("lane", ["implicit", "explicit"])
def test_the_next_event_for_that_email_sends_nothing_and_looks_nothing_up(pm, configured, sb, lane):
    configured(unknown_consent=lane, consent_guard=RAW("true"))  # the explicit lane's guard would look up
    pushed(pm, 7, "ada@example.com")
    person_unsubscribes(sb, "ada@example.com")
    assert one_poll()
    seen = len(sb.seen)
    pm.hook.on_client_created(client={"id": 8, "email": "ADA@example.com", "first_name": "Ada"})  # consent unknown
    pm.hook.on_lead_converted(lead={"id": 3}, client={"id": 9, "email": "ada@example.com"})
    assert flush(30, retries=True)
    after = list(sb.seen)[seen:]
    assert not [r for r in after if "email" in r.params()]  # no lookup
    assert not [r for r in after if r.method != "GET"]  # no write of any kind
    assert sb.api.find("ada@example.com")[0]["email_address"]["permission_to_send"] == "unsubscribed"
    rows = outbox_admin.for_client(dispatch.runtime().outbox, "9")
    assert rows[-1]["state"] == "skipped" and "suppression mirror" in rows[-1]["outcome"]


def test_since_is_an_exclusive_recorded_at_cursor_in_any_spelling(pm, configured, sb):
    for n, email in enumerate(("a@example.com", "b@example.com", "c@example.com")):
        pushed(pm, n + 1, email)
    person_unsubscribes(sb, "a@example.com")
    assert one_poll()
    (first,) = opt_outs(pm)
    mark = first["recorded_at"]
    person_unsubscribes(sb, "b@example.com")
    person_unsubscribes(sb, "c@example.com")
    assert one_poll(2 * PERIOD)
    iso = mark.isoformat()
    spellings = [
        mark,
        iso,
        iso.replace("+00:00", "Z"),
        mark.timestamp(),
        repr(mark.timestamp()),
        mark.replace(tzinfo=None),
    ]
    for since in spellings:
        assert [e["email"] for e in opt_outs(pm, since)] == ["b@example.com", "c@example.com"], since
    assert [e["client_id"] for e in opt_outs(pm, None)] == ["1", "2", "3"]  # oldest recorded first
    newest = opt_outs(pm, mark)[-1]["recorded_at"]
    assert opt_outs(pm, newest) == []  # exclusive: the newest entry is not given twice
    assert [e["email"] for e in opt_outs(pm, mark - dt.timedelta(microseconds=1))][0] == "a@example.com"
    assert len(opt_outs(pm, dt.date(2000, 1, 1))) == 3


@pytest.mark.parametrize(
    "since",
    [True, "yesterday", "", float("nan"), float("inf"), 10**30, "9" * 100, object(), [1], {"since": 1}, b"2026",
     dt.datetime.max, "2026-13-01", "NaN", -1e20],
)  # fmt: skip
def test_a_hostile_since_answers_nothing_with_one_warning_naming_the_fix(pm, configured, logs, since):
    dispatch.runtime().mirror.store.record([Suppression("x@example.com", "unsubscribed", 1.0, "Contact", "c")])
    assert opt_outs(pm, None) != []
    logs.clear()
    assert opt_outs(pm, since) == []
    warnings = [r for r in logs.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "since" in warnings[0].getMessage() and "recorded_at of the newest entry" in warnings[0].getMessage()


@pytest.mark.parametrize("provider", ["mailchimp", "none", None])
def test_another_provider_gets_nothing(pm, write_config, provider):
    write_config(optout_poll_minutes=0)  # no poll is due: no worker reads the config while it changes
    dispatch.runtime().mirror.store.record([Suppression("x@example.com", "unsubscribed", 1.0, "Contact", "c")])
    assert len(opt_outs(pm)) == 1
    write_config(provider=provider)
    assert opt_outs(pm) == []


def test_the_hook_never_raises_into_the_host(pm, configured, logs, monkeypatch):
    store = dispatch.runtime().mirror.store

    def broken(since=None):
        raise OSError("disk on fire")

    monkeypatch.setattr(store, "opt_outs", broken)
    assert opt_outs(pm) == []
    errors = [r for r in logs.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "email_marketing_opt_outs failed" in errors[0].getMessage()


def test_a_host_that_only_asks_gets_the_mirror_seeded_by_the_worker_it_wakes(pm, configured, sb):
    sb.api.seed_contact("gone@example.com", permission_to_send="unsubscribed")
    rt = dispatch.runtime()
    polled = threading.Event()
    run = rt.optouts.run
    rt.optouts.run = lambda now: (done := run(now)) and polled.set() or done  # type: ignore[method-assign]
    assert rt.worker.running_threads == []
    assert opt_outs(pm) == []  # answered at once from the (empty) mirror; a poll is due: the worker wakes
    assert polled.wait(10)
    assert [e["email"] for e in opt_outs(pm)] == ["gone@example.com"]
    assert [e["client_id"] for e in opt_outs(pm)] == [None]  # never pushed by us


def test_a_failed_poll_is_one_warning_and_waits_a_period(configured, sb, logs):
    rt = dispatch.runtime()
    sb.faults.configure({"error_rate": 1.0})
    now = time.time()
    assert rt.optouts.run(now) is False
    assert [r.levelname for r in logs.records if r.levelno >= logging.WARNING] == ["WARNING"]
    assert "trying again in 15 min" in logs.text
    requests_made = sb.faults.requests
    assert rt.optouts.run(now + 60) is False and sb.faults.requests == requests_made  # not before the period
    sb.faults.configure({"error_rate": 0.0})
    assert rt.optouts.run(now + PERIOD) is True
    assert "opt-out poll: the suppression mirror is up to date again" in logs.text


def test_no_poll_during_the_quota_pause_or_when_off(configured, sb):
    rt = dispatch.runtime()
    rt.outbox.set_meta(QUOTA_KEY, repr(time.time() + 3600))
    assert rt.optouts.run(time.time()) is False
    dispatch.reset()
    configured(optout_poll_minutes=0)
    rt = dispatch.runtime()
    assert rt.optouts.due(time.time()) is False and rt.optouts.run(time.time()) is False
    assert sb.faults.requests == 0


def test_status_shows_the_last_poll(configured, sb, capsys):
    assert cli.main(["status"]) == 0
    assert "opt-out poll: every 15 min, never yet" in capsys.readouterr().out
    assert one_poll(0)
    cli.main(["status"])
    assert "opt-out poll: every 15 min, last 20" in capsys.readouterr().out


def test_optouts_command_table_csv_and_a_bad_since(pm, configured, sb, capsys):
    pushed(pm, 7, "ada@example.com")
    person_unsubscribes(sb, "ada@example.com")
    store = dispatch.runtime().mirror.store
    store.set_meta(SYNCED_AT, repr(time.time() - 61))  # the push's own pass is over a minute old
    assert cli.main(["optouts"]) == 0  # so it brings the mirror up to date first: read-only requests
    out = capsys.readouterr().out
    assert "1 opt-out(s)" in out and "ada@example.com" in out and " person " in out
    assert cli.main(["optouts", "--csv", "--offline"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "recorded_at,opted_out_at,email,client_id,source" and lines[1].endswith(
        ",ada@example.com,7,Contact"
    )
    assert cli.main(["optouts", "--since", lines[1].split(",")[0], "--offline"]) == 0
    assert "no opt-outs recorded after" in capsys.readouterr().out
    assert cli.main(["optouts", "--since", "last tuesday"]) == 2
    assert "--since" in capsys.readouterr().err
    sb.faults.configure({"error_rate": 1.0})
    store.set_meta(SYNCED_AT, repr(time.time() - 3600))  # an hour old: the command syncs first, and fails
    assert cli.main(["optouts", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["email"] == "ada@example.com"
    assert "could not bring the opt-outs up to date" in captured.err


# --- the mirror's side: stamps, client ids, what counts as an opt-out ---


def test_stamps_only_grow_so_a_late_older_opt_out_is_not_missed(tmp_path):
    from remixcrm_plugin_ctct.store.outbox import Outbox
    from remixcrm_plugin_ctct.store.suppressions import SqliteSuppressions

    store = SqliteSuppressions(Outbox(tmp_path / "data"))
    store.record([Suppression("new@example.com", "unsubscribed", 2000.0, "Contact", None)], now=5000.0)
    (first,) = store.opt_outs()
    # read late (a poll that was down, the first sync): it happened earlier, and the clock stepped back
    store.record([Suppression("old@example.com", "unsubscribed", 1000.0, "Account", None)], now=4000.0)
    (late,) = store.opt_outs(first.recorded_at)
    assert (late.email, late.opted_out_at, late.source) == ("old@example.com", 1000.0, "Account")
    assert late.recorded_at == 5000.000001  # strictly after every earlier stamp, in whole microseconds
    store.record([Suppression("new@example.com", "unsubscribed", 2000.0, "Contact", "c1")], now=9000.0)
    assert store.opt_outs(late.recorded_at) == []  # the same opt-out read again is not news
    store.record([Suppression("gone@example.com", "deleted", 3000.0, "Account", None, 3000.0)])
    assert [o.email for o in store.opt_outs()] == ["new@example.com", "old@example.com"]  # a deletion alone is not one
    store.record([Suppression("new@example.com", "deleted", 3000.0, "Contact", None, 2000.0)])
    assert [(o.email, o.opted_out_at) for o in store.opt_outs(late.recorded_at)] == [("new@example.com", 2000.0)]
    store.outbox.close()


def test_the_client_id_is_the_newest_one_delivered_and_survives_the_purge(pm, configured, sb):
    pushed(pm, 7, "ada@example.com")
    pushed(pm, 8, "ada@example.com")  # the same person, again, as another client record
    pm.hook.on_client_created(client={"id": 9, "email": "ada@example.com", "email_opt_in": False})  # not pushed
    assert flush(30, retries=True)
    person_unsubscribes(sb, "ada@example.com")
    assert one_poll()
    rt = dispatch.runtime()
    assert [o.client_id for o in rt.mirror.store.opt_outs()] == ["8"]
    outbox_admin.purge(rt.outbox, 0, time.time() + 1)  # emails forgotten in the outbox
    assert [o.client_id for o in rt.mirror.store.opt_outs()] == ["8"]


def test_a_store_that_does_not_answer_never_holds_the_host(pm, configured, logs, monkeypatch):
    """PostgreSQL busy or out of reach (a 3 s connect timeout): the host's thread gets [] at once."""
    stuck = threading.Event()
    rt = dispatch.runtime()
    monkeypatch.setattr(rt.mirror.store, "opt_outs", lambda since=None: stuck.wait() and [])
    try:
        assert opt_outs(pm) == []  # returns although the read never does
        assert "did not answer within" in logs.text and "nothing is lost" in logs.text
    finally:
        stuck.set()


def test_the_hook_reads_the_store_only_off_the_hosts_thread(pm, configured, monkeypatch):
    """Whether a poll is due is read from the store too (the shared time of the last pass): like
    the opt-outs, never on the host's thread, which a busy PostgreSQL would hold for seconds."""
    configured()
    rt = dispatch.runtime()
    readers = []
    real = rt.mirror.store.get_meta

    def get_meta(key):
        readers.append(threading.current_thread())
        return real(key)

    monkeypatch.setattr(rt.mirror.store, "get_meta", get_meta)
    assert opt_outs(pm) == []
    assert readers and threading.current_thread() not in readers
