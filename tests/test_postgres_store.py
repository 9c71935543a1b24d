"""The PostgreSQL store against a real server: the SQLite outbox's semantics (coalescing, one email
in flight, leases, merges), the token row's compare-and-set and transaction-scoped lock, the
shared budget, the schema's migration, fork safety and an unreachable server."""

import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import add_event, pg_sql, terminate_plugin_sessions

from remixcrm_plugin_ctct import payload
from remixcrm_plugin_ctct.store import offsets, owners
from remixcrm_plugin_ctct.store.interfaces import StoreUnavailable
from remixcrm_plugin_ctct.store.postgres import open_store, schema
from remixcrm_plugin_ctct.store.postgres.tokens import TokenConflict
from remixcrm_plugin_ctct.store.tokens import TokenState


@pytest.fixture
def store(pg_schema, tmp_path):
    url, name = pg_schema
    opened = []

    def make(data_dir: str = "host-a"):
        parts = open_store(url, name, tmp_path / data_dir)
        opened.append(parts[0])
        return parts

    yield make
    for box in opened:
        box.close()


def contact(email: str, client: str = "1", opt_in=None, **fields) -> payload.Contact:
    return payload.Contact(client, email, fields, opt_in)


def test_events_for_one_email_coalesce_and_only_one_is_in_flight_across_hosts(store):
    a, _, _ = store("host-a")
    b, _, _ = store("host-b")  # another host: its own connection
    add_event(a, contact("Ann@Example.com", "1", first_name="Ann"), "client_created", now=100.0)
    add_event(b, contact("ann@example.com", "2", last_name="Lee"), "lead_converted", now=101.0)
    (row,) = a.rows()
    assert row["state"] == "pending" and row["client_id"] == "2" and row["other_clients"] == "1"
    (claimed,) = a.claim_many("owner-a", 4)
    assert claimed.contact["fields"] == {"first_name": "Ann", "last_name": "Lee"}
    add_event(b, contact("ann@example.com", "3", first_name="Annie"), "client_created", now=102.0)
    assert b.claim_many("owner-b", 4) == []  # its email is in flight on host a
    a.retry_later(claimed.id, 0.0, "503", count_attempt=False)  # merges into the newer pending row
    (merged,) = b.claim_many("owner-b", 4)
    assert merged.client_id == "3" and merged.contact["fields"]["first_name"] == "Annie"
    assert b.for_client("1")[0]["id"] == merged.id == b.for_client("2")[0]["id"]
    assert len(b.rows()) == 1


