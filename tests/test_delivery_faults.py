"""Faults over real HTTP on loopback: every accepted event is delivered once or more, none is
lost, and no two sends for one contact are ever in flight at the same time."""

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest
from conftest import ACCESS_TOKEN, RAW

from remixcrm_plugin_ctct import flush
from remixcrm_plugin_ctct import runtime as dispatch
from remixcrm_plugin_ctct.ctct import client as api_client
from remixcrm_plugin_ctct.delivery import retry_policy
from remixcrm_plugin_ctct.sandbox import SANDBOX_CLIENT_ID, Sandbox
from remixcrm_plugin_ctct.store import outbox_admin


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(retry_policy, "BASE_DELAY", 0.01)
    monkeypatch.setattr(retry_policy, "MAX_DELAY", 0.05)


@pytest.fixture
def sandbox():
    with Sandbox(access_token=ACCESS_TOKEN) as sb:
        yield sb


def fire(pm, n, prefix="c"):
    for i in range(n):
        pm.hook.on_client_created(client={"id": f"{prefix}{i}", "email": f"{prefix}{i}@example.com", "first_name": "F"})
    return {f"{prefix}{i}@example.com" for i in range(n)}


def drain(timeout=30):
    return flush(timeout, retries=True)


def assert_all_delivered_once_at_a_time(sandbox, emails):
    members = {c["email_address"].lower() for c in sandbox.members()}
    if not emails <= members:  # say where the missing ones are
        print(dispatch.runtime().outbox.rows())
    assert emails <= members, f"lost: {sorted(emails - members)}"
    by_email = defaultdict(list)
    for call in sandbox.calls:
        by_email[call["email"]].append((call["start"], call["end"]))
    for email, spans in by_email.items():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, f"two sends for {email} overlapped"


def test_a_5xx_storm(pm, write_config, sandbox, fast_retries):
    write_config(api_base_url=sandbox.api_base_url)
    sandbox.faults.fail_next(15, 503)
    emails = fire(pm, 5)
    assert drain()
    assert_all_delivered_once_at_a_time(sandbox, emails)


def test_connection_resets(pm, write_config, sandbox, fast_retries):
    write_config(api_base_url=sandbox.api_base_url)
    sandbox.faults.configure({"drop_next": 6, "drop_rate": 0.2})
    emails = fire(pm, 8)
    assert drain()
    assert_all_delivered_once_at_a_time(sandbox, emails)


def test_hangs_past_the_read_timeout(pm, write_config, sandbox, fast_retries, monkeypatch):
    monkeypatch.setattr(api_client, "READ_TIMEOUT", 0.2)
    write_config(api_base_url=sandbox.api_base_url)
    sandbox.faults.configure({"hang_next": 2})
    emails = fire(pm, 4)
    assert drain()
    assert_all_delivered_once_at_a_time(sandbox, emails)


def test_throttled_bursts_are_retried(pm, write_config, sandbox, fast_retries):
    write_config(api_base_url=sandbox.api_base_url)  # our governor is raised to 1000/s here...
    sandbox.faults.rate_limit = 4  # ...so the sandbox's 4/s answers 429 throttled
    emails = fire(pm, 12)
    assert drain(60)
    assert sandbox.faults.throttled > 0
    assert_all_delivered_once_at_a_time(sandbox, emails)
    rt = dispatch.runtime()
    assert rt.outbox.counter_today("throttled") == sandbox.faults.throttled  # counted, for `status`
    assert (
        rt.governors.for_settings(dispatch.watcher().current().settings).spacing() > 1
    )  # and every process slows down


