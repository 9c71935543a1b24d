import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import add_event
from prefork_server import wait_until

from remixcrm_plugin_ctct.delivery.pauses import Pause
from remixcrm_plugin_ctct.delivery.worker import Worker
from remixcrm_plugin_ctct.payload import Contact
from remixcrm_plugin_ctct.store.outbox import Outbox


def contact(n):
    return Contact(str(n), f"c{n}@example.com", {"first_name": f"C{n}"})


class Recorder:
    """A stand-in for delivery: marks rows delivered and remembers who did it."""

    def __init__(self, outbox):
        self.outbox, self.rows, self.memory = outbox, [], []
        self.block = threading.Event()
        self.block.set()
        self.started = threading.Event()

    def work_row(self, row):
        self.started.set()
        self.block.wait()
        self.rows.append((row.id, threading.current_thread().name))
        self.outbox.delivered(row.id, f"contact-{row.id}", "created")

    def work_memory(self, item):
        self.memory.append(item.record)

    def shared_pause(self):
        return None

    def import_policy(self):  # None: rows of any lane come one by one (the import lane is tested elsewhere)
        return None


class Stub:
    """A sender made of plain functions."""

    def __init__(self, work_row=lambda row: None, work_memory=lambda item: None, shared_pause=lambda: None):
        self.work_row, self.work_memory, self.shared_pause = work_row, work_memory, shared_pause
        self.import_policy = lambda: None


def senders(worker):
    return [t for t in worker.running_threads if t.name.startswith("remixcrm-ctct-sender-")]


@pytest.fixture
def parts(tmp_path):
    outbox = Outbox(tmp_path / "data")
    recorder = Recorder(outbox)
    sender = Worker(outbox, recorder, workers=2)
    yield outbox, recorder, sender
    recorder.block.set()
    sender.close(2)


def test_rows_are_worked_off_the_callers_thread_and_flush_waits(parts):
    outbox, recorder, sender = parts
    for n in range(20):
        add_event(outbox, contact(n), "client_created")
    sender.wake()
    assert sender.flush(10)
    assert sorted(r for r, _ in recorder.rows) == list(range(1, 21))
    assert all(name.startswith("remixcrm-ctct-sender-") for _, name in recorder.rows)
    assert outbox.due_count() == 0


def test_flush_gives_up_at_its_timeout(parts):
    outbox, recorder, sender = parts
    recorder.block.clear()
    add_event(outbox, contact(1), "client_created")
    sender.wake()
    assert recorder.started.wait(5)
    assert sender.flush(0.05) is False
    recorder.block.set()
    assert sender.flush(5)


def test_flush_waits_on_while_a_pause_cannot_tell_whether_its_cause_was_fixed(parts):
    """A pause waits for the tokens to change; the shared store that holds them is out of reach
    (PostgreSQL restarting): flush() cannot tell, so it is not settled, and never raises."""
    from remixcrm_plugin_ctct.delivery.pauses import Pause
    from remixcrm_plugin_ctct.store.interfaces import StoreUnavailable

    outbox, recorder, sender = parts

    def changed():
        raise StoreUnavailable("postgresql://db/remixcrm: server closed the connection")

    sender.pauses.hold(Pause("Constant Contact needs re-authorisation", changed=changed))
    assert sender.flush(0.05) is False


def test_an_unexpected_error_is_logged_and_the_worker_carries_on(parts, caplog):
    outbox, recorder, sender = parts
    calls = []

    def flaky(row):
        calls.append(row.id)
        if len(calls) == 1:
            raise RuntimeError("boom")
        outbox.delivered(row.id, "c", "created")

    recorder.work_row = flaky
    add_event(outbox, contact(1), "e")
    add_event(outbox, contact(2), "e")
    sender.wake()
    assert sender.flush(5)
    assert "hit an unexpected error; it is tried again in 60 s" in caplog.text
    assert sorted(calls) == [1, 2]
    assert outbox.due_count(time.time() + 61) == 1  # not stuck in a lease: due again in a minute