def test_concurrent_claims_never_take_a_row_twice(store):
    boxes = [store(f"host-{n}")[0] for n in range(4)]
    boxes[0].add_records(
        [{"email": f"p{i}@example.com", "client_id": str(i), "event": "e", "fields": {}, "at": 1.0} for i in range(60)]
    )
    taken: list[list[int]] = [[] for _ in boxes]

    def drain(n: int) -> None:
        while rows := boxes[n].claim_many(f"owner-{n}", 3):
            taken[n] += [r.id for r in rows]

    threads = [threading.Thread(target=drain, args=(n,)) for n in range(len(boxes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    everything = [i for ids in taken for i in ids]
    assert sorted(everything) == sorted(set(everything)) and len(everything) == 60


def test_a_lease_of_a_host_that_died_expires_and_another_host_takes_the_row(store):
    a, _, _ = store("host-a")
    b, _, _ = store("host-b")
    add_event(a, contact("x@example.com"), "client_created", now=500.0)
    (row,) = a.claim_many("dead-host", 4, now=1000.0, lease=5.0)
    pg_sql(a.db.url, f'UPDATE "{a.db.schema}".owners SET machine = %s', ("another-machine",))  # pids unknowable
    assert b.claim_many("owner-b", 4, now=1004.0) == []  # still leased
    b._leases_checked_at = float("-inf")
    (again,) = b.claim_many("owner-b", 4, now=1006.0)
    assert again.id == row.id and again.attempts == 2
    assert a.take("dead-host", row) is None  # the old holder may not send it any more
    assert b.take("owner-b", again) is not None


def test_a_host_whose_clock_runs_ahead_never_takes_back_a_row_another_host_is_sending(store):
    """Leases last seconds and are renewed every few: judged on each host's own clock, a host half a
    minute fast (a VM without NTP) would take rows still being sent elsewhere and send them twice.
    They are written and compared on the database server's clock."""
    a, _, _ = store("host-a")
    b, _, _ = store("host-b")
    b.clock = lambda: time.time() + 30
    add_event(a, contact("x@example.com"), "client_created")
    (row,) = a.claim_many("owner-a", 4)
    pg_sql(a.db.url, f'UPDATE "{a.db.schema}".owners SET machine = %s', ("another-machine",))  # pids unknowable
    b._leases_checked_at = float("-inf")
    assert b.claim_many("owner-b", 4, now=b.clock()) == []
    assert b.due_count(now=b.clock()) == 0
    assert b.next_due_at() > b.clock()  # the lease's end, told on b's own clock
    assert a.take("owner-a", row) is not None  # still a's to send
    # a lease that really ran out is taken back by the fast host all the same
    pg_sql(a.db.url, f'UPDATE "{a.db.schema}".events SET lease_until = lease_until - 3600')
    b._leases_checked_at = float("-inf")
    (again,) = b.claim_many("owner-b", 4, now=b.clock())
    assert again.id == row.id


def test_a_dead_process_on_this_machine_loses_its_leases_at_once(store):
    a, _, _ = store("host-a")
    add_event(a, contact("y@example.com"), "client_created")
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone_pid = int(proc.stdout)
    (row,) = a.claim_many("gone", 4, lease=600.0)
    pg_sql(a.db.url, f'UPDATE "{a.db.schema}".owners SET pid = %s, started = NULL', (gone_pid,))
    assert owners.gone(gone_pid, None)
    a._leases_checked_at = float("-inf")
    (again,) = a.claim_many("alive", 4)
    assert again.id == row.id


def test_journal_offsets_are_per_host(store):
    a, _, _ = store("host-a")
    b, _, _ = store("host-b")
    a.add_records([], "123-abcd.jsonl", 4096)
    assert a.journal_offset("123-abcd.jsonl") == 4096
    assert b.journal_offset("123-abcd.jsonl") == 0  # same file name on another host: not ours
    assert not b.add_records([], "123-abcd.jsonl", 10, start=4096)  # compared with its own host's offset (0)
    assert not a.add_records([], "123-abcd.jsonl", 10, start=0)  # compare-and-set: moved on meanwhile
    a.forget_journal("123-abcd.jsonl")
    assert a.journal_offset("123-abcd.jsonl") == offsets.DONE  # a tombstone: a fold from 0 is refused
    assert not a.add_records([], "123-abcd.jsonl", 10, start=0)
    a.purge(0.0, tombstones_before=time.time() + offsets.KEEP)
    assert a.journal_offset("123-abcd.jsonl") == 0


def test_counters_meta_and_admin_queries_are_shared(store):
    a, _, _ = store("host-a")
    b, _, _ = store("host-b")
    assert [a.bump_counter("throttled"), b.bump_counter("throttled")] == [1, 2]
    assert a.counter_today("throttled") == 2
    b.set_meta("quota_paused_until", "123.5")
    assert a.get_meta("quota_paused_until") == "123.5"
    add_event(a, contact("z@example.com", "7"), "client_created")
    (row,) = a.claim_many("o", 1)
    a.dead(row.id, "400 bad")
    assert b.summary().counts == {"dead": 1} and b.summary().last_error == "400 bad"
    assert b.retry(dead=True) == 1 and a.due_count() == 1
    (row,) = b.claim_many("o", 1)
    b.delivered(row.id, "cid", "created", now=10.0)
    assert a.purge(before=11.0) == 1 and a.known_emails() == [] and a.rows()[0]["contact"] is None


def test_the_rows_an_import_took_are_marked_delivered_together_for_every_host(store):
    a, _, _ = store("host-a")
    b, _, _ = store("host-b")
    for n in range(3):
        add_event(a, contact(f"c{n}@x.com", str(n)), "client_created", now=100.0)
    rows = a.claim_many("owner-a", 3)
    a.delivered_many([(row.id, f"cid-{row.client_id}", "imported") for row in rows], now=200.0)
    a.delivered_many([])
    assert b.summary().counts == {"delivered": 3} and b.claim_many("owner-b", 3) == []
    found = {r["client_id"]: (r["contact_id"], r["outcome"]) for n in range(3) for r in b.for_client(str(n))}
    assert found == {str(n): (f"cid-{n}", "imported") for n in range(3)}


def test_token_writes_are_compare_and_set(store):
    _, tokens_a, _ = store("host-a")
    _, tokens_b, _ = store("host-b")
    assert tokens_a.read() is None
    tokens_a.write(TokenState("access-1", "refresh-1", 1.0))
    before = tokens_b.signature()
    assert tokens_b.read().refresh_token == "refresh-1"
    tokens_a.write(TokenState("access-2", "refresh-2", 2.0))  # a wrote again after b's read
    with pytest.raises(TokenConflict):
        tokens_b.write(TokenState("stale", "refresh-1", 1.0))
    assert tokens_b.read().refresh_token == "refresh-2" and tokens_b.signature() != before


def test_the_token_lock_is_transaction_scoped_and_serialises_hosts(store, monkeypatch):
    _, tokens_a, _ = store("host-a")
    _, tokens_b, _ = store("host-b")
    monkeypatch.setattr("remixcrm_plugin_ctct.store.postgres.tokens.LOCK_TIMEOUT", 0.2)
    url, name = tokens_a.db.url, tokens_a.db.schema
    held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    with tokens_a.lock():
        assert pg_sql(url, held)[0][0] >= 1
        # held by a transaction, not a session: the holder's session is inside one
        states = pg_sql(
            url, "SELECT state FROM pg_stat_activity WHERE application_name = %s", (f"remixcrm-ctct {name}",)
        )
        assert ("idle in transaction",) in states
        with pytest.raises(StoreUnavailable, match="could not take the lock"), tokens_b.lock():
            pass
    with tokens_b.lock():  # free again once the transaction ended
        pass


def test_budget_is_one_row_for_every_host(store):
    _, _, budget_a = store("host-a")
    _, _, budget_b = store("host-b")
    for budget in (budget_a, budget_b, budget_a):
        budget.update(lambda s: (s._replace(day="2026-01-01", day_count=s.day_count + 1, sent=[*s.sent, 1.5]), None))
    state = budget_b.read()
    assert state.day_count == 3 and state.sent == [1.5, 1.5, 1.5]


def test_many_processes_create_the_schema_at_once(pg_schema):
    url, name = pg_schema
    script = (
        "import sys; from pathlib import Path; from remixcrm_plugin_ctct.store.postgres import open_store\n"
        "box, tokens, budget = open_store(sys.argv[1], sys.argv[2], Path('.'))\n"
        "sys.stdin.readline(); print(box.pending_count(), budget.read().day_count, tokens.read())\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, url, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6 and all(o[0].strip() == "0 0 None" for o in outs)
    versions = pg_sql(url, f'SELECT version FROM "{name}".schema_version')
    assert versions == [(v,) for v in sorted(schema.MIGRATIONS)]


def test_a_broken_connection_is_replaced_and_the_call_runs_again(store):
    a, _, _ = store("host-a")
    add_event(a, contact("k@example.com"), "client_created")
    assert terminate_plugin_sessions(a.db.url, a.db.schema) >= 1
    assert a.pending_count() == 1  # a fresh connection, no error


def test_unreachable_says_one_error_a_minute_with_the_password_masked(pg_schema, tmp_path, logs):
    _, name = pg_schema
    box, _, _ = open_store("postgresql://remix:hunter2secret@127.0.0.1:1/db", name, tmp_path)
    for _ in range(3):
        box.db._retry_at = 0.0
        with pytest.raises(StoreUnavailable) as raised:
            box.pending_count()
        assert "hunter2secret" not in str(raised.value)
    errors = [r.getMessage() for r in logs.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "remix:***@127.0.0.1:1" in errors[0] and "hunter2secret" not in logs.text


def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_alone(store):
    a, _, _ = store("host-a")
    parent_pid = a.db.run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            os.write(write, json.dumps(a.db.run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])).encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)
    child_pid = json.loads(os.read(read, 100))
    assert status == 0 and child_pid != parent_pid
    assert a.db.run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0]) == parent_pid


def test_the_postgresql_lane_rule_agrees_with_the_python_one_on_every_case(store):
    import itertools

    from remixcrm_plugin_ctct.store import lanes, newest
    from remixcrm_plugin_ctct.store.postgres import sql

    box, _, _ = store("host-a")
    s = box.s
    cases = itertools.product(
        [True, False, None],
        [5.0, 15.0, None],
        ["client_created", lanes.BACKFILL],
        ["implicit", "skip"],
        [True, False],
        [False, True],  # the answer came from a backfill file
    )
    seen = set()
    for opt_in, given, event, unknown, has_latest, by_backfill in cases:
        known: dict = {"email": "a@b.co", "fields": {}}
        stamps: dict = {"email": [1, 0], "fields": {}}
        if opt_in is not None:
            known["email_opt_in"] = opt_in
        if given is not None:
            stamps["email_opt_in"] = [given, 0]
        if by_backfill:
            stamps[newest.OPT_IN_BY] = lanes.BACKFILL

        def check(conn, known=known, stamps=stamps, event=event, unknown=unknown, has_latest=has_latest):
            conn.execute(f"DELETE FROM {s}.events")
            conn.execute(f"DELETE FROM {s}.latest")
            conn.execute(box._sql["INSERT_PENDING"], ("a@b.co", "1", "", event, json.dumps(known), 10.0, 10.0, 10.0))
            if has_latest:
                conn.execute(
                    box._sql["UPSERT_LATEST"],
                    ("a@b.co", json.dumps(known), json.dumps(stamps), "1", event, 1.0, 0, 1.0),
                )
            statement = f"SELECT {sql.IMPORT_SQL.format(s=s)} FROM {s}.events e"
            return conn.execute(statement, lanes.sql_args(unknown)).fetchone()[0]

        by_sql = box.db.run(check)
        in_force = newest.consent_in_force(known, json.dumps(stamps) if has_latest else None, 10.0, event)
        by_python = lanes.lane_of(in_force.get("email_opt_in"), event, unknown)
        assert (lanes.IMPORT if by_sql else lanes.SIGN_UP) == by_python, (
            opt_in,
            given,
            event,
            unknown,
            has_latest,
            by_backfill,
        )
        seen.add(by_python)
    assert seen == {lanes.IMPORT, lanes.SIGN_UP}
    box.db.run(lambda c: c.execute(f"DELETE FROM {s}.events; DELETE FROM {s}.latest"))
    add_event(box, contact("imp@example.com", "8"), "client_created")  # consent unknown: the import's
    add_event(box, contact("yes@example.com", "9", opt_in=True), "client_created")
    assert box.first_due_import("implicit") is not None
    assert [r.client_id for r in box.claim_many("o", 10, lane=lanes.SIGN_UP)] == ["9"]
    assert [r.client_id for r in box.claim_many("o", 10, lane=lanes.IMPORT)] == ["8"]
    assert box.event_counts("client_created", 0.0) == {"sending": 2}


def test_the_suppression_mirror_is_shared_and_the_newer_fact_wins(store):
    from remixcrm_plugin_ctct.store.interfaces import Suppression
    from remixcrm_plugin_ctct.store.postgres import PgSuppressions

    a, _, _ = store("host-a")
    b, _, _ = store("host-b")
    mirror_a, mirror_b = PgSuppressions(a.db, a), PgSuppressions(b.db, b)
    mirror_a.record([Suppression("Gone@X.com", "unsubscribed", 100.0, "Contact", "c1")])
    mirror_b.record([Suppression("gone@x.com", "deleted", 50.0, None, None)])  # older: ignored
    found = mirror_b.suppressed(["GONE@x.com", "other@x.com"])
    assert list(found) == ["gone@x.com"] and found["gone@x.com"].reason == "unsubscribed"
    mirror_b.clear_stale({"gone@x.com": 90.0})  # active as of before the opt-out: kept
    assert mirror_a.counts() == {"unsubscribed": 1}
    mirror_b.clear_stale({"gone@x.com": 150.0})
    assert mirror_a.counts() == {}
    mirror_a.set_meta("optout_after", "2026-01-01")
    assert mirror_b.get_meta("optout_after") == "2026-01-01"


def test_opt_outs_across_hosts_keep_a_cursor_that_misses_nothing(store):
    from remixcrm_plugin_ctct.store.interfaces import Suppression
    from remixcrm_plugin_ctct.store.postgres import PgSuppressions

    a, _, _ = store("host-a")
    b, _, _ = store("host-b")
    mirror_a, mirror_b = PgSuppressions(a.db, a), PgSuppressions(b.db, b)
    add_event(a, contact("ada@x.com", "7"), "client_created", now=100.0)
    (row,) = a.claim_many("owner-a", 4)
    a.delivered(row.id, "c7", "created")
    add_event(a, contact("ada@x.com", "8", opt_in=False), "client_created", now=101.0)  # declined: not pushed
    mirror_a.record([Suppression("ada@x.com", "unsubscribed", 2000.0, "Contact", "c7")], now=5000.0)
    (first,) = mirror_b.opt_outs()
    assert (first.email, first.client_id, first.opted_out_at, first.recorded_at) == ("ada@x.com", "7", 2000.0, 5000.0)
    # another host, its clock behind, records an older opt-out late: stamped after, not lost
    mirror_b.record([Suppression("old@x.com", "unsubscribed", 1000.0, "Account", None)], now=4000.0)
    (late,) = mirror_a.opt_outs(first.recorded_at)
    assert (late.email, late.client_id, late.source, late.recorded_at) == ("old@x.com", None, "Account", 5000.000001)
    mirror_b.record([Suppression("ada@x.com", "unsubscribed", 2000.0, "Contact", "c7")])  # the same fact again
    mirror_b.record([Suppression("gone@x.com", "deleted", 3000.0, "Account", None, 3000.0)])  # a deletion alone
    assert mirror_a.opt_outs(late.recorded_at) == []
    threads = [
        threading.Thread(target=m.record, args=([Suppression(f"p{n}@x.com", "unsubscribed", 1.0, None, None)],))
        for n, m in enumerate([mirror_a, mirror_b] * 5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps = [o.recorded_at for o in mirror_a.opt_outs(late.recorded_at)]
    assert len(stamps) == 10 and len(set(stamps)) == 10 and stamps == sorted(stamps)


def test_a_transaction_never_waits_long_for_a_frozen_hosts_locks(store, pg_schema, monkeypatch):
    """A host frozen mid-transaction holds its locks until TCP gives up (hours): every other
    host's transaction bounds its wait (lock_timeout) and reports the store unavailable instead."""
    import psycopg

    from remixcrm_plugin_ctct.store.postgres import connect

    monkeypatch.setattr(connect, "LOCK_TIMEOUT", "200ms")
    url, name = pg_schema
    box = store()[0]
    box.add_records([])  # connected, schema made
    with psycopg.connect(url) as frozen:  # holds a lock on every outbox row, then never commits
        frozen.execute(f"LOCK TABLE {name}.events IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(StoreUnavailable):
            box.claim_many("host-b", 4)
