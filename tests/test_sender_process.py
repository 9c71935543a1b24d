"""``sender = "process"``: the host process only appends to its journal; one sender process per
data dir (started by a hook, or ``remixcrm-ctct worker``) delivers over real HTTP to the sandbox.

Every wait on another process is a poll with a deadline; every sender process a test started
is killed (by pid) at teardown."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ACCESS_TOKEN, RAW
from prefork_server import wait_until

from remixcrm_plugin_ctct import config, spawn
from remixcrm_plugin_ctct import runtime as dispatch
from remixcrm_plugin_ctct.sandbox import Sandbox

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX: flock, sessions")

# A host process: fires the hooks, reports its threads and socket audit events, then dies by
# kill -9 (nothing it wrote may depend on a clean exit).
HOST = r"""
import json, os, signal, sys, threading
opened = []
SOCKETS = ("socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo")
sys.addaudithook(lambda event, args: opened.append(event) if event in SOCKETS else None)
from remixcrm_plugin_ctct.hookspecs import make_plugin_manager
pm = make_plugin_manager()
for i in range(int(sys.argv[1])):
    pm.hook.on_client_created(client={"id": f"h{i}", "email": f"h{i}@example.com", "first_name": "Host"})
fds = [f"/proc/self/fd/{fd}" for fd in os.listdir("/proc/self/fd")]
fds = [os.readlink(fd) for fd in fds if os.path.exists(fd)]
stores = [path for path in fds if "sqlite" in path]
threads = [t.name for t in threading.enumerate()]
print(json.dumps({"threads": threads, "sockets": opened, "stores": stores}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def sandbox():
    with Sandbox(access_token=ACCESS_TOKEN) as sb:
        yield sb


@pytest.fixture
def senders(isolated):
    """Kills, at teardown, every sender process serving this test's data dir."""
    yield
    for pid in sender_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def sender_pids() -> list[int]:
    """The live sender processes of this test's data dir (their command line names its log)."""
    mark = str(config.data_dir() / spawn.LOG_NAME).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if mark in cmdline and b"worker" in cmdline and state != "Z":
            found.append(int(entry))
    return found


def members(sandbox) -> set[str]:
    return {c["email_address"].lower() for c in sandbox.members()}


def fire(pm, prefix: str, n: int) -> set[str]:
    for i in range(n):
        pm.hook.on_client_created(client={"id": f"{prefix}{i}", "email": f"{prefix}{i}@example.com", "first_name": "P"})
    return {f"{prefix}{i}@example.com" for i in range(n)}


def test_the_host_starts_no_thread_and_opens_no_socket_and_the_sender_process_delivers(
    sandbox, write_config, senders, isolated
):
    write_config(api_base_url=sandbox.api_base_url, sender="process")
    host = subprocess.run([sys.executable, "-c", HOST, "30"], capture_output=True, text=True, timeout=60, check=False)
    assert host.returncode == -signal.SIGKILL, host.stderr
    seen = json.loads(host.stdout)
    assert seen == {"threads": ["MainThread"], "sockets": [], "stores": []}, host.stderr  # nor opens the outbox
    wanted = {f"h{i}@example.com" for i in range(30)}
    assert wait_until(lambda: wanted <= members(sandbox), 30), f"missing: {sorted(wanted - members(sandbox))}"
    assert len(sender_pids()) == 1
    log = (config.data_dir() / spawn.LOG_NAME).read_text()
    assert "sender process" in log and "@example.com" not in log.replace("h***@example.com", "")
    assert (config.data_dir() / spawn.LOG_NAME).stat().st_mode & 0o777 == 0o600


def test_one_sender_process_per_data_dir_however_many_start_at_once(senders):
    started = [spawn.start(config.data_dir(), 30.0) for _ in range(4)]
    assert wait_until(lambda: sum(p.poll() is not None for p in started) == 3, 20), "not exactly one stayed"
    assert [p.returncode for p in started if p.poll() is not None] == [0, 0, 0]
    assert spawn.SenderStarter(config.data_dir()).alive()
    assert len(sender_pids()) == 1
    (last,) = [p for p in started if p.poll() is None]
    stopping = time.monotonic()
    last.send_signal(signal.SIGTERM)  # as systemd or a container runtime stops the service
    assert last.wait(10) == 0
    assert time.monotonic() - stopping <= 2.5  # the exit budget is 2 s
    assert not spawn.SenderStarter(config.data_dir()).alive()  # the lock went with it


def test_the_sender_process_leaves_when_idle_and_the_host_starts_nothing_else(
    pm, sandbox, write_config, senders, monkeypatch
):
    monkeypatch.setattr(spawn, "IDLE_EXIT", 0.3)
    write_config(api_base_url=sandbox.api_base_url, sender="process")
    wanted = fire(pm, "idle", 3)
    child = dispatch.runtime().starter._child
    assert child is not None
    assert child.wait(30) == 0  # delivered everything, then nothing to do for 0.3 s: it left
    assert wanted <= members(sandbox)
    assert "nothing to do" in (config.data_dir() / spawn.LOG_NAME).read_text()
    assert dispatch.runtime().worker.running_threads == []  # this (host) process sent nothing itself


def test_kill_9_of_the_sender_process_the_next_hook_starts_another_and_nothing_is_lost(
    pm, sandbox, write_config, senders, monkeypatch
):
    monkeypatch.setattr(spawn, "CHECK_EVERY", 0.0)  # every hook looks (the default: once a second)
    write_config(api_base_url=sandbox.api_base_url, sender="process", requests_per_second=RAW("1000"))
    sandbox.faults.configure({"hang_next": 1})  # the first send never gets an answer: in flight when killed
    arrivals, decide = [], sandbox.faults.decide
    sandbox.faults.decide = lambda: arrivals.append(1) or decide()
    wanted = fire(pm, "k", 5)
    assert wait_until(lambda: len(arrivals) >= 1, 20), "the sender process never sent"
    assert spawn.SenderStarter(config.data_dir()).alive()
    first = sender_pids()
    assert len(first) == 1
    os.kill(first[0], signal.SIGKILL)
    assert wait_until(lambda: not spawn.SenderStarter(config.data_dir()).alive(), 10)
    wanted |= fire(pm, "after", 5)  # the next hook starts a new one
    assert wait_until(lambda: wanted <= members(sandbox), 40), f"lost: {sorted(wanted - members(sandbox))}"
    assert sender_pids() and sender_pids() != first


def test_a_sender_process_that_fails_as_it_starts_is_not_restarted_in_a_tight_loop(
    pm, write_config, senders, monkeypatch, logs
):
    monkeypatch.setattr(spawn, "CHECK_EVERY", 0.0)
    monkeypatch.setattr(spawn, "python", lambda: "/bin/false")  # a broken install: exits 1 at once
    write_config(sender="process")
    starts = []
    real_start = spawn.start
    monkeypatch.setattr(spawn, "start", lambda *a: starts.append(1) or real_start(*a))
    fire(pm, "b", 1)
    child = dispatch.runtime().starter._child
    assert len(starts) == 1 and child is not None and child.wait(10) == 1
    fire(pm, "b", 20)  # every one of these looks: none starts another for a while
    assert len(starts) == 1
    said = [r.getMessage() for r in logs.records if "exited at once" in r.getMessage()]
    assert len(said) == 1 and "Starting it again in 5 s" in said[0]
    assert (config.data_dir() / "journal").exists()  # the events wait in the journal


@pytest.mark.parametrize(
    "new_lines, taken_meanwhile, stays", [(False, False, False), (True, False, True), (True, True, False)]
)
def test_a_leaving_sender_lets_the_lock_go_first_then_looks_once_more(tmp_path, new_lines, taken_meanwhile, stays):
    """A host that appended while the idle sender still held the lock saw it held and started
    nobody: the sender lets go, looks again, and stays for those lines (unless a new sender took
    the lock in between: that one does the work)."""
    from filelock import FileLock

    from remixcrm_plugin_ctct import service

    path = str(tmp_path / "sender.lock")
    mine = FileLock(path, timeout=0, thread_local=False)
    mine.acquire()
    other = FileLock(path, timeout=0, thread_local=False)

    def backlog():
        assert not mine.is_locked  # looked at only once the lock is let go
        if taken_meanwhile:
            other.acquire()
        return new_lines

    assert service.leave_or_stay(service._Lock(mine, None), backlog) is stays
    assert mine.is_locked is stays
    if not stays and not taken_meanwhile:
        other.acquire()  # free for the next sender


def test_after_a_disk_fallback_the_host_threads_do_not_spin_on_lines_that_are_the_sender_processes(
    pm, write_config, senders, monkeypatch
):
    """sender = "process" and one failed journal write: the memory fallback builds the full
    runtime and starts sender threads in the host. The host never folds its own live journal
    then (hand_off), so its unfolded lines are no backlog of *these* threads: counting them as
    one made every round come back after FOLD_QUIET (20 ms), a round (fold, claims, due times)
    50 times a second in the host's process for as long as the sender process had not folded
    them (forever, while it cannot start)."""
    from remixcrm_plugin_ctct.store.journal import Journal

    write_config(sender="process")
    monkeypatch.setattr(spawn.SenderStarter, "ensure", lambda self: None)  # no sender process comes
    real_append, failed = Journal.append, []

    def append_failing_once(self, data):
        if not failed:
            failed.append(1)
            raise OSError(28, "No space left on device")
        return real_append(self, data)

    monkeypatch.setattr(Journal, "append", append_failing_once)
    fire(pm, "m", 1)  # kept in memory: the host's threads start
    rt = dispatch.runtime()
    assert rt.worker.running_threads
    fire(pm, "j", 3)  # the disk is back: journal lines, the sender process's to fold
    claims = []
    claim_many = rt.outbox.claim_many
    monkeypatch.setattr(rt.outbox, "claim_many", lambda *a, **k: claims.append(1) or claim_many(*a, **k))
    time.sleep(1.0)
    # a few rounds for the memory event's retries (no API here); a spin makes ~50 per thread
    assert len(claims) <= 20, f"{len(claims)} rounds in 1 s of nothing the host's threads could do"
