import datetime as dt

import pytest

from remixcrm_plugin_ctct.delivery import retry_policy as rp


@pytest.mark.parametrize(
    "status, key, action",
    [
        (None, "", rp.RETRY),
        (408, "", rp.RETRY),
        (409, "conflict", rp.RETRY),
        (500, "", rp.RETRY),
        (503, "", rp.RETRY),
        (429, "throttled", rp.RETRY),
        (429, "", rp.RETRY),
        (429, "quota_exceeded", rp.QUOTA),
        (401, "unauthorized", rp.AUTH),
        (400, "json.field.invalid", rp.DEAD),
        (403, "forbidden", rp.FORBIDDEN),
        (404, "not_found", rp.DEAD),
        (415, "", rp.DEAD),
    ],
)
def test_classification_follows_constant_contacts_meanings(status, key, action):
    assert rp.classify(status, key).action == action


def test_backoff_is_exponential_with_full_jitter_and_a_cap():
    assert [rp.backoff(n, rand=lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert rp.backoff(30, rand=lambda: 1.0) == rp.MAX_DELAY
    assert rp.backoff(5, rand=lambda: 0.0) == 0.0
    assert rp.backoff(5, rand=lambda: 0.5) == 8.0


def test_retry_after_in_seconds_or_as_a_date_wins_over_backoff():
    now = 1_800_000_000.0
    assert rp.retry_after_seconds("30", now) == 30
    date = dt.datetime.fromtimestamp(now + 90, dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert rp.retry_after_seconds(date, now) == pytest.approx(90)
    assert rp.retry_after_seconds(None, now) is None and rp.retry_after_seconds("soon", now) is None
    assert rp.next_attempt_at(now, 3, retry_after=30, rand=lambda: 1.0) == now + 30
    assert rp.next_attempt_at(now, 3, rand=lambda: 1.0) == now + 4


def test_max_age():
    assert not rp.expired(0, 72 * 3600)
    assert rp.expired(0, 72 * 3600 + 1)
    assert rp.expired(0, 11, max_age=10)


def test_next_utc_midnight():
    late = dt.datetime(2026, 11, 26, 23, 59, 59, tzinfo=dt.UTC).timestamp()
    assert rp.next_utc_midnight(late) == dt.datetime(2026, 11, 27, tzinfo=dt.UTC).timestamp()
    midnight = dt.datetime(2026, 11, 27, tzinfo=dt.UTC).timestamp()
    assert rp.next_utc_midnight(midnight) == dt.datetime(2026, 11, 28, tzinfo=dt.UTC).timestamp()
