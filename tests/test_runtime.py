"""The runtime's life: events kept in memory when the disk fails, pending work after a restart,
and what a process does at exit."""

import subprocess
import sys
import threading
import time

import pytest
from conftest import ACCESS_TOKEN, RAW, SIGN_UP_URL, add_event

from remixcrm_plugin_ctct import config, flush, runtime
from remixcrm_plugin_ctct.delivery import retry_policy
from remixcrm_plugin_ctct.payload import Contact
from remixcrm_plugin_ctct.sandbox import Sandbox
from remixcrm_plugin_ctct.store.outbox import Outbox


@pytest.fixture
def sandbox():
    with Sandbox(access_token=ACCESS_TOKEN) as sb:
        yield sb


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(retry_policy, "BASE_DELAY", 0.01)
    monkeypatch.setattr(retry_policy, "MAX_DELAY", 0.05)


@pytest.fixture
def no_disk(isolated, monkeypatch):
    """The data dir cannot be made: a regular file stands where its parent should be (root
    ignores permission bits, so a read-only mode would not stop the tests in CI)."""
    blocker = isolated / "blocker"
    blocker.write_text("not a directory")
    monkeypatch.setenv("REMIXCRM_DATA_DIR", str(blocker / "data"))
    return blocker


def test_the_runtime_is_built_once_and_wired_one_way(write_config):
    write_config()
    rt = runtime.runtime()
    assert runtime.runtime() is rt and runtime.tokens() is rt.tokens
    assert rt.worker.sender is rt.delivery and rt.delivery.outbox is rt.worker.outbox is rt.outbox
    assert not hasattr(rt.delivery, "pause")  # delivery returns a pause; only the worker holds one
    settings = runtime.watcher().current().settings
    governor = rt.governors.for_settings(settings)
    assert rt.governors.for_settings(settings) is governor  # one governor while the rate and quota stay
    write_config(requests_per_second=RAW("2"))
    assert rt.governors.for_settings(runtime.watcher().current().settings) is not governor


def test_loading_the_plugin_on_an_empty_data_dir_starts_nothing(write_config):
    write_config()
    runtime.resume_pending()
    assert not config.data_dir().exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("remixcrm-ctct")]
    assert runtime.flush(0.1)  # nothing built, nothing to wait for


def test_a_pause_returned_by_delivery_is_held_by_the_worker_and_the_row_goes_back(pm, write_config, mocked):
    write_config()
    mocked.post(SIGN_UP_URL, status=403, json=[{"error_key": "forbidden", "error_message": "no scope"}])
    pm.hook.on_client_created(client={"id": 1, "email": "c1@example.com"})
    assert flush(5)  # a pause counts as settled
    rt = runtime.runtime()
    assert rt.worker.paused is not None and rt.worker.paused.reason.startswith("Constant Contact's 403")
    (row,) = rt.outbox.for_client("1")
    assert row["state"] == "pending" and row["attempts"] == 0 and "403" in row["last_error"]


def test_reset_stops_the_worker_and_forgets_the_runtime(pm, write_config, mocked):
    write_config()
    mocked.post(SIGN_UP_URL, status=201, json={"contact_id": "c"})
    pm.hook.on_client_created(client={"id": 1, "email": "c1@example.com"})
    assert flush(5)
    rt = runtime.runtime()
    runtime.reset()
    assert rt.worker.running_threads == []
    assert runtime.runtime() is not rt


def fire(pm, n, prefix="m"):
    for i in range(n):
        pm.hook.on_client_created(client={"id": f"{prefix}{i}", "email": f"{prefix}{i}@example.com", "first_name": "F"})
    return {f"{prefix}{i}@example.com" for i in range(n)}


def members(sandbox) -> set:
    return {c["email_address"].lower() for c in sandbox.members()}


def wait_for(condition, timeout=15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)  # polling with a deadline
    return condition()


