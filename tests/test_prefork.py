"""The plugin inside a real prefork server: gunicorn serving tests/prefork_app.py on loopback,
its handler firing the hooks, delivering to the loopback sandbox started in this process.

What a deployment does to us and the lab does not: workers forked from a master that may have
fired events itself (``--preload``), workers recycled after N requests (``--max-requests``), a
worker killed with ``kill -9``, the master stopped with SIGTERM and started again.
Every wait has a deadline; the servers are always stopped; a failure prints gunicorn's log.
"""

import importlib.util
import json
import os
import signal
import sqlite3
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ACCESS_TOKEN, RAW
from prefork_server import Gunicorn, wait_until

from remixcrm_plugin_ctct import config
from remixcrm_plugin_ctct.sandbox import SEEDED_LIST_ID, Sandbox
from remixcrm_plugin_ctct.store.outbox import FILE_NAME as OUTBOX_FILE

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gunicorn") is None or not hasattr(os, "fork"),
    reason="needs gunicorn (the `test` extra) and os.fork (POSIX)",
)

OK = (200, 201)


@pytest.fixture
def sandbox():
    with Sandbox(access_token=ACCESS_TOKEN) as sb:
        yield sb


@pytest.fixture
def server(isolated):
    """``server(*gunicorn_args, at_import=[clients])``: a started gunicorn with this test's config
    and data dir; stopped (and its log printed, shown when the test fails) at teardown."""
    started: list[Gunicorn] = []

    def start(*args, at_import=None):
        env = {**os.environ, "PREFORK_APP_LOG": "info"}
        if at_import:
            env["PREFORK_APP_AT_IMPORT"] = json.dumps(at_import)
        srv = Gunicorn(isolated / f"run{len(started)}", env, *args)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        srv.stop()
        print(f"----- gunicorn {' '.join(srv.args[3:])} (master {srv.proc.pid if srv.proc else '-'}) -----")
        print(srv.log()[-20000:])


def client(prefix, i, version=1, opt_in=None, lead=False) -> dict:
    """A client record; ``version`` shows in its fields, so the newest event's fields are recognisable."""
    record = {
        "id": f"{prefix}{i}",
        "email": f"{prefix}{i}@example.com",
        "first_name": f"First v{version}",
        "last_name": f"{prefix.capitalize()}{i}",
        "company": f"Company v{version}",
    }
    if opt_in is not None:
        record["email_opt_in"] = opt_in
    if lead:
        record["lead"] = {"id": f"lead-{prefix}{i}"}
    return record


def fire_all(srv, clients, threads=3) -> dict:
    """POST every client (``threads`` at a time, so every worker gets some); {email: [pids]} of
    the workers that accepted them. Fails, naming the client, on anything but 200."""

    def post(record):
        status, headers = srv.post_client(record)
        assert status == 200, f"client {record['id']} was not accepted: HTTP {status}"
        return record["email"].lower(), int(headers["x-pid"])

    accepted = defaultdict(list)
    with ThreadPoolExecutor(threads) as pool:
        for email, pid in pool.map(post, clients):
            accepted[email].append(pid)
    return accepted


def api_arrivals(sandbox) -> list:
    """Count the API calls as they arrive (before the simulated latency): a list that grows."""
    seen, decide = [], sandbox.faults.decide

    def counted():
        seen.append(time.monotonic())
        return decide()

    sandbox.faults.decide = counted
    return seen


def contact(sandbox, email) -> dict | None:
    found = sandbox.api.find(email, include_deleted=True)
    return found[0] if found else None


def is_member(sandbox, email) -> bool:
    found = contact(sandbox, email)
    return found is not None and SEEDED_LIST_ID in found.get("list_memberships", [])