def test_memory_items_are_worked_and_bounded(tmp_path):
    outbox = Outbox(tmp_path / "d")
    recorder = Recorder(outbox)
    recorder.block.clear()
    taken = threading.Event()

    def work_memory(item):
        taken.set()
        recorder.block.wait()
        recorder.memory.append(item.record)

    recorder.work_memory = work_memory
    sender = Worker(outbox, recorder, workers=1, memory_limit=2)
    assert sender.submit_memory("a")
    assert taken.wait(5)  # the worker took "a" and is busy with it
    assert sender.submit_memory("b") and sender.submit_memory("c")
    assert sender.submit_memory("d") is False  # memory holds 2
    recorder.block.set()
    assert sender.flush(5)
    assert recorder.memory == ["a", "b", "c"]
    sender.close(1)


def test_threads_start_on_first_wake_only(tmp_path):
    outbox = Outbox(tmp_path / "d")
    sender = Worker(outbox, Stub(), workers=3)
    assert sender.running_threads == []
    sender.wake()
    # the hook's thread starts one (each start waits for the new thread); that one starts the rest
    assert len(senders(sender)) == 1
    assert wait_until(lambda: len(senders(sender)) == 3 and sender.leases.thread is not None, 5)
    sender.close(1)


def test_a_pause_stops_claiming_until_its_cause_changes(parts):
    outbox, recorder, sender = parts
    fixed = threading.Event()
    worked = []

    def needs_fix(row):
        worked.append(row.id)
        if not fixed.is_set():
            return Pause("a test", changed=fixed.is_set)  # the worker hands the row back
        outbox.delivered(row.id, "c", "created")

    recorder.work_row = needs_fix
    for n in range(3):
        add_event(outbox, contact(n), "e")
    sender.wake()
    assert sender.flush(5)  # paused counts as settled
    assert sender.paused is not None and outbox.due_count() == 3
    assert len(worked) <= 2  # at most one try per worker, then the pause holds
    fixed.set()
    sender.wake()
    deadline = time.monotonic() + 10
    while outbox.due_count() and time.monotonic() < deadline:
        sender.flush(1)
    assert outbox.due_count() == 0


def test_a_shared_pause_from_another_process_is_honoured(tmp_path):
    outbox = Outbox(tmp_path / "d")
    recorder = Recorder(outbox)
    recorder.shared_pause = lambda: Pause("the daily quota", until=time.time() + 3600)
    sender = Worker(outbox, recorder, workers=2)
    add_event(outbox, contact(1), "e")
    sender.wake()
    assert sender.flush(2)
    assert recorder.rows == [] and outbox.due_count() == 1
    sender.close(1)


def test_a_pause_that_only_time_lifts_holds_its_row_back_until_then(parts):
    outbox, recorder, sender = parts
    until = time.time() + 3600
    recorder.work_row = lambda row: Pause("the daily quota", until=until, error="429 quota")
    add_event(outbox, contact(1), "e")
    sender.wake()
    assert sender.flush(5)
    assert sender.paused.until == until
    assert outbox.due_count() == 0 and outbox.due_count(until) == 1  # handed back, due when the pause ends
    (row,) = outbox.for_client("1")
    assert row["attempts"] == 0 and row["last_error"] == "429 quota"  # the attempt is not counted


