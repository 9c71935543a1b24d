import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
from conftest import ACCESS_TOKEN, add_event

from remixcrm_plugin_ctct import flush
from remixcrm_plugin_ctct import runtime as dispatch
from remixcrm_plugin_ctct.payload import Contact
from remixcrm_plugin_ctct.sandbox import Sandbox
from remixcrm_plugin_ctct.store import leases, outbox_admin, owners
from remixcrm_plugin_ctct.store.journal import Journal, encode
from remixcrm_plugin_ctct.store.outbox import LEASE_CHECK_EVERY, LIVE_HOLDER_GRACE, THROTTLED, Outbox


def contact(n, email=None, **fields):
    return Contact(str(n), email or f"c{n}@example.com", fields)


def test_files_are_private(tmp_path):
    box = Outbox(tmp_path / "d")
    add_event(box, contact(1), "e")
    assert stat.S_IMODE(os.stat(box.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(box.path.parent).st_mode) == 0o700


def test_pending_events_for_one_email_coalesce_newest_fields_winning(tmp_path):
    box = Outbox(tmp_path)
    add_event(box, Contact("1", "Ada@Example.com", {"first_name": "Ada", "phone_number": "1"}), "client_created")
    add_event(box, Contact("2", "ada@example.com", {"first_name": "Augusta"}, True), "lead_converted from lead 7")
    row = box.claim("me")
    assert row.contact == {
        "email": "ada@example.com",
        "fields": {"first_name": "Augusta", "phone_number": "1"},
        "email_opt_in": True,
    }
    assert (row.client_id, row.event) == ("2", "lead_converted from lead 7")
    assert box.claim("me") is None  # one push, not two
    assert [r["client_id"] for r in outbox_admin.for_client(box, "1")] == ["2"]  # client 1 is traceable


def elsewhere(monkeypatch, machine="another machine", started=None):
    """Leases taken while this is in force are held by a process that cannot be looked at from here."""
    monkeypatch.setattr(leases, "identity", lambda: (machine, os.getpid(), started))


def held(box, owner):
    return sum(r["state"] == "sending" and r["lease_owner"] == owner for r in box.rows())


def test_a_lease_gives_a_row_to_one_owner_until_it_expires(tmp_path, monkeypatch):
    box = Outbox(tmp_path)
    add_event(box, contact(1), "e")
    now = time.time()
    with monkeypatch.context() as m:
        elsewhere(m)  # a's process cannot be looked at from here
        assert box.claim("a", now=now, lease=60).id == 1
    assert box.claim("b", now=now + 30) is None  # a still holds it
    stolen = box.claim("b", now=now + 61)  # a's lease expired: it may have died
    assert stolen.id == 1 and stolen.attempts == 2


def test_a_live_holder_on_this_machine_keeps_a_lapsed_lease_a_while(tmp_path):
    box = Outbox(tmp_path)
    add_event(box, contact(1), "e")
    now = time.time()
    assert box.claim("a", now=now, lease=30).id == 1  # "a" is this very process: alive
    assert box.claim("b", now=now + 31) is None  # one slow send (token wait, refresh, two calls) is no death
    assert box.claim("b", now=now + 30 + LIVE_HOLDER_GRACE + 1).id == 1  # but a stuck one is not forever


def test_a_second_event_waits_while_the_first_for_that_email_is_in_flight(tmp_path):
    box = Outbox(tmp_path)
    add_event(box, contact(1, "x@example.com"), "e")
    first = box.claim("a")
    add_event(box, contact(2, "x@example.com"), "e")  # arrives while the first is being sent
    assert box.claim("b") is None  # would be a simultaneous write to one contact: Constant Contact's 409
    box.delivered(first.id, "c", "created")
    assert box.claim("b").client_id == "2"


def test_the_rows_an_import_took_are_marked_delivered_with_one_commit(tmp_path):
    box = Outbox(tmp_path)
    for n in range(3):
        add_event(box, contact(n), "e")
    rows = box.claim_many("me", 3)
    statements: list[str] = []
    box._conn().set_trace_callback(statements.append)  # this thread's connection: the one delivered_many uses
    box.delivered_many([(row.id, f"cid-{row.client_id}", "imported") for row in rows], now=50.0)
    box.delivered_many([])  # nothing pushed: nothing written
    box._conn().set_trace_callback(None)
    assert statements.count("COMMIT") == 1, statements
    for n in range(3):
        (record,) = box.for_client(str(n))
        assert (record["state"], record["contact_id"], record["outcome"]) == ("delivered", f"cid-{n}", "imported")
    assert box.summary().counts == {"delivered": 3} and box.claim("me") is None


def test_a_retried_row_merges_with_a_newer_pending_one(tmp_path):
    box = Outbox(tmp_path)
    add_event(box, contact(1, "x@example.com", first_name="Old", job_title="CEO"), "e")
    first = box.claim("a")
    add_event(box, contact(2, "x@example.com", first_name="New"), "e")
    box.retry_later(first.id, time.time(), "503")
    (row,) = [box.claim("a")]
    assert row.contact["fields"] == {"first_name": "New", "job_title": "CEO"}
    assert box.claim("a") is None
    assert outbox_admin.summary(box).counts == {"sending": 1}


def test_release_hands_back_unfinished_rows_without_counting_the_attempt(tmp_path):
    box = Outbox(tmp_path)
    add_event(box, contact(1), "e")
    box.claim("me")
    assert box.release("me") == 1
    assert box.due_count() == 1 and box.claim("other").attempts == 1


def test_purge_forgets_emails_but_keeps_the_status_record(tmp_path):
    box = Outbox(tmp_path)
    add_event(box, contact(1), "e")
    row = box.claim("me")
    box.delivered(row.id, "contact-1", "created", now=time.time() - 31 * 86400)
    assert outbox_admin.purge(box, 30 * 86400) == 1
    (record,) = outbox_admin.for_client(box, "1")
    assert (record["state"], record["contact_id"], record["outcome"]) == ("delivered", "contact-1", "created")
    assert [(r["contact"], r["email_key"]) for r in box.rows()] == [(None, None)]
    assert box.known_emails() == []  # the newest known state is forgotten too


def test_retry_dead_gives_a_dead_row_a_new_life(tmp_path):
    box = Outbox(tmp_path)
    add_event(box, contact(1), "e")
    box.dead(box.claim("me").id, "400 bad")
    assert outbox_admin.retry(box) == 0
    assert outbox_admin.retry(box, dead=True) == 1
    assert box.claim("me").attempts == 1


def test_journal_lines_are_folded_exactly_once(tmp_path):
    box, journal = Outbox(tmp_path), Journal(tmp_path)
    for n in range(5):
        journal.append(encode(contact(n), "e", time.time()))
    assert journal.backlog(box.journal_offset)
    assert journal.fold_into(box) == 5
    assert journal.fold_into(box) == 0 and not journal.backlog(box.journal_offset)
    assert box.due_count() == 5
    assert stat.S_IMODE(os.stat(next((tmp_path / "journal").glob("*.jsonl"))).st_mode) == 0o600


def test_the_journal_makes_the_plugin_dir_private(tmp_path):
    journal = Journal(tmp_path / "remixcrm" / "constant_contact")
    journal.append(encode(contact(1), "e", time.time()))
    assert stat.S_IMODE(os.stat(tmp_path / "remixcrm" / "constant_contact").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(journal.directory).st_mode) == 0o700


def test_a_dead_processs_journal_is_adopted(tmp_path):
    box = Outbox(tmp_path)
    orphan = tmp_path / "journal" / "99999-dead.jsonl"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(encode(contact(1), "e", time.time()) + encode(contact(2), "e", time.time()) + b'{"half a li')
    assert Journal(tmp_path).fold_into(box) == 2  # the torn last line of a crash is left out
    assert box.due_count() == 2 and not orphan.exists()


# --- events merge in the order they happened, whatever the fold order ---


def rec(client_id, at, seq=0, email="ada@example.com", opt_in=None, **fields):
    found = {"email": email, "client_id": str(client_id), "event": f"event {client_id}", "fields": fields, "at": at}
    if seq is not None:
        found["seq"] = seq
    if opt_in is not None:
        found["email_opt_in"] = opt_in
    return found


def test_fields_follow_event_order_not_fold_order(tmp_path):
    box = Outbox(tmp_path)
    t = time.time()
    # three journals folded newest first: each field keeps the value of the newest event that set it
    box.add_records([rec(3, t + 3, first_name="Newest")], "3.jsonl", 10)
    oldest = rec(1, t + 1, email="ADA@example.com", first_name="Oldest", phone_number="1", job_title="CEO")
    box.add_records([oldest], "1.jsonl", 10)
    box.add_records([rec(2, t + 2, phone_number="2")], "2.jsonl", 10)
    row = box.claim("me")
    assert row.contact == {
        "email": "ada@example.com",
        "fields": {"first_name": "Newest", "phone_number": "2", "job_title": "CEO"},
    }
    assert (row.client_id, row.event) == ("3", "event 3")  # the push is the newest event's
    assert sorted([row.client_id] + [r["client_id"] for r in outbox_admin.for_client(box, "1")]) == ["3", "3"]
    assert box.claim("me") is None


def test_the_newest_consent_answer_wins_and_a_tie_goes_to_no(tmp_path):
    box = Outbox(tmp_path)
    t = time.time()
    box.add_records([rec(2, t, seq=8, opt_in=False)])  # same second, later in its process: the newer word
    box.add_records([rec(1, t, seq=7, opt_in=True)])
    box.add_records([rec(3, t + 1, seq=None)])  # an old-style record (no seq) without a consent answer
    assert box.claim("me").contact["email_opt_in"] is False
    other = Outbox(tmp_path / "2")
    other.add_records([rec(1, t, seq=5, email="tie@example.com", opt_in=True)])
    other.add_records([rec(2, t, seq=5, email="tie@example.com", opt_in=False)])  # two processes, same stamp
    other.add_records([rec(3, t, seq=5, email="tie@example.com", opt_in=True)])
    assert other.claim("me").contact["email_opt_in"] is False


@pytest.fixture
def sandbox():
    with Sandbox(access_token=ACCESS_TOKEN) as sb:
        yield sb


@pytest.mark.parametrize("decline_sent_first", [False, True])
def test_a_newer_decline_is_never_pushed_when_an_older_consent_is_folded_later(
    write_config, sandbox, decline_sent_first
):
    """The field failure: an opt-in as one worker's last request, the decline as the next
    worker's first; the second worker's journal was folded first."""
    write_config(api_base_url=sandbox.api_base_url)
    rt = dispatch.runtime()
    t = time.time()
    rt.outbox.add_records([rec(2, t, seq=1, email="late@example.com", opt_in=False)], "200-b.jsonl", 50)
    if decline_sent_first:
        rt.worker.wake()
        assert flush(10)
        assert [r["state"] for r in outbox_admin.for_client(rt.outbox, "2")] == ["skipped"]
    consent = rec(1, t - 1, seq=99, email="late@example.com", opt_in=True, first_name="Lee")  # older, higher seq
    rt.outbox.add_records([consent], "100-a.jsonl", 50)
    rt.worker.wake()
    assert flush(10)
    assert sandbox.calls == [] and sandbox.api.find("late@example.com", include_deleted=True) == []
    states = [r["state"] for r in outbox_admin.for_client(rt.outbox, "1")]
    assert states and set(states) == {"skipped"}


# --- leases: a dead holder's rows come back at once; a live one renews ---

HOLD_AND_EXIT = """
import sys
from remixcrm_plugin_ctct.store.outbox import Outbox
print(len(Outbox(sys.argv[1]).claim_many("worker", 8)), flush=True)
sys.stdout.close()
"""


def test_the_leases_of_a_dead_process_are_taken_back_at_once(tmp_path):
    box = Outbox(tmp_path)
    for n in range(3):
        add_event(box, contact(n), "e")
    done = subprocess.run(
        [sys.executable, "-c", HOLD_AND_EXIT, str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.strip() == "3", done.stderr
    assert box.due_count() == 0  # leased for LEASE_SECONDS by a process that no longer exists
    assert len(box.claim_many("me", 8)) == 3


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_a_killed_process_not_yet_reaped_is_dead_too(tmp_path):
    box = Outbox(tmp_path)
    add_event(box, contact(1), "e")
    child = subprocess.Popen([sys.executable, "-c", HOLD_AND_EXIT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.read().strip() == "1"
        deadline = time.monotonic() + 10
        while owners.status(child.pid) != "Z":  # exited; its parent (we) has not reaped it: a zombie
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert box.claim("me").client_id == "1"
    finally:
        child.wait()


def test_a_holder_whose_pid_now_belongs_to_another_process_is_dead(tmp_path, monkeypatch):
    box = Outbox(tmp_path)
    add_event(box, contact(1), "e")
    now = time.time()
    started = owners.started(os.getpid())
    if started is None:
        pytest.skip("no process start times here")
    with monkeypatch.context() as m:
        elsewhere(m, owners.machine(), str(int(started) - 1))  # the same pid, but an earlier process
        assert box.claim("old", now=now) is not None
    assert box.claim("me", now=now + LEASE_CHECK_EVERY).client_id == "1"


def test_renew_extends_a_lease_and_tells_a_lost_row(tmp_path, monkeypatch):
    box = Outbox(tmp_path)
    add_event(box, contact(1), "e")
    add_event(box, contact(2), "e")
    now = time.time()
    with monkeypatch.context() as m:
        elsewhere(m, "elsewhere")
        first, second = box.claim_many("a", 2, now=now, lease=30)
    assert box.renew("a", [first.id, second.id], lease=30, now=now + 20) == {first.id, second.id}
    assert box.claim("b", now=now + 40) is None  # renewed until now + 50
    assert box.claim("b", now=now + 51 + LEASE_CHECK_EVERY).id == first.id  # lapsed: b took one
    assert box.renew("a", [first.id, second.id], now=now + 52 + LEASE_CHECK_EVERY) == {second.id}


def test_take_before_a_send_extends_the_lease_and_tells_a_lost_row(tmp_path, monkeypatch):
    box = Outbox(tmp_path)
    add_event(box, contact(1), "e")
    add_event(box, contact(2), "e")
    now = time.time()
    with monkeypatch.context() as m:
        elsewhere(m, "elsewhere")
        first, second = box.claim_many("a", 2, now=now, lease=30)
    taken = box.take("a", second, lease=30, now=now + 20)
    assert taken is not None and taken.contact["email"] == "c2@example.com"
    assert box.claim("b", now=now + 51 + LEASE_CHECK_EVERY).id == first.id  # first lapsed: b took it
    assert box.take("a", first, now=now + 52 + LEASE_CHECK_EVERY) is None  # a must not send it
    (kept,) = [r for r in box.rows() if r["id"] == second.id]
    assert kept["lease_owner"] == "a" and kept["lease_until"] == now + 50  # renewed by take


def test_release_counts_only_this_owners_rows(tmp_path):
    box = Outbox(tmp_path)
    for n in range(3):
        add_event(box, contact(n), "e")
    box.claim_many("a", 2)
    box.claim_many("b", 1)
    assert (held(box, "a"), held(box, "b"), box.pending_count()) == (2, 1, 3)
    assert box.release("a") == 2
    assert (held(box, "a"), held(box, "b"), box.pending_count(), box.due_count()) == (0, 1, 3, 2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_a_fork_while_a_sender_thread_holds_the_write_lock_leaves_the_child_working(tmp_path):
    box = Outbox(tmp_path)
    add_event(box, contact(1), "e")
    holding, release = threading.Event(), threading.Event()

    def sender_thread():
        with box.write_lock:
            holding.set()
            release.wait(30)

    t = threading.Thread(target=sender_thread)
    t.start()
    assert holding.wait(10)
    pid = os.fork()
    if pid == 0:
        signal.alarm(5)  # a hang ends the child (and fails the test) instead of the run
        code = 1
        try:
            add_event(box, contact(2), "e")
            code = 0
        finally:
            os._exit(code)
    release.set()
    t.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert box.due_count() == 2


def test_counters_count_per_utc_day_for_every_process(tmp_path):
    box, other = Outbox(tmp_path), Outbox(tmp_path)
    yesterday = time.time() - 86400
    assert box.bump_counter(THROTTLED, now=yesterday) == 1
    assert box.bump_counter(THROTTLED) == 1 and other.bump_counter(THROTTLED) == 2
    assert box.counter_today(THROTTLED) == 2 and box.counter_today("other") == 0
    assert box.counter_today(THROTTLED, now=yesterday) == 0  # earlier days are dropped


def test_an_odd_time_or_sequence_counts_as_oldest_and_never_stops_the_fold(tmp_path):
    box = Outbox(tmp_path)
    t = time.time()
    box.add_records([rec(1, t, seq=1, opt_in=False)])
    box.add_records([{**rec(2, "soon", seq="x", opt_in=True)}, {**rec(3, float("nan"), seq=None, opt_in=True)}])
    row = box.claim("me")
    assert row.contact["email_opt_in"] is False and row.client_id == "1"
