"""A fork after events (gunicorn --preload) leaves the child nothing of the parent's to share:
no HTTP session, no held lock, no thread. The forking happens in a subprocess, so the pytest
process itself never forks while it has threads."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ACCESS_TOKEN, RAW

from remixcrm_plugin_ctct import config
from remixcrm_plugin_ctct.sandbox import Sandbox
from remixcrm_plugin_ctct.store.outbox import Outbox

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")

COMMON = r"""
import contextlib, json, os, sys, threading, time
from remixcrm_plugin_ctct.ctct import client as api_client
from remixcrm_plugin_ctct import runtime as dispatch, flush
from remixcrm_plugin_ctct.hookspecs import make_plugin_manager
pm = make_plugin_manager()

def fire(prefix, n):
    for i in range(n):
        pm.hook.on_client_created(client={"id": f"{prefix}{i}", "email": f"{prefix}{i}@example.com", "first_name": "F"})

def wait_child(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)  # polling with a deadline
    os.kill(pid, 9)  # hung: the test reports it instead of hanging too
    os.waitpid(pid, 0)
    return "hung"
"""

SHARED_SESSION = (
    COMMON
    + r"""
fire("p", 4)  # before the fork, as with --preload
assert flush(20)
parent_session = api_client.session()
pid = os.fork()
if pid == 0:
    code = 1
    try:
        if api_client.session() is parent_session:
            code = 3
        else:
            fire("k", 12)  # the child sends while the parent does
            code = 0 if flush(20) else 2
    finally:
        os._exit(code)
fire("q", 12)
ok = flush(20)
print(json.dumps({"parent_flushed": ok, "child": wait_child(pid, 30)}))
"""
)


def unsubscribed(sandbox, prefixes, n):
    """Every other contact the events name has unsubscribed before."""
    emails = {f"{p}{i}@example.com" for p in prefixes for i in range(0, n, 2)}
    for email in emails:
        sandbox.api.seed_contact(email, permission_to_send="unsubscribed")
    return emails


def test_parent_and_child_never_share_the_http_session(write_config):
    with Sandbox(access_token=ACCESS_TOKEN) as sandbox:
        write_config(api_base_url=sandbox.api_base_url, consent_guard=RAW("true"))
        opted_out = unsubscribed(sandbox, ("k", "q"), 12)
        proc = subprocess.run([sys.executable, "-c", SHARED_SESSION], capture_output=True, text=True, timeout=90)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report == {"parent_flushed": True, "child": 0}, "child: 3 = it reused the parent's session"
        for email in opted_out:  # nobody re-subscribed by an answer meant for another process
            assert sandbox.api.contacts[email]["permission_to_send"] == "unsubscribed", email
        rows = Outbox(config.data_dir())._query("SELECT email_key, state, contact_id FROM events")
        assert len(rows) == 28
        for email, state, contact_id in rows:
            if email in opted_out:
                assert state == "skipped", email
            else:  # each row carries its own contact's id, not another's
                assert state == "delivered" and contact_id == sandbox.api.contacts[email]["contact_id"], email


HELD_LOCKS = (
    COMMON
    + r"""
from remixcrm_plugin_ctct import config
fire("p", 2)
assert flush(20)
rt = dispatch.runtime()
governor = rt.governors.for_settings(dispatch.watcher().current().settings)
locks = [rt.outbox.write_lock, rt.worker.inflight.cond, rt.journal._append_lock, rt.journal._fold_lock, governor._lock,
         api_client._session_lock, rt.tokens._lock, dispatch._lock, dispatch.watcher()._lock]
if hasattr(governor, "governor"):  # the diskless fallback around the governor
    locks.append(governor.governor.lock)
held, done = threading.Event(), threading.Event()

def sender_thread_mid_write():  # a sender thread inside its critical sections at fork time
    with contextlib.ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        held.set()
        done.wait()

threading.Thread(target=sender_thread_mid_write, daemon=True).start()
assert held.wait(5)
pid = os.fork()
if pid == 0:
    code = 1
    try:
        fire("k", 3)
        code = 0 if flush(5) else 2
    finally:
        os._exit(code)
done.set()
print(json.dumps({"child": wait_child(pid, 15)}))
"""
)


def test_a_fork_while_a_sender_thread_holds_locks_does_not_hang_the_child(write_config):
    with Sandbox(access_token=ACCESS_TOKEN) as sandbox:
        write_config(api_base_url=sandbox.api_base_url)
        proc = subprocess.run([sys.executable, "-c", HELD_LOCKS], capture_output=True, text=True, timeout=40)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"child": 0}, "the child's hook or flush hung on a lock held at fork time"
        members = {c["email_address"].lower() for c in sandbox.members()}
        assert {f"k{i}@example.com" for i in range(3)} <= members


SQLITE_CHURN = r"""
import os, signal, sys, threading, time
from pathlib import Path
from remixcrm_plugin_ctct.store import db
path = Path(sys.argv[1]) / "churn.sqlite3"
SCHEMA = "CREATE TABLE IF NOT EXISTS t (x)"
db.connect(path, SCHEMA).close()
stop = False

def churn():  # what sender threads do: open, write in transactions, close, all the time
    while not stop:
        conn = db.connect(path, SCHEMA)
        for _ in range(3):
            with db.transaction(conn):
                conn.execute("INSERT INTO t VALUES (1)"); conn.execute("INSERT INTO t VALUES (2)")
        conn.close()

for _ in range(2):
    threading.Thread(target=churn, daemon=True).start()
hung = 0
for _ in range(int(sys.argv[2])):
    pid = os.fork()
    if pid == 0:
        signal.alarm(8)  # a child stuck on a SQLite mutex copied held from the parent dies here
        code = 0
        try:  # a transaction of the parent's copied into the child: "database is locked" for ever
            conn = db.connect(path, SCHEMA, busy_timeout=5.0)
            with db.transaction(conn):
                conn.execute("INSERT INTO t VALUES (3)")
        except Exception as e:  # only "locked" is this test's concern (see the test's comment)
            code = 3 if "locked" in str(e) else 0
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    hung += (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM) or os.waitstatus_to_exitcode(status) == 3
stop = True
print(hung)
"""


def test_a_fork_while_threads_are_inside_sqlite_never_hangs_the_child(tmp_path):
    # seen: 15 of 200 such forks left the child hung for ever in its first sqlite3.connect; a fork
    # between BEGIN and COMMIT left a gunicorn worker's outbox "locked" for good.
    # Not covered yet (see the review report): a child also inherits SQLite's bookkeeping of the
    # parent's *idle* connections (the WAL-index mapping), seen here as SIGBUS or "malformed".
    proc = subprocess.run(
        [sys.executable, "-c", SQLITE_CHURN, str(tmp_path), "80"], capture_output=True, text=True, timeout=40
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0", f"{proc.stdout.strip()} of 80 children hung or found the outbox locked for ever"