def test_a_pause_is_held_before_its_row_is_handed_back(tmp_path):
    outbox = Outbox(tmp_path / "d")
    worked = []

    def wall(row):  # the first row meets a wall; a second worker must not take it again meanwhile
        worked.append(row.id)
        return Pause("a test", changed=lambda: False)

    sender = Worker(outbox, Stub(work_row=wall), workers=4)
    add_event(outbox, contact(1), "e")
    sender.wake()
    assert sender.flush(5)
    assert worked == [1] and outbox.due_count() == 1
    sender.close(1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_threads_and_identity(parts):
    outbox, recorder, sender = parts
    sender.wake()
    parent_owner = sender.owner
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            sender.wake()
            ok = sender.owner != parent_owner and wait_until(lambda: len(senders(sender)) == 2, 5)
            os.write(w, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(w)
    report = os.read(r, 10)
    os.waitpid(pid, 0)
    assert report == b"ok"


EXITING_HOST = r"""
import logging, sys, threading, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from remixcrm_plugin_ctct.store.outbox import Outbox
from remixcrm_plugin_ctct.payload import Contact
from remixcrm_plugin_ctct.record import Event
from remixcrm_plugin_ctct.delivery.worker import Worker

class Stuck:
    entered = threading.Semaphore(0)
    def work_row(self, row):
        self.entered.release()
        threading.Event().wait()
    def work_memory(self, item):
        return None
    def shared_pause(self):
        return None
    def import_policy(self):
        return None

outbox = Outbox(sys.argv[1])
for n in range(5):
    outbox.add_records([Event.of(Contact(str(n), f"c{n}@example.com", {}), "e", time.time()).to_record()])
stuck = Stuck()
s = Worker(outbox, stuck, workers=2, exit_budget=float(sys.argv[2]))
s.wake()
for _ in range(2):  # both workers are inside a send that never ends (an API that never answers)
    assert stuck.entered.acquire(timeout=10)
print(time.monotonic(), flush=True)
"""


def test_exit_waits_at_most_the_budget_and_leaves_everything_recorded(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", EXITING_HOST, str(tmp_path / "d"), "0.5"], capture_output=True, text=True, timeout=30
    )
    ended = time.monotonic()
    assert proc.returncode == 0, proc.stderr
    assert ended - float(proc.stdout.strip()) < 2.5  # the budget is 0.5 s; the margin absorbs a busy CI machine
    assert "exiting: 5 event(s) wait in the outbox and go out with the next run" in proc.stderr
    outbox = Outbox(tmp_path / "d")
    assert outbox.due_count() == 5  # leases handed back: the next process can send them at once


def test_a_pause_cleared_by_another_worker_between_check_and_read_is_no_error(parts, caplog):
    outbox, recorder, sender = parts

    def cleared_meanwhile():  # the other worker clears the pause right after this one checked it
        sender.pauses.lift()
        return True

    sender.pauses.hold(Pause("a test", changed=cleared_meanwhile))
    add_event(outbox, contact(1), "e")
    started = time.monotonic()
    sender.wake()
    assert sender.flush(5)
    assert "unexpected error" not in caplog.text
    assert time.monotonic() - started < 1.5  # no stall after a crashed step
    assert [r for r, _ in recorder.rows] == [1]


def test_flush_is_false_while_the_outbox_cannot_be_read(tmp_path, caplog):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "outbox.sqlite3").write_bytes(b"this is not a database" * 100)
    sender = Worker(Outbox(tmp_path / "d"), Stub(), workers=1)
    assert sender.flush(0.2) is False
    assert sender.flush(0.2) is False
    assert caplog.text.count("cannot read the outbox") == 1
    sender.close(1)


def test_leases_of_a_long_send_are_renewed(parts, monkeypatch):
    from remixcrm_plugin_ctct.store import outbox as outbox_module

    outbox, recorder, sender = parts
    monkeypatch.setattr(outbox_module, "LEASE_SECONDS", 0.15)  # renewed every 50 ms
    renewed = []

    def renew(self, owner, ids, lease=30.0):
        renewed.append((owner, list(ids), lease))
        return set(ids)

    monkeypatch.setattr(Outbox, "renew", renew)
    recorder.block.clear()  # the send takes long
    add_event(outbox, contact(1), "e")
    sender.wake()
    assert recorder.started.wait(5)
    deadline = time.monotonic() + 5
    while len(renewed) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert renewed[:3] == [(sender.owner, [1], 0.15)] * 3  # by the keeper during the send
    recorder.block.set()
    assert sender.flush(5)


def test_idle_threads_stop_and_the_next_event_starts_them_again(parts, monkeypatch):
    from remixcrm_plugin_ctct.delivery import worker as worker_module

    outbox, recorder, sender = parts
    monkeypatch.setattr(worker_module, "IDLE_STOP", 0.2)
    monkeypatch.setattr(worker_module, "IDLE_POLL", 0.05)
    sender.wake()
    assert wait_until(lambda: len(sender.running_threads) == 3, 5)  # two workers and the lease keeper
    started = sender.running_threads
    deadline = time.monotonic() + 5
    while any(t.is_alive() for t in started) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling with a deadline: the threads leave on their own
    assert sender.running_threads == [] and not any(t.is_alive() for t in started)
    add_event(outbox, contact(1), "e")
    sender.wake()
    assert sender.flush(5)
    assert [r for r, _ in recorder.rows] == [1]


def test_memory_events_wait_for_their_retry_and_count_as_unsettled(tmp_path):
    attempts = []

    def work_memory(item):
        attempts.append((item.record, item.attempts))
        return None if len(attempts) > 1 else time.time() + 0.2  # a 503 once: try again in 0.2 s

    sender = Worker(Outbox(tmp_path / "d"), Stub(work_memory=work_memory), workers=1)
    assert sender.submit_memory({"client_id": "1"})
    assert sender.flush(5, retries=True)
    assert attempts == [({"client_id": "1"}, 1), ({"client_id": "1"}, 2)]
    sender.close(1)


def test_memory_events_of_one_email_go_out_once_as_its_newest_state():
    # sent one by one, an older "yes" went out before the newer "no" (subscribing someone who
    # declined), and a retried older event overwrote newer fields
    from remixcrm_plugin_ctct.delivery.memory_lane import MemoryLane

    def rec(at, seq, opt_in=None, name="v1", email="Eve@example.com"):
        found = {
            "email": email,
            "client_id": "7",
            "event": "client_created",
            "fields": {"first_name": name},
            "at": at,
            "seq": seq,
        }
        return found if opt_in is None else {**found, "email_opt_in": opt_in}

    lane = MemoryLane()
    assert lane.add(rec(1.0, 1, True)) and lane.add(rec(2.0, 2, False, "v2", "eve@example.com"))
    assert lane.add(rec(1.5, 3, name="old", email="bob@example.com"))
    item = lane.take(now=10.0)
    assert item.record["email_opt_in"] is False and item.record["fields"] == {"first_name": "v2"}
    # a retry put back after a newer event arrived meanwhile: still one item, still the newest state
    assert lane.add(rec(3.0, 4, None, "v3"))
    lane.put_back(item, when=5.0)
    assert len(lane) == 2
    found = [lane.take(now=10.0), lane.take(now=10.0)]
    eve = next(i for i in found if i.record["email"].lower() == "eve@example.com")
    assert eve.record["email_opt_in"] is False and eve.record["fields"] == {"first_name": "v3"}
    moved = []
    lane.put_back(eve, when=0.0)
    assert lane.move_to(moved.extend) == 3 and len(moved) == 3  # the outbox gets every event, merged there


def test_flush_is_not_settled_while_a_claim_whose_answer_was_lost_holds_rows(parts):
    """A shared store retries a claim on a new connection when the old one died after the commit:
    the first claim's rows are leased to us, and no step of ours works on them. flush() must not
    call that settled (it did: they were neither due nor in flight here)."""
    outbox, recorder, sender = parts
    add_event(outbox, contact(1), "client_created")
    assert outbox.claim_many(sender.owner, 4, lease=60)  # leased to this process; the answer "lost"
    assert sender.flush(0.3) is False
    assert recorder.rows == []


class _SteppedClock:
    """``time`` as the worker module sees it, with the wall clock stepped back (NTP, a VM
    restored from a snapshot) while monotonic time goes on."""

    def __init__(self, back: float):
        self.back = back

    def time(self):
        return time.time() - self.back

    def __getattr__(self, name):
        return getattr(time, name)


def test_a_wall_clock_step_back_while_rows_wait_for_the_import_window_does_not_hold_a_sign_up(tmp_path, monkeypatch):
    """The window gate (WINDOW_ROUND_EVERY) measures "since the last round" on the wall clock: a
    step back of an hour made a consented event wait an hour (before the gate: IDLE_POLL)."""
    from remixcrm_plugin_ctct.delivery import worker as worker_module

    outbox = Outbox(tmp_path / "data")
    recorder = Recorder(outbox)
    recorder.import_policy = lambda: ("implicit", 60.0)  # unknown consent waits a minute for company
    sender = Worker(outbox, recorder, workers=1)
    try:
        add_event(outbox, Contact("1", "unknown@example.com", {}), "client_created")  # the import lane
        sender.wake()
        assert wait_until(lambda: sender._window_until is not None, 10)
        monkeypatch.setattr(worker_module, "time", _SteppedClock(3600.0))
        add_event(outbox, Contact("2", "yes@example.com", {}, True), "client_created")  # sign_up_form
        sender.wake()
        assert wait_until(lambda: recorder.rows, 5), "the consented event waits for the clock to catch up"
    finally:
        sender.close(2)
