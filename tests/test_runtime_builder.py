"""sender = "thread": the runtime is built by a thread of ours, never in a host's request (found
by review: a fork while it sleeps or builds, a hook while it builds, a builder that could not
start, a switch of sender while it waits)."""

import json
import os
import subprocess
import sys
import threading

import pytest
from conftest import ACCESS_TOKEN

from remixcrm_plugin_ctct import flush
from remixcrm_plugin_ctct import runtime as dispatch
from remixcrm_plugin_ctct.sandbox import Sandbox

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")

FORK_MID_BUILD = r"""
import json, os, sys, threading, time
from remixcrm_plugin_ctct import runtime as dispatch, flush
from remixcrm_plugin_ctct.hookspecs import make_plugin_manager
pm = make_plugin_manager()
building, go = threading.Event(), threading.Event()
real = dispatch.Runtime.__init__
def init(self, *a, **k):
    if threading.current_thread().name == "remixcrm-ctct-start" and os.getpid() == PARENT:
        building.set(); go.wait(10)   # the builder, inside runtime(), holding dispatch._lock
    real(self, *a, **k)
PARENT = os.getpid()
dispatch.Runtime.__init__ = init
def fire(prefix, n):
    for i in range(n):
        pm.hook.on_client_created(client={"id": f"{prefix}{i}", "email": f"{prefix}{i}@example.com", "first_name": "F"})
fire("p", 2)            # the master's hook (--preload)
if sys.argv[1] == "mid-build":
    assert building.wait(5)
pid = os.fork()
if pid == 0:
    code = 1
    try:
        fire("k", 3)
        code = 0 if flush(10) else 2
    finally:
        os._exit(code)
go.set()
ok = flush(10)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.01)
else:
    os.kill(pid, 9); os.waitpid(pid, 0); status = "hung"
print(json.dumps({"parent": ok, "child": status if status == "hung" else os.waitstatus_to_exitcode(status)}))
"""


@pytest.mark.parametrize("when", ["mid-sleep", "mid-build"])
def test_a_fork_while_the_builder_sleeps_or_builds(write_config, when):
    with Sandbox(access_token=ACCESS_TOKEN) as sandbox:
        write_config(api_base_url=sandbox.api_base_url)
        proc = subprocess.run([sys.executable, "-c", FORK_MID_BUILD, when], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"parent": True, "child": 0}, proc.stderr
        members = {c["email_address"].lower() for c in sandbox.members()}
        assert {"p0@example.com", "p1@example.com", "k0@example.com", "k1@example.com", "k2@example.com"} <= members


# --- a hook while the builder (or the resume thread) builds the runtime ---

BOB = {"id": 102, "email": "bob@example.com", "first_name": "Bob"}
ADA = {"id": 101, "email": "ada@example.com", "first_name": "Ada"}


def _slow_build(monkeypatch, thread_name):
    """Runtime construction in ``thread_name`` waits for ``go`` (a store that is slow to open,
    imports under load, a loaded machine): what does a host thread's hook wait for meanwhile?"""
    building, go = threading.Event(), threading.Event()
    real = dispatch.Runtime.__init__

    def init(self, *args, **kwargs):
        if threading.current_thread().name == thread_name:
            building.set()
            go.wait(10)
        real(self, *args, **kwargs)

    monkeypatch.setattr(dispatch.Runtime, "__init__", init)
    return building, go


def _hook_returns_while_blocked(pm, go):
    done = threading.Event()

    def second():
        pm.hook.on_client_created(client=BOB)
        done.set()

    t = threading.Thread(target=second)
    t.start()
    returned = done.wait(2)  # a bound, not a synchronisation: the hook should take microseconds
    go.set()
    t.join(10)
    return returned


def test_a_hook_never_waits_for_the_builder(pm, write_config, monkeypatch):
    write_config()
    building, go = _slow_build(monkeypatch, "remixcrm-ctct-start")
    pm.hook.on_client_created(client=ADA)
    assert building.wait(5)
    assert _hook_returns_while_blocked(pm, go), "the hook waited on runtime._lock for the builder's whole build"