def test_events_kept_in_memory_are_delivered_without_the_disk(pm, write_config, sandbox, no_disk, logs):
    write_config(api_base_url=sandbox.api_base_url)
    emails = fire(pm, 7)
    assert "kept in memory only" in logs.text
    assert flush(15)  # no outbox exists: only memory holds events, and it is empty once they are sent
    assert members(sandbox) == emails
    assert "unexpected error" not in logs.text


def test_a_memory_event_is_retried_after_a_503(pm, write_config, sandbox, no_disk, fast_retries, logs):
    write_config(api_base_url=sandbox.api_base_url)
    sandbox.faults.fail_next(1, 503)
    emails = fire(pm, 3)
    assert wait_for(lambda: members(sandbox) == emails)
    assert "kept in memory) not sent yet: 503" in logs.text


def test_memory_events_move_into_the_outbox_when_the_disk_is_back(pm, write_config, sandbox, no_disk, fast_retries):
    write_config(api_base_url=sandbox.api_base_url)
    sandbox.faults.error_rate = 1.0  # every send fails meanwhile: the events stay in memory
    emails = fire(pm, 3)
    no_disk.unlink()  # the disk takes writes again
    data = config.data_dir()

    def recorded() -> set:
        if not (data / "outbox.sqlite3").exists():
            return set()
        outbox = Outbox(data)
        return {f"m{i}@example.com" for i in range(3) if outbox.for_client(f"m{i}")}

    assert wait_for(lambda: recorded() == emails, timeout=10)
    sandbox.faults.error_rate = 0.0
    assert flush(15, retries=True)
    assert members(sandbox) == emails


PLUGIN_HOST = r"""
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from remixcrm_plugin_ctct.hookspecs import make_plugin_manager
pm = make_plugin_manager()  # RemixCRM loading its plugins: no hook is called
if sys.argv[1] == "fire":  # a worker recycled after one request (gunicorn --max-requests 1)
    pm.hook.on_client_created(client={"id": "one", "email": "one@example.com"})
else:
    sys.stdin.read()  # stay up until the test is done
"""


def pending_rows(n):
    outbox = Outbox(config.data_dir())
    for i in range(n):
        add_event(outbox, Contact(f"r{i}", f"r{i}@example.com", {"first_name": "R"}), "client_created")
    outbox.close()
    return {f"r{i}@example.com" for i in range(n)}


def test_pending_rows_go_out_when_the_plugin_is_loaded_without_any_hook(write_config, sandbox):
    write_config(api_base_url=sandbox.api_base_url)
    emails = pending_rows(3)  # left by an earlier run
    host = subprocess.Popen(
        [sys.executable, "-c", PLUGIN_HOST, "wait"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert wait_for(lambda: members(sandbox) == emails), "nothing was sent by a process that only loaded the plugin"
    finally:
        host.stdin.close()
        host.wait(10)


def test_a_worker_recycled_after_one_request_leaves_it_to_the_next_and_reports_only_its_own(write_config, sandbox):
    # gunicorn --max-requests 1: each worker exits right after its one event. The event is not
    # sent at exit (a newer event for that person may be in the next worker's journal, and the
    # two must be merged in event order first); the next worker delivers it without any hook.
    write_config(api_base_url=sandbox.api_base_url)
    outbox = Outbox(config.data_dir())
    add_event(outbox, Contact("later", "later@example.com", {}), "client_created")
    (row,) = outbox.claim_many("another-process", 1)
    outbox.retry_later(row.id, time.time() + 3600, "a retry scheduled by another process")  # not ours, not due
    outbox.close()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", PLUGIN_HOST, "fire"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 15
    assert "one@example.com" not in proc.stderr, proc.stderr
    assert "wait in the outbox" not in proc.stderr  # the other process's retry is not this worker's to report
    nxt = subprocess.Popen(
        [sys.executable, "-c", PLUGIN_HOST, "wait"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert wait_for(lambda: members(sandbox) == {"one@example.com"}), "the next worker did not deliver it"
    finally:
        nxt.stdin.close()
        nxt.wait(10)
