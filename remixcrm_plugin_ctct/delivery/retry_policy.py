"""What to do after a failed send, and when to try again. Pure functions: no I/O, no clock.

The facts behind them are Constant Contact's (``shared/ctct-api-facts.md`` §1, §3): 409 on
sign_up_form means two simultaneous writes to one contact, so it is transient here; 403 means a
missing scope or privilege or a deactivated app, so no request can succeed until that is fixed; 429 comes
as ``throttled`` (4 requests/s) or ``quota_exceeded`` (10,000 requests/day, reset at 00:00 UTC);
no Retry-After header is documented, but one is honoured if it ever appears.
"""

import datetime as dt
import email.utils
import random
from typing import NamedTuple

from ..config import Settings

BASE_DELAY = 1.0  # seconds before the first retry (before jitter)
MAX_DELAY = 300.0  # the cap: a few minutes
DEFAULT_MAX_AGE = Settings.max_age_hours * 3600.0  # seconds after which a row that keeps failing is dead

RETRY, DEAD, QUOTA, AUTH, FORBIDDEN = "retry", "dead", "quota", "auth", "forbidden"
FORBIDDEN_RECHECK = 600.0  # seconds: privileges fixed in Constant Contact's UI change no file here


class Decision(NamedTuple):
    # RETRY, DEAD, QUOTA (pause all sending until midnight UTC), AUTH (token path) or FORBIDDEN
    # (pause all sending until the config or tokens change, or FORBIDDEN_RECHECK has passed)
    action: str
    reason: str


def classify(status: int | None, error_key: str = "") -> Decision:
    """Map one failed response (``status`` None: no response at all) to what to do next."""
    if status is None:
        return Decision(RETRY, "no response (connection error or timeout)")
    if status == 429:
        if error_key == "quota_exceeded":
            return Decision(QUOTA, "the daily request quota is used up")
        return Decision(RETRY, "throttled (more than the allowed requests per second)")
    if status == 401:
        return Decision(AUTH, "the access token was rejected")
    if status == 403:  # about the token or the account, not this row: every request would fail
        return Decision(FORBIDDEN, "the token lacks a scope or privilege, or the app is deactivated")
    if status in (408, 409) or status >= 500:
        return Decision(RETRY, f"HTTP {status} is transient")
    return Decision(DEAD, f"HTTP {status} will not succeed by resending the same data")


def backoff(attempt: int, rand=random.random, base: float | None = None, cap: float | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base·2^(attempt-1))].

    Full jitter spreads many processes' retries after an outage instead of having them hit
    the API in lockstep. (Defaults are read at call time, so tests can shorten them.)"""
    base = BASE_DELAY if base is None else base
    cap = MAX_DELAY if cap is None else cap
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return rand() * ceiling


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from ``now``; None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - now)


def next_attempt_at(now: float, attempt: int, retry_after: float | None = None, rand=random.random) -> float:
    """When to try again: the server's Retry-After if it gave one, else jittered backoff."""
    if retry_after is not None:
        return now + min(retry_after, MAX_DELAY * 12)  # honour it, but never for more than an hour
    return now + backoff(attempt, rand)


def expired(created_at: float, now: float, max_age: float = DEFAULT_MAX_AGE) -> bool:
    """True once a row has been failing for longer than ``max_age`` seconds."""
    return now - created_at > max_age


def next_utc_midnight(now: float) -> float:
    """When Constant Contact resets the daily quota: the next 00:00:00 UTC after ``now``."""
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    midnight = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.UTC)
    return midnight.timestamp()