def test_the_first_hook_after_a_restart_never_waits_for_the_resume_thread(pm, write_config, monkeypatch):
    write_config()
    (dispatch.config.data_dir() / "journal").mkdir(parents=True)  # an earlier run left its journals
    building, go = _slow_build(monkeypatch, "remixcrm-ctct-resume")
    dispatch.resume_pending()  # what loading the hooks does
    assert building.wait(5)
    assert _hook_returns_while_blocked(pm, go), "the hook waited on runtime._lock (host_side) for the resume's build"


def test_a_builder_started_before_the_switch_to_sender_process_starts_no_threads(pm, write_config, monkeypatch):
    from remixcrm_plugin_ctct import spawn

    monkeypatch.setattr(spawn.SenderStarter, "ensure", lambda self: None)  # no sender process comes
    write_config()
    pm.hook.on_client_created(client=ADA)  # sender = "thread": the builder is on its way
    builder = dispatch._builder
    write_config(sender="process")  # the operator switches
    pm.hook.on_client_created(client=BOB)
    if builder is not None:
        builder.wait(5)
    rt = dispatch._runtime
    assert rt is None or rt.worker.running_threads == [], "sender threads in a host told to use the sender process"


def test_first_hooks_of_many_host_threads_at_once_build_one_runtime_and_deliver_all(pm, write_config, monkeypatch):
    built = []
    real = dispatch.Runtime.__init__

    def init(self, *args, **kwargs):
        built.append(threading.current_thread().name)
        real(self, *args, **kwargs)

    monkeypatch.setattr(dispatch.Runtime, "__init__", init)
    with Sandbox(access_token=ACCESS_TOKEN) as sandbox:
        write_config(api_base_url=sandbox.api_base_url)
        barrier = threading.Barrier(8)

        def fire(n):
            barrier.wait()
            for i in range(5):
                pm.hook.on_client_created(client={"id": f"t{n}-{i}", "email": f"t{n}-{i}@example.com"})

        threads = [threading.Thread(target=fire, args=(n,)) for n in range(8)]
        [t.start() for t in threads]
        [t.join(10) for t in threads]
        assert flush(20)
        members = {c["email_address"].lower() for c in sandbox.members()}
        assert members >= {f"t{n}-{i}@example.com" for n in range(8) for i in range(5)}
        assert len(built) == 1
        assert len(list((dispatch.config.data_dir() / "journal").glob("*.jsonl"))) == 1


def test_a_builder_that_could_not_start_once_does_not_stop_this_process_sending_for_good(
    pm, write_config, monkeypatch, logs
):
    real_start = dispatch.start_thread
    failed = []

    def start(function, args):
        if not failed:
            failed.append(1)
            raise RuntimeError("can't start new thread")  # a cgroup's pids.max, memory pressure: once
        return real_start(function, args)

    monkeypatch.setattr(dispatch, "start_thread", start)
    with Sandbox(access_token=ACCESS_TOKEN) as sandbox:
        write_config(api_base_url=sandbox.api_base_url)
        pm.hook.on_client_created(client=ADA)  # recorded in the journal; the builder did not start
        assert failed
        assert "on_client_created failed inside the plugin" not in logs.text  # one clear line instead:
        assert "could not start the constant contact sender threads (can't start new thread)" in logs.text
        pm.hook.on_client_created(client=BOB)  # the next hook starts one
        assert flush(3), "no sender thread ever starts in this process: a never-started builder is kept"
        assert {c["email_address"].lower() for c in sandbox.members()} >= {"ada@example.com", "bob@example.com"}


def test_the_hook_does_not_wait_for_the_builder_thread_to_be_scheduled(pm, write_config, monkeypatch):
    """threading.Thread.start() waits until the new thread runs: 5-9 ms of a worker's first hook
    on a busy machine (bench/prefork.py). The builder is started without that wait."""
    started_by = []
    real = threading.Thread.start

    def start(self):
        started_by.append(threading.get_ident())  # the builder starts the workers later: its own ident
        return real(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    write_config()
    pm.hook.on_client_created(client=ADA)
    assert threading.get_ident() not in started_by  # no threading.Thread started in the hook's thread
    builder = dispatch._builder
    assert builder is None or builder.wait(5)
    for thread in threading.enumerate():  # the helper that started it is no threading object; the builder ends
        if thread.name == dispatch.BUILDER_NAME:
            thread.join(5)  # a stale dummy thread (threading.current_thread() in a bare thread) cannot be joined
    assert dispatch.BUILDER_NAME not in [t.name for t in threading.enumerate()]