def outbox_rows(emails) -> str:
    """The outbox rows for ``emails``, read-only, for failure messages."""
    path = config.data_dir() / OUTBOX_FILE
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            marks = ",".join("?" * len(emails))
            rows = conn.execute(
                f"SELECT id, email_key, state, attempts, lease_owner, lease_until, next_attempt_at, "
                f"last_error, outcome FROM events WHERE email_key IN ({marks}) ORDER BY id",
                [e.lower() for e in emails],
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as e:
        return f"(outbox unreadable: {e})"
    now = time.time()
    return (
        "\n".join(
            f"  row {r[0]} {r[1]}: {r[2]}, {r[3]} attempt(s), lease {r[4]} until {_rel(r[5], now)}, "
            f"next attempt {_rel(r[6], now)}, error {r[7]!r}, outcome {r[8]!r}"
            for r in rows
        )
        or "  (no rows)"
    )


def _rel(at, now) -> str:
    return "-" if at is None else f"now{at - now:+.1f}s"


def _count(sql, args=()) -> int:
    """A count from the outbox, read-only (another process's file: never written from here); 0 if unreadable."""
    try:
        conn = sqlite3.connect(f"file:{config.data_dir() / OUTBOX_FILE}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute(sql, args).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def leases_held_by(pid) -> int:
    """Rows leased by worker ``pid`` (lease owners are ``host:pid:random``)."""
    return _count("SELECT count(*) FROM events WHERE state = 'sending' AND lease_owner LIKE ?", (f"%:{pid}:%",))


def unfinished() -> int:
    """Rows still to send (pending or in flight)."""
    return _count("SELECT count(*) FROM events WHERE state IN ('pending', 'sending')")


def missing_report(sandbox, emails, accepted) -> str:
    missing = sorted(e for e in emails if not is_member(sandbox, e))
    lines = [f"{len(missing)} of {len(emails)} accepted clients not delivered:"]
    lines += [f"  {e} (accepted by pid {', '.join(map(str, accepted.get(e, ['?'])))})" for e in missing[:20]]
    lines.append("their outbox rows:")
    lines.append(outbox_rows(missing[:20]) if missing else "  -")
    return "\n".join(lines)


# --- every accepted client delivered once, with its newest fields; nobody re-subscribed ---


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_every_accepted_client_is_delivered_once_with_its_newest_fields(preload, sandbox, write_config, server):
    write_config(api_base_url=sandbox.api_base_url, consent_guard=RAW("true"), requests_per_second=RAW("1000"))
    unsubscribed = [f"unsub{i}@example.com" for i in range(3)]
    for email in unsubscribed:
        sandbox.api.seed_contact(email, permission_to_send="unsubscribed")
    # consent unknown for most (so the guard looks each one up), explicit for some, leads for some
    creates = [client("c", i, opt_in=True if i % 4 == 0 else None, lead=i % 5 == 0) for i in range(40)]
    creates += [client("unsub", i) for i in range(3)]
    updates = [
        [client("c", i, version=v, opt_in=True if i % 4 == 0 else None) for i in range(0, 40, 5)] for v in (2, 3)
    ]
    at_import = []
    if preload:  # the master fires these before forking the workers, as a host doing work at start-up
        at_import = [client("pre", i) for i in range(6)] + [client("unsub", 0)]
        updates[0].append(client("pre", 0, version=2))  # a worker's newer event for a client the master sent
    srv = server("-w", "3", *(["--preload"] if preload else []), at_import=at_import)

    accepted = defaultdict(list, {c["email"]: ["master"] for c in at_import})
    events = Counter(c["email"] for c in at_import + creates + updates[0] + updates[1])
    newest = {c["email"]: c for c in at_import + creates + updates[0] + updates[1]}  # the last fired wins
    for phase in (creates, *updates):  # each phase after the previous one was accepted: the order is known
        for email, pids in fire_all(srv, phase).items():
            accepted[email] += pids
    expected = {e for e in newest if e not in unsubscribed}

    def as_newest(email) -> bool:
        found = contact(sandbox, email)
        return (
            found is not None
            and SEEDED_LIST_ID in found["list_memberships"]
            and found.get("first_name") == newest[email]["first_name"]
            and found.get("company_name") == newest[email]["company"]
        )

    wait_until(lambda: all(as_newest(e) for e in expected), 20)
    wait_until(lambda: not unfinished(), 5)  # a stale event sent after the newest would show only then
    srv.stop()  # nothing is sent after this: the counts below are final

    problems = []
    sends = Counter(c["email"] for c in sandbox.calls if c["status"] in OK)
    for email in sorted(expected):
        found = contact(sandbox, email)
        where = f"(events: {events[email]}, accepted by {', '.join(map(str, accepted[email]))})"
        if found is None or SEEDED_LIST_ID not in found["list_memberships"]:
            problems.append(f"{email} not delivered {where}")
        elif not as_newest(email):
            problems.append(
                f"{email} has {found.get('first_name')!r}/{found.get('company_name')!r}, not its newest "
                f"{newest[email]['first_name']!r}/{newest[email]['company']!r} {where}"
            )
        # once per email; a client updated after its first send may go once per event, never more
        if not 1 <= sends[email] <= events[email] or (events[email] == 1 and sends[email] != 1):
            problems.append(f"{email} was sent {sends[email]} times for {events[email]} event(s) {where}")
    for email in unsubscribed:
        found = contact(sandbox, email)
        permission = found["email_address"]["permission_to_send"]
        if permission != "unsubscribed" or sends[email]:
            problems.append(
                f"{email} was unsubscribed and is now {permission!r} after {sends[email]} sign_up_form "
                f"call(s) (accepted by {', '.join(map(str, accepted[email]))})"
            )
    assert not problems, "\n".join(problems) + "\noutbox rows:\n" + outbox_rows([p.split()[0] for p in problems])


# --- a decline as the next worker's first request after another worker's opt-in ---


def test_a_decline_as_the_next_workers_first_request_is_not_pushed(sandbox, write_config, server):
    write_config(api_base_url=sandbox.api_base_url, requests_per_second=RAW("1000"))
    sandbox.faults.latency = 0.5  # a slow API: the first worker is still busy sending when it recycles
    arrivals = api_arrivals(sandbox)
    srv = server("-w", "1", "--max-requests", "4")

    fillers = [client("fill", i, opt_in=True) for i in range(3)]
    pids = []
    # one send in flight per sender thread before the next event, so the worker's opt-in for x0
    # is still in its journal when it exits (as in the field: the next worker folds it later)
    for n, record in enumerate(fillers[:2], start=1):
        pids.append(int(srv.post_client(record)[1]["x-pid"]))
        assert wait_until(lambda n=n: len(arrivals) >= n, 10), f"the first worker never sent {record['email']}"
    pids.append(int(srv.post_client(fillers[2])[1]["x-pid"]))
    status, headers = srv.post_client(client("x", 0, opt_in=True))  # the worker's 4th and last request
    assert status == 200
    opt_in_pid = int(headers["x-pid"])
    declined_at = time.monotonic()
    status, headers = srv.post_client(client("x", 0, version=2, opt_in=False))  # the next worker's first
    assert status == 200
    decline_pid = int(headers["x-pid"])
    assert len(set(pids) | {opt_in_pid}) == 1 and decline_pid != opt_in_pid, (
        f"setup: the opt-in ({opt_in_pid}) and the decline ({decline_pid}) should come from two workers"
    )
    marker = client("marker", 0, opt_in=True)  # fired after the decline, in the same worker's journal
    srv.post_client(marker)

    settled = [*(c["email"] for c in fillers), marker["email"]]
    delivered = wait_until(lambda: all(is_member(sandbox, e) for e in settled), 20)
    # once the marker is out, both journals have been folded; give a push for x0 the time to show
    wait_until(lambda: any(c["email"] == "x0@example.com" and c["start"] >= declined_at for c in sandbox.calls), 2)
    srv.stop()

    pushed = [
        c for c in sandbox.calls if c["email"] == "x0@example.com" and c["start"] >= declined_at and c["status"] in OK
    ]
    assert not pushed, (
        f"x0@example.com declined (worker {decline_pid}'s first request) after opting in (worker "
        f"{opt_in_pid}'s last), and was pushed {len(pushed)} time(s) after the decline:\n"
        + outbox_rows(["x0@example.com"])
    )
    assert delivered, missing_report(sandbox, settled, {})


# --- the shared rate limit under a burst ---


def test_a_burst_across_workers_gets_no_throttled_answers_at_4_per_second(sandbox, write_config, server):
    write_config(api_base_url=sandbox.api_base_url, requests_per_second=RAW("4"))
    sandbox.faults.rate_limit = 4  # Constant Contact's limit, for all workers together
    arrivals = api_arrivals(sandbox)
    srv = server("-w", "3")
    srv.wait_workers(3)
    burst = [client("burst", i, opt_in=True) for i in range(32)]
    accepted = fire_all(srv, burst)
    emails = set(accepted)
    # polled gently: the sandbox shares this process, and its arrival times should be the network's
    delivered = wait_until(lambda: all(is_member(sandbox, e) for e in emails), len(burst) / 4 + 15, interval=0.25)
    srv.stop()
    spans = [b - a for a, b in zip(arrivals, arrivals[4:])]  # 5 arrivals in under 1 s: a 429
    workers = len({p for ps in accepted.values() for p in ps})
    assert sandbox.faults.throttled == 0, (
        f"{sandbox.faults.throttled} x 429 throttled in {len(arrivals)} calls from "
        f"{workers} workers; the tightest 5 arrivals spanned "
        f"{min(spans, default=0):.3f} s"
    )
    assert delivered, missing_report(sandbox, emails, accepted)


# --- kill -9 of a worker that just accepted events ---


def test_a_killed_workers_events_are_delivered_within_30_s(sandbox, write_config, server):
    write_config(api_base_url=sandbox.api_base_url, requests_per_second=RAW("1000"))
    sandbox.faults.latency = 0.3  # sends take a while: the victim dies holding leases
    srv = server("-w", "3")
    srv.wait_workers(3)
    accepted = fire_all(srv, [client("k", i, opt_in=True) for i in range(24)])
    by_pid = Counter(p for ps in accepted.values() for p in ps)
    victim = by_pid.most_common(1)[0][0]
    assert victim in srv.workers()
    wait_until(lambda: leases_held_by(victim) > 0, 5)  # it is sending (best effort: the kill is the test)
    # and one more event it accepted just now: still in its journal when it dies
    for i in range(30):
        record = client("late", i, opt_in=True)
        status, headers = srv.post_client(record)
        assert status == 200
        accepted[record["email"]].append(int(headers["x-pid"]))
        if int(headers["x-pid"]) == victim:
            break
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    mine = {e for e, ps in accepted.items() if victim in ps}
    respawned = wait_until(lambda: victim not in srv.workers() and len(srv.workers()) == 3, 10)
    assert respawned, "gunicorn did not respawn the worker"

    emails = set(accepted)
    delivered = wait_until(lambda: all(is_member(sandbox, e) for e in emails), 30)
    took = time.monotonic() - killed_at
    assert delivered, (
        f"worker {victim} was killed with {len(mine)} accepted event(s); after {took:.0f} s:\n"
        + missing_report(sandbox, emails, accepted)
    )


# --- SIGTERM of the master, then a start with no requests at all ---


def test_sigterm_stops_within_the_graceful_timeout_and_a_restart_delivers_without_a_hook(sandbox, write_config, server):
    write_config(api_base_url=sandbox.api_base_url, requests_per_second=RAW("1000"))
    arrivals = api_arrivals(sandbox)
    sandbox.faults.configure({"hang_next": 1000})  # the API takes requests and never answers
    srv = server("-w", "3", "--graceful-timeout", "5")
    accepted = fire_all(srv, [client("t", i, opt_in=True) for i in range(9)])
    assert wait_until(lambda: len(arrivals) >= 1, 10), "no send was attempted"  # a send hangs while we stop

    took = srv.terminate(timeout=15)
    assert took is not None and took <= 5 + 1, (
        f"the master took {took} s to exit after SIGTERM (None: over 15 s), not <= the 5 s graceful timeout"
    )
    with sandbox.faults._lock:
        sandbox.faults.script.clear()  # the API answers again

    server("-w", "3", "--graceful-timeout", "5").wait_workers(3)  # the same config and data dir; no request
    emails = set(accepted)
    delivered = wait_until(lambda: all(is_member(sandbox, e) for e in emails), 15)
    assert delivered, "after a restart with no hook fired:\n" + missing_report(sandbox, emails, accepted)


# --- sender = "process": the workers only append; one sender process outlives their recycling ---


def test_with_a_sender_process_workers_run_no_thread_and_recycling_or_kill_9_loses_nothing(
    sandbox, write_config, server
):
    from test_sender_process import sender_pids

    write_config(api_base_url=sandbox.api_base_url, requests_per_second=RAW("1000"), sender="process")
    srv = server("-w", "2", "--max-requests", "5")  # each worker recycled after 5 requests
    try:
        accepted = fire_all(srv, [client("p", i, opt_in=True) for i in range(12)], threads=2)
        workers = srv.wait_workers(2)

        def threads() -> dict:
            return {pid: len(os.listdir(f"/proc/{pid}/task")) for pid in workers if os.path.exists(f"/proc/{pid}")}

        # a recycled worker's load may run one short-lived thread (it reads the config, then starts
        # the sender process if none runs): gone at once; no sender thread ever stays
        assert wait_until(lambda: set(threads().values()) <= {1}, 5), f"a worker runs threads of ours: {threads()}"
        # one dies with whatever its journal holds: a live one (--max-requests may have recycled
        # one of those seen above meanwhile, and killing a pid that is gone raised ProcessLookupError)
        os.kill(sorted(srv.wait_workers(2))[0], signal.SIGKILL)
        accepted.update(fire_all(srv, [client("q", i, opt_in=True) for i in range(6)], threads=2))
        emails = set(accepted)
        delivered = wait_until(lambda: all(is_member(sandbox, e) for e in emails), 30)
        assert delivered, missing_report(sandbox, emails, accepted)
        # two workers may have started one each at once: the second waits for the lock a moment, then leaves
        assert wait_until(lambda: len(sender_pids()) == 1, 10), f"sender processes: {sender_pids()}"
        senders = sender_pids()
        assert not set(senders) & srv.workers()
        srv.stop()
        assert sender_pids() == senders  # the server is gone; the sender process leaves when idle, not with it
    finally:
        for pid in sender_pids():
            os.kill(pid, signal.SIGKILL)


# --- the default lanes (unknown consent → bulk import) in a real prefork server ---


def test_default_lanes_in_prefork_import_everyone_unknown_and_never_re_subscribe(sandbox, write_config, server):
    """The shipped default (unknown_consent left out): with --preload and a worker killed mid-way,
    every unknown-consent client arrives by import as implicit, none by sign_up_form; recorded
    consent goes by sign_up_form; an unsubscribed contact stays unsubscribed."""
    write_config(api_base_url=sandbox.api_base_url, unknown_consent=None, requests_per_second=RAW("1000"))
    sandbox.api.seed_contact("gone0@example.com", permission_to_send="unsubscribed")
    srv = server("-w", "3", "--preload")
    srv.wait_workers(3)
    unknown = [client("u", i) for i in range(30)] + [client("gone", 0)]
    accepted = fire_all(srv, unknown + [client("yes", i, opt_in=True) for i in range(3)])
    victim = Counter(p for ps in accepted.values() for p in ps).most_common(1)[0][0]
    os.kill(victim, signal.SIGKILL)
    accepted.update(fire_all(srv, [client("u", i) for i in range(30, 40)]))  # the workers that remain
    expected = [f"u{i}@example.com" for i in range(40)] + [f"yes{i}@example.com" for i in range(3)]
    delivered = wait_until(lambda: all(is_member(sandbox, e) for e in expected), 30)
    assert delivered, missing_report(sandbox, set(expected), accepted)
    srv.stop()
    signed_up = {c["email"] for c in sandbox.calls}
    assert signed_up == {f"yes{i}@example.com" for i in range(3)}, signed_up  # never sign_up_form for unknown
    permissions = {e: contact(sandbox, e)["email_address"]["permission_to_send"] for e in expected}
    assert {permissions[f"u{i}@example.com"] for i in range(40)} == {"implicit"}
    assert contact(sandbox, "gone0@example.com")["email_address"]["permission_to_send"] == "unsubscribed"
