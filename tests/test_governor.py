import datetime as dt
import os
import subprocess
import sys
import time

import pytest
from conftest import ACCESS_TOKEN

from remixcrm_plugin_ctct.delivery import governor
from remixcrm_plugin_ctct.delivery.governor import MARGIN, WIDEN, WIDEN_HOLD, Governor
from remixcrm_plugin_ctct.sandbox import Sandbox
from remixcrm_plugin_ctct.store.interfaces import BudgetState

T0 = 1_800_000_000.0


class Clock:
    """A wall clock for tests; ``late`` lists extra seconds that the next sleeps overshoot by."""

    def __init__(self, now, late=()):
        self.now, self.sleeps, self.late = now, [], list(late)

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds + (self.late.pop(0) if self.late else 0.0)


def send_times(gov, clock, count):
    times = []
    for _ in range(count):
        gov.wait_turn()
        times.append(clock.now)
    return times


def assert_no_five_within_a_second(times, window=1.0):
    times = sorted(times)
    for first, fifth in zip(times, times[4:]):
        assert fifth - first >= window - 1e-6, f"5 sends within {fifth - first:.3f} s"


def test_slots_are_spaced_under_the_rate(tmp_path):
    clock = Clock(T0)
    gov = Governor(tmp_path, rate=4, clock=clock, sleep=clock.sleep)
    times = send_times(gov, clock, 9)
    assert times[-1] - T0 >= 8 * 0.25 * (1 + MARGIN) - 1e-5  # 9 requests: 8 gaps of 1/4 s (+ the margin)
    assert all(s <= 0.25 * (1 + MARGIN) + 1e-5 for s in clock.sleeps)


def test_steady_load_keeps_most_of_the_rate(tmp_path):
    # the margin must not eat the budget: >= 3.7 of Constant Contact's 4/s
    clock = Clock(T0)
    govs = [Governor(tmp_path, rate=4, clock=clock, sleep=clock.sleep) for _ in range(4)]  # 4 processes
    times = [clock.now for _ in range(10) for g in govs if g.wait_turn()]
    assert len(times) == 40 and 39 / (times[-1] - times[0]) >= 3.7
    assert_no_five_within_a_second(times, 1 + MARGIN)


def test_a_late_send_holds_back_the_fourth_after_it(tmp_path):
    # the 2nd send wakes 80 ms late (a busy worker): the 6th, on time by its slot, would be the
    # 5th request within one second of it
    clock = Clock(T0, late=[0.08] + [0.0] * 20)
    gov = Governor(tmp_path, rate=4, clock=clock, sleep=clock.sleep)
    assert_no_five_within_a_second(send_times(gov, clock, 12), 1 + MARGIN)


def test_after_throttled_every_process_spaces_wider_then_narrows_back(tmp_path):
    clock = Clock(T0)
    one = Governor(tmp_path, rate=4, clock=clock, sleep=clock.sleep)
    two = Governor(tmp_path, rate=4, clock=clock, sleep=clock.sleep)  # another process: same file
    send_times(one, clock, 4)
    throttled_at = clock.now
    one.throttled()
    assert two.spacing() == WIDEN
    times = send_times(two, clock, 8)
    assert times[0] - throttled_at >= 1.0  # the server's full window clears first
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= WIDEN * 0.25 * (1 + MARGIN) - 1e-6
    clock.now = throttled_at + WIDEN_HOLD - 1
    assert two.spacing() == WIDEN  # held for a while...
    clock.now = throttled_at + WIDEN_HOLD + governor.NARROW_OVER / 2
    assert 1.0 < two.spacing() < WIDEN  # ...then narrowed back slowly...
    clock.now = throttled_at + WIDEN_HOLD + governor.NARROW_OVER
    assert two.spacing() == 1.0  # ...to normal
    one.throttled()
    one.throttled()
    assert one.spacing() == governor.WIDEN_MAX  # repeated answers compound, up to a cap


@pytest.mark.parametrize("rate", [4, 1000])
@pytest.mark.parametrize("step", [3.0, 3600.0])
def test_a_backwards_clock_step_does_not_stop_sending(tmp_path, rate, step):
    clock = Clock(T0)
    gov = Governor(tmp_path, rate=rate, clock=clock, sleep=clock.sleep)
    send_times(gov, clock, 6)
    clock.now -= step  # NTP or a resumed VM sets the wall clock back
    clock.sleeps.clear()
    send_times(gov, clock, 4)
    assert sum(clock.sleeps) < 2.0  # not the length of the step
    other = Governor(tmp_path, rate=rate, clock=clock, sleep=clock.sleep)  # another process sees it fixed too
    clock.sleeps.clear()
    send_times(other, clock, 2)
    assert sum(clock.sleeps) < 1.0


def test_processes_share_one_budget(tmp_path):
    clock = Clock(T0)
    one = Governor(tmp_path, rate=4, clock=clock, sleep=lambda s: None)
    two = Governor(tmp_path, rate=4, clock=clock, sleep=lambda s: None)  # another process: same file
    slots = [one.reserve()[0], two.reserve()[0], one.reserve()[0]]
    assert slots == sorted(slots) and slots[1] - slots[0] >= 0.25 and slots[2] - slots[1] >= 0.25


