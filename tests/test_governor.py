import datetime as dt

from remixcrm_plugin_ctct.governor import SAFETY, Governor


class Clock:
    def __init__(self, now):
        self.now, self.sleeps = now, []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_slots_are_spaced_under_the_rate(tmp_path):
    clock = Clock(1_800_000_000.0)
    gov = Governor(tmp_path, rate=4, clock=clock, sleep=clock.sleep)
    for _ in range(9):
        gov.wait_turn()
    assert clock.now - 1_800_000_000.0 >= 8 * 0.25 * SAFETY - 1e-5  # 9 requests: 8 gaps of 1/4 s (+3 %)
    assert all(s <= 0.25 * SAFETY + 1e-5 for s in clock.sleeps)


def test_processes_share_one_budget(tmp_path):
    clock = Clock(1_800_000_000.0)
    one = Governor(tmp_path, rate=4, clock=clock, sleep=lambda s: None)
    two = Governor(tmp_path, rate=4, clock=clock, sleep=lambda s: None)  # another process: same file
    slots = [one.reserve()[0], two.reserve()[0], one.reserve()[0]]
    assert slots == sorted(slots) and slots[1] - slots[0] >= 0.25 and slots[2] - slots[1] >= 0.25


def test_counts_the_utc_day_and_stops_at_the_quota(tmp_path):
    day = dt.datetime(2026, 11, 26, 23, 59, 59, tzinfo=dt.timezone.utc).timestamp()
    clock = Clock(day)
    gov = Governor(tmp_path, rate=4, daily_quota=3, clock=clock, sleep=clock.sleep)
    assert [gov.wait_turn() for _ in range(3)] == [1, 2, 3]
    assert gov.wait_turn() is None  # used up: the caller pauses until midnight
    clock.now = day + 2  # 00:00:01 UTC: a new day
    assert gov.wait_turn() == 1 and gov.today_count() == 1


def test_the_file_is_private(tmp_path):
    import os
    import stat

    gov = Governor(tmp_path / "d")
    gov.reserve()
    assert stat.S_IMODE(os.stat(gov.path).st_mode) == 0o600


def test_a_raised_rate_reserves_a_few_slots_per_transaction(tmp_path):
    clock = Clock(1_800_000_000.0)
    gov = Governor(tmp_path, rate=1000, clock=clock, sleep=clock.sleep)
    assert gov.batch == 20 and Governor(tmp_path, rate=4).batch == 1
    assert [gov.wait_turn() for _ in range(3)] == [1, 2, 3]
    assert gov.today_count() == 20  # reserved slots count, used or not (at 4/s a batch is one slot)
