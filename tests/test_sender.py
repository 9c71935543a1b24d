import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from remixcrm_plugin_ctct.sender import BackgroundSender


@pytest.fixture
def sender():
    s = BackgroundSender(workers=2, queue_size=100)
    yield s
    s.close(2)


def test_jobs_run_off_the_callers_thread_and_flush_waits_for_them(sender):
    ran = []
    for n in range(20):
        assert sender.submit(lambda n=n: ran.append((n, threading.current_thread().name)))
    assert sender.flush(5)
    assert sorted(n for n, _ in ran) == list(range(20))
    assert all(name.startswith("remixcrm-ctct-sender-") for _, name in ran)
    assert sender.pending == 0


def test_flush_gives_up_at_its_timeout(sender):
    release = threading.Event()
    sender.submit(release.wait)
    assert sender.flush(0.05) is False
    assert sender.pending == 1
    release.set()
    assert sender.flush(5)


def test_a_failing_job_is_logged_and_the_worker_survives(sender, caplog):
    sender.submit(lambda: 1 / 0)
    ran = threading.Event()
    sender.submit(ran.set)
    assert sender.flush(5) and ran.is_set()
    assert "a background send failed unexpectedly" in caplog.text and "ZeroDivisionError" in caplog.text


def test_submit_never_blocks_and_says_no_when_full():
    s = BackgroundSender(workers=1, queue_size=2)
    release = threading.Event()
    started = threading.Event()
    assert s.submit(lambda: (started.set(), release.wait()))
    assert started.wait(5)
    assert s.submit(lambda: None)
    assert s.submit(lambda: None) is False  # 2 queued or running: full, and we did not wait
    release.set()
    assert s.flush(5)
    assert s.close(1) == 0
    assert s.submit(lambda: None) is False  # closed


def test_threads_start_on_first_submit_only():
    def ours():
        return [t for t in threading.enumerate() if t in s._threads]

    s = BackgroundSender(workers=3)
    assert s._threads == [] and ours() == []
    s.submit(lambda: None)
    assert len(ours()) == 3 and all(t.daemon for t in ours())
    s.close(2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_child_after_fork_gets_fresh_threads_and_not_the_parents_jobs(sender):
    release = threading.Event()
    sender.submit(release.wait)  # held by the parent across the fork
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report, then leave without running the parent's atexit handlers
        try:
            fresh = sender.pending
            done = threading.Event()
            ok = sender.submit(done.set) and sender.flush(5) and done.is_set()
            os.write(w, f"{fresh} {ok}".encode())
        finally:
            os._exit(0)
    os.close(w)
    report = os.read(r, 100).decode()
    os.waitpid(pid, 0)
    release.set()
    assert report == "0 True"
    assert sender.flush(5)


EXITING_HOST = r"""
import logging, sys, threading, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from remixcrm_plugin_ctct.sender import BackgroundSender
s = BackgroundSender(workers=2, exit_budget=float(sys.argv[1]))
for _ in range(5):
    s.submit(threading.Event().wait)   # a send that never finishes: an API that never answers
print(time.monotonic(), flush=True)
"""


def test_process_exit_waits_at_most_the_exit_budget_and_reports_what_was_left():
    proc = subprocess.run([sys.executable, "-c", EXITING_HOST, "0.5"], capture_output=True, text=True, timeout=30)
    ended = time.monotonic()
    assert proc.returncode == 0, proc.stderr
    waited = ended - float(proc.stdout.strip())
    assert waited < 2.5  # the budget is 0.5 s; the margin absorbs a busy CI machine
    assert "exiting with 5 send(s) to Constant Contact not done after 0.5 s; they are abandoned" in proc.stderr