def test_a_403_pauses_sending_with_one_error_and_loses_nothing(pm, write_config, logs):
    with Sandbox(access_token=None) as sandbox:
        sandbox.authz.scope = "offline_access"  # a token without the contact_data scope: every call is 403
        pair = sandbox.authz.seed()
        tokens = dict(
            api_base_url=sandbox.api_base_url,
            token_url=sandbox.token_url,
            client_id=SANDBOX_CLIENT_ID,
            client_secret=None,
        )
        write_config(**tokens, access_token=pair["access_token"], refresh_token=pair["refresh_token"])
        emails = fire(pm, 5)
        assert flush(10)  # a pause counts as settled: its cause needs a fix
        rt = dispatch.runtime()
        counts = outbox_admin.summary(rt.outbox).counts
        assert counts.get("dead", 0) == 0 and counts.get("pending") == 5
        assert max(r["attempts"] for r in rt.outbox.rows()) == 0  # no attempt counted against a row
        pause = rt.worker.paused
        assert pause is not None and "403" in pause.reason
        assert pause.until == pytest.approx(time.time() + retry_policy.FORBIDDEN_RECHECK, abs=15)  # re-probed later too
        errors = [r for r in logs.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and api_client.FIXES[403] in errors[0].getMessage()
        sandbox.authz.scope = "contact_data offline_access"  # the admin logs in again, with the scope
        pair = sandbox.authz.seed()
        write_config(**tokens, access_token=pair["access_token"], refresh_token=pair["refresh_token"])
        assert drain()
        assert_all_delivered_once_at_a_time(sandbox, emails)
        assert outbox_admin.summary(rt.outbox).counts.get("delivered") == 5


def test_the_governor_keeps_steady_load_free_of_throttling(pm, write_config, sandbox):
    write_config(api_base_url=sandbox.api_base_url, requests_per_second=RAW("4"))
    sandbox.faults.rate_limit = 4
    emails = fire(pm, 10)
    assert drain(30)
    assert sandbox.faults.throttled == 0
    assert_all_delivered_once_at_a_time(sandbox, emails)


def test_quota_exceeded_pauses_everything_until_midnight_and_drops_nothing(pm, write_config, sandbox, logs):
    write_config(api_base_url=sandbox.api_base_url)
    sandbox.faults.daily_quota = 4  # the suppression mirror's seed, then 3 sign-ups
    fire(pm, 6)
    assert flush(10)
    rt = dispatch.runtime()
    assert len(sandbox.members()) == 3
    assert outbox_admin.summary(rt.outbox).counts.get("pending") == 3  # kept for tomorrow
    assert "all sending to Constant Contact is paused until 00:00 UTC; nothing is dropped" in logs.text
    assert logs.text.count("paused until 00:00 UTC") == 1
    assert rt.worker.paused.until == retry_policy.next_utc_midnight(time.time())


def test_a_401_mid_stream_refreshes_once_and_loses_nothing(pm, write_config):
    with Sandbox(access_token=None) as sandbox:
        pair = sandbox.authz.seed()
        write_config(
            api_base_url=sandbox.api_base_url,
            token_url=sandbox.token_url,
            client_id=SANDBOX_CLIENT_ID,
            client_secret=None,
            access_token=pair["access_token"],
            refresh_token=pair["refresh_token"],
        )
        emails = fire(pm, 3, "a")
        assert drain()
        sandbox.authz.expire_all_access_tokens()  # revoked early, before its expiry time
        emails |= fire(pm, 3, "b")
        assert drain()
        assert sandbox.authz.token_calls == 1 and sandbox.unauthorized >= 1
        assert_all_delivered_once_at_a_time(sandbox, emails)


HOST = r"""
import os, sys, time
from remixcrm_plugin_ctct import flush
from remixcrm_plugin_ctct.delivery import retry_policy
from remixcrm_plugin_ctct.hookspecs import make_plugin_manager
retry_policy.BASE_DELAY, retry_policy.MAX_DELAY = 0.01, 0.05
pm = make_plugin_manager()
prefix, count = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
for i in range(count):
    pm.hook.on_client_created(client={"id": f"{prefix}{i}", "email": f"{prefix}{i}@example.com"})
    print(f"returned {i}", flush=True)
if len(sys.argv) > 3 and sys.argv[3] == "flush":
    flush(60, retries=True)  # until nothing is left, retries included
print("done", flush=True)
"""


def start_hosts(env, specs):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOST, *spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for spec in specs
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    return procs


def host_env(isolated, path):
    # faulthandler: a crash of a host (SIGSEGV at exit, say) prints every thread's stack to its stderr
    env = {**os.environ, "REMIXCRM_CONFIG": str(path), "REMIXCRM_DATA_DIR": str(isolated / "data")}
    return {**env, "PYTHONFAULTHANDLER": "1"}


def run_flush(env):
    script = os.path.join(os.path.dirname(sys.executable), "remixcrm-ctct")
    return subprocess.run([script, "flush", "--timeout", "60"], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("hosts", [2, 4])
def test_processes_sharing_one_outbox(write_config, sandbox, isolated, hosts):
    sandbox.faults.latency = 0.01
    path = write_config(api_base_url=sandbox.api_base_url)
    procs = start_hosts(host_env(isolated, path), [(f"p{n}-", "25", "flush") for n in range(hosts)])
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip().endswith("done"), err
    emails = {f"p{n}-{i}@example.com" for n in range(hosts) for i in range(25)}
    assert_all_delivered_once_at_a_time(sandbox, emails)


def test_api_down_while_the_host_exits_then_back_later(write_config, sandbox, isolated):
    path = write_config(api_base_url="http://127.0.0.1:9/v3")  # nothing listens there: the API is down
    env = host_env(isolated, path)
    (proc,) = start_hosts(env, [("down", "10")])
    started = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and time.monotonic() - started < 15, err
    write_config(api_base_url=sandbox.api_base_url)  # the API is back
    (proc,) = start_hosts(env, [("back", "1", "flush")])  # the next host's first event picks up the rest
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert_all_delivered_once_at_a_time(sandbox, {f"down{i}@example.com" for i in range(10)} | {"back0@example.com"})


def test_kill_minus_9_in_the_middle_of_a_burst_loses_nothing_that_returned(write_config, sandbox, isolated):
    sandbox.faults.latency = 0.05  # slow enough that most sends are still waiting when the host dies
    path = write_config(api_base_url=sandbox.api_base_url)
    env = host_env(isolated, path)
    (proc,) = start_hosts(env, [("k", "400")])
    returned = -1
    while returned < 150:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        if line.startswith("returned "):
            returned = int(line.split()[1])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    result = run_flush(env)  # a new process adopts the dead one's journal and leases
    assert result.returncode == 0, result.stdout + result.stderr
    assert_all_delivered_once_at_a_time(sandbox, {f"k{i}@example.com" for i in range(returned + 1)})
