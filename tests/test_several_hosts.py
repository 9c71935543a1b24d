"""Several hosts on one PostgreSQL store: processes with their own data dirs (their own journals,
tokens.json, governor file if they had one) and one ``state_url``, against the sandbox with
rotating refresh tokens and Constant Contact's 4 requests/s."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import RAW, pg_sql, terminate_plugin_sessions

from remixcrm_plugin_ctct.sandbox import SANDBOX_CLIENT_ID, Sandbox
from remixcrm_plugin_ctct.store.postgres import open_store

HOST = r"""
import sys
from remixcrm_plugin_ctct import flush
from remixcrm_plugin_ctct.hookspecs import make_plugin_manager
pm = make_plugin_manager()
name = sys.argv[1]
print("ready", flush=True)
for line in sys.stdin:
    command, *args = line.split()
    if command == "hooks":
        first, count = int(args[0]), int(args[1])
        for i in range(first, first + count):
            pm.hook.on_client_created(client={"id": f"{name}-{i}", "email": f"{name}.{i}@example.com"})
        print("accepted", flush=True)
    elif command == "flush":
        print("flushed" if flush(float(args[0])) else "timeout", flush=True)
"""


class Hosts:
    """``count`` RemixCRM hosts: one process each, its own data dir, the shared config and store."""

    def __init__(self, isolated, config_path, url: str, count: int):
        self.procs = []
        for n in range(count):
            env = {
                **os.environ,
                "REMIXCRM_CONFIG": str(config_path),
                "REMIXCRM_DATA_DIR": str(isolated / f"host-{n}"),
                "REMIXCRM_CTCT_STATE_URL": url,
            }
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", HOST, f"h{n}"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
        for p in self.procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()

    def send(self, n: int, line: str) -> None:
        self.procs[n].stdin.write(line + "\n")
        self.procs[n].stdin.flush()

    def answer(self, n: int) -> str:
        return self.procs[n].stdout.readline().strip()

    def ask_all(self, line: str) -> list[str]:
        for n in range(len(self.procs)):
            self.send(n, line)
        return [self.answer(n) for n in range(len(self.procs))]

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture
def hosts(shared_state, isolated):
    url, name, write = shared_state
    made = []
    box, _, _ = open_store(url, name, isolated / "setup")
    box.pending_count()  # the schema exists before the hosts start (the tests look into it)
    box.close()

    def start(sandbox: Sandbox, count: int = 3, **values) -> Hosts:
        path = write(
            api_base_url=sandbox.api_base_url,
            token_url=sandbox.token_url,
            client_id=SANDBOX_CLIENT_ID,
            client_secret=None,
            **values,
        )
        made.append(Hosts(isolated, path, url, count))
        return made[-1]

    yield start
    for h in made:
        h.close()


def emails(prefix: str, count: int) -> set[str]:
    return {f"{prefix}.{i}@example.com" for i in range(count)}


def delivered(sandbox: Sandbox) -> set[str]:
    return {m["email_address"].lower() for m in sandbox.members()}


def test_an_expired_token_is_refreshed_once_for_all_hosts(hosts):
    with Sandbox(access_token=None, rotating=True) as sandbox:
        pair = sandbox.authz.seed(expired=True)
        h = hosts(
            sandbox,
            access_token=pair["access_token"],
            refresh_token=pair["refresh_token"],
            token_expires_at=RAW("2000-01-01T00:00:00Z"),
        )
        assert h.ask_all("hooks 0 4") == ["accepted"] * 3
        assert h.ask_all("flush 60") == ["flushed"] * 3
        assert delivered(sandbox) == emails("h0", 4) | emails("h1", 4) | emails("h2", 4)
        assert sandbox.authz.token_calls == 1 and sandbox.authz.invalid_grants == 0


def test_hosts_backlogged_together_stay_within_four_requests_a_second(hosts):
    with Sandbox() as sandbox:
        sandbox.faults.rate_limit = 4
        h = hosts(sandbox, access_token=sandbox.static_token, requests_per_second=4)
        assert h.ask_all("hooks 0 5") == ["accepted"] * 3
        assert h.ask_all("flush 60") == ["flushed"] * 3
        assert len(delivered(sandbox)) == 15 and sandbox.faults.throttled == 0
        starts = sorted(c["start"] for c in sandbox.calls)
        busiest = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
        assert busiest <= 4, starts


def test_a_host_killed_holding_leases_has_its_rows_delivered_by_the_others(hosts, shared_state):
    url, schema, _ = shared_state
    with Sandbox() as sandbox:
        sandbox.faults.latency = 0.4  # sends take a while: the killed host holds leases
        h = hosts(sandbox, access_token=sandbox.static_token, requests_per_second=4)
        assert h.ask_all("hooks 100 1") == ["accepted"] * 3  # every host's worker is running
        h.send(0, "hooks 0 12")
        assert h.answer(0) == "accepted"
        pid = h.procs[0].pid
        leased = f"SELECT count(*) FROM \"{schema}\".events WHERE state = 'sending' AND lease_owner LIKE %s"
        folded = f"SELECT count(*) FROM \"{schema}\".events WHERE client_id LIKE 'h0-%%' AND client_id <> 'h0-100'"
        deadline = time.monotonic() + 20
        while not (pg_sql(url, folded)[0][0] == 12 and pg_sql(url, leased, (f"%:{pid}:%",))[0][0] > 0):
            assert time.monotonic() < deadline, "host 0 never held a lease"
            time.sleep(0.02)  # polling the store for the moment to kill, not waiting for a result
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        want = emails("h0", 12)
        while not want <= delivered(sandbox):
            assert time.monotonic() - killed_at < 30, want - delivered(sandbox)
            time.sleep(0.05)


def test_killed_sessions_lose_nothing_and_never_send_one_email_twice_at_once(hosts, shared_state):
    url, schema, _ = shared_state
    with Sandbox() as sandbox:
        sandbox.faults.latency = 0.02
        h = hosts(sandbox, count=2, access_token=sandbox.static_token)
        assert h.ask_all("hooks 0 30") == ["accepted"] * 2
        for n in range(2):
            h.send(n, "flush 60")
        kills, rounds = 0, 0
        while len(sandbox.calls) < 40 and rounds < 30:  # kill the plugin's sessions while it sends
            kills += terminate_plugin_sessions(url, schema)
            rounds += 1
            time.sleep(0.1)  # the fault's cadence (not a wait for a result): let them reconnect and send
        assert [h.answer(0), h.answer(1)] == ["flushed", "flushed"]
        assert kills > 0
        assert delivered(sandbox) == emails("h0", 30) | emails("h1", 30)
        by_email: dict[str, list[dict]] = {}
        for call in sandbox.calls:
            by_email.setdefault(call["email"], []).append(call)
        for calls in by_email.values():  # a repeat is an upsert; never two at once for one contact
            calls.sort(key=lambda c: c["start"])
            assert all(a["end"] <= b["start"] for a, b in zip(calls, calls[1:]))