def test_counts_the_utc_day_and_stops_at_the_quota(tmp_path):
    day = dt.datetime(2026, 11, 26, 23, 59, 59, tzinfo=dt.UTC).timestamp()
    clock = Clock(day)
    gov = Governor(tmp_path, rate=4, daily_quota=3, clock=clock, sleep=clock.sleep)
    assert [gov.wait_turn() for _ in range(3)] == [1, 2, 3]
    assert gov.wait_turn() is None  # used up: the caller pauses until midnight
    clock.now = day + 2  # 00:00:01 UTC: a new day
    assert gov.wait_turn() == 1 and gov.today_count() == 1


def test_the_file_is_private(tmp_path):
    import stat

    gov = Governor(tmp_path / "d")
    gov.reserve()
    assert stat.S_IMODE(os.stat(gov.path).st_mode) == 0o600


def test_a_raised_rate_reserves_a_few_slots_per_transaction(tmp_path):
    clock = Clock(T0)
    gov = Governor(tmp_path, rate=1000, clock=clock, sleep=clock.sleep)
    assert gov.batch == 20 and Governor(tmp_path, rate=4).batch == 1
    assert [gov.wait_turn() for _ in range(3)] == [1, 2, 3]
    assert gov.today_count() == 20  # reserved slots count, used or not (at 4/s a batch is one slot)


JITTERY = r"""
import random, sys, time
from remixcrm_plugin_ctct.ctct import client as api_client
from remixcrm_plugin_ctct.ctct.client import ApiError, CtctClient
from remixcrm_plugin_ctct.delivery.governor import Governor

data_dir, api, token, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
# a busy worker wakes 0-80 ms after its slot
late_sleep = lambda s: time.sleep(s + random.uniform(0, 0.08))
gov = Governor(data_dir, rate=4, sleep=late_sleep)
client = CtctClient(api, token)
# warm up, as a running worker is: the first request's lazy imports and connect are not jitter
api_client.session().get(api.rsplit("/v3", 1)[0] + "/sandbox/stats", timeout=5)
print("ready", flush=True)
sys.stdin.readline()
throttled = 0
for _ in range(count):
    time.sleep(random.uniform(0, 0.08))  # the sender also comes back late from its last row
    gov.wait_turn()
    try:
        client.privileges()
    except ApiError as e:
        throttled += e.status == 429
print("throttled", throttled, flush=True)
"""


def test_four_processes_with_jitter_meet_no_throttling(tmp_path):
    with Sandbox(access_token=ACCESS_TOKEN) as sandbox:
        sandbox.faults.rate_limit = 4  # as strict as Constant Contact: 4 in any 1 s window
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        args = [sys.executable, "-c", JITTERY, str(tmp_path / "data"), sandbox.api_base_url, ACCESS_TOKEN, "15"]
        procs = [
            subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
            for _ in range(4)
        ]
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        started = time.monotonic()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=60) for p in procs]
        elapsed = time.monotonic() - started
        assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
        assert [out.split() for out, _ in outs] == [["throttled", "0"]] * 4
        assert sandbox.faults.throttled == 0
        assert 60 / elapsed >= 3.3, f"{60 / elapsed:.2f} requests/s"  # heavy jitter costs a little, not more


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_a_fork_while_a_thread_holds_the_lock_leaves_the_child_working(tmp_path):
    gov = Governor(tmp_path, rate=1000)
    gov.reserve()
    with gov.lock:  # as if a sender thread were inside a transaction at the fork
        pid = os.fork()
        if pid == 0:  # the child: must get a turn, not hang on the parent's lock
            try:
                os._exit(0 if gov.wait_turn() else 1)
            except BaseException:
                os._exit(2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.02)  # polling the child's exit, with a deadline
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the child hung on the lock it inherited")


class MemoryBudget:
    """A second implementation of the Budget seam (as a PostgreSQL one would be): no file at all."""

    def __init__(self):
        self.state = BudgetState(None, "", 0, [], 1.0, 0.0)
        self.updates = 0

    def read(self):
        return self.state

    def update(self, change):
        after, result = change(self.state)
        if after is not None:
            self.state, self.updates = after, self.updates + 1
        return result


def test_the_pacing_policy_runs_on_any_budget_behind_the_seam(tmp_path):
    now = [1_000_000.0]
    budget = MemoryBudget()
    gov = Governor(
        rate=4, daily_quota=3, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s), budget=budget
    )
    assert [gov.wait_turn() for _ in range(4)] == [1, 2, 3, None]  # the quota holds, whoever keeps the count
    assert now[0] - 1_000_000.0 == pytest.approx(2 * (1 + MARGIN) / 4)  # and the sends were spaced
    assert budget.state.day_count == 3 and gov.today_count() == 3
    gov.throttled()
    assert gov.spacing() == WIDEN and budget.state.widen == WIDEN
    assert not list(tmp_path.iterdir())  # nothing written to disk
