"""Keeps every process on this machine under Constant Contact's rate limits, together.

Constant Contact allows 4 requests/s and 10,000 requests/day per API key; over either, it
answers 429. The governor hands out send *slots* spaced ``(1 + MARGIN) / rate`` seconds apart
from a budget all processes share (:class:`..store.interfaces.Budget`; by default the SQLite
file ``governor.sqlite3``, :mod:`..store.budget`), which also counts the day's requests (UTC,
as the quota resets at 00:00 UTC). This module is the policy; the budget only keeps the numbers.

Why spacing and not a burst of 4 per second: the server counts requests as they *arrive*; a
burst plus a little network jitter can put 5 arrivals inside one second. Spacing alone is not
enough either: a send that goes out 30–80 ms after its slot (a busy worker's GIL, a late wake-up)
puts a later, punctual one into the same second. So, at Constant Contact's rates, each send is
also *checked in* when it actually goes: the table keeps the actual times of the last few sends,
and a send waits until the 4th-newest is at least ``(1 + MARGIN)`` s old. Lateness before the
check-in is thereby absorbed; ``MARGIN`` covers what comes after it (building the request, the
network).

And it adapts: a ``throttled`` answer means our sends still arrived too close, so the spacing
widens (``WIDEN``, for every process, for ``WIDEN_HOLD`` s) and then narrows back slowly.

Every time in the table is wall time, so a backwards clock step (NTP, a VM resumed) would leave
slots and send times in the "future" and stop sending for the length of the step: a stored
time further ahead than any legitimate reservation is taken as such a step and reset to now.
"""

import datetime as dt
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from .. import forksafe
from ..config import Settings
from ..store.budget import SqliteBudget
from ..store.interfaces import Budget, BudgetState

DEFAULT_RATE = Settings.requests_per_second  # requests per second, all processes together (stated once, there)
DEFAULT_DAILY_QUOTA = Settings.daily_quota
WINDOW = 1.0  # seconds: Constant Contact's limit is per second, counted as requests arrive
# 4 sends span at least 1.07 s (3.74/s at most): what happens after the check-in (building the
# request, a busy CPU, the network) may add up to 70 ms to one send and not to the 4th after it
MARGIN = 0.07
TRACKED_RATE = 16.0  # up to this rate, sends are checked in (above: raised limits in tests, spacing only)
BATCH_WINDOW = 0.05  # seconds of slots one transaction may reserve (1 slot at 4/s, more when raised)
MAX_BATCH = 20  # ...but never more: unused slots still count towards the day
WIDEN = 1.5  # after a `throttled` answer, slots this much further apart...
WIDEN_MAX = 2.25  # (repeated answers compound, up to this)
WIDEN_HOLD = 60.0  # ...for this long...
NARROW_OVER = 120.0  # ...then back to normal, linearly, over this many seconds
STEP_SLACK = 16  # slots: a next slot further ahead than this means the wall clock stepped back
STEP_TOLERANCE = 0.25  # seconds: a check-in time further ahead of now than this, likewise


class Governor:
    def __init__(
        self,
        directory: Path | None = None,
        rate: float = DEFAULT_RATE,
        daily_quota: int = DEFAULT_DAILY_QUOTA,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        budget: Budget | None = None,
    ):
        if budget is None:
            if directory is None:
                raise TypeError("Governor needs a budget or a directory for the default SQLite one")
            budget = SqliteBudget(directory)
        self.budget = budget
        self.path = getattr(budget, "path", None)  # where the default budget lives, for status and errors
        self.rate, self.daily_quota = rate, daily_quota
        self.interval = (1 + MARGIN) / rate if rate > 0 else 0.0
        self.batch = max(1, min(MAX_BATCH, int(rate * BATCH_WINDOW)))
        # check-ins: the newest may not be closer than ``span`` to the ``per_window``-th newest
        self.per_window = max(1, int(rate)) if 0 < rate <= TRACKED_RATE else 0
        self.span = self.per_window * self.interval
        self._local: deque = deque()  # slots this process reserved and has not used yet
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()  # one reservation at a time in this process (``_local`` is shared)
        forksafe.after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        # a parent's sender thread may have held the lock at the fork; its slots are the parent's
        self._lock = threading.Lock()
        self._local = deque()

    @property
    def lock(self) -> threading.Lock:
        """This process's reservation lock (re-made in a forked child). For tests of fork safety."""
        return self._lock

    def __repr__(self) -> str:
        return f"Governor({str(self.path)!r}, rate={self.rate:g}/s, daily_quota={self.daily_quota})"

    def reserve(self) -> tuple[float, int] | None:
        """Take the next slot: (epoch time to send at, requests counted today including this one),
        or None when today's quota is used up (then nothing is reserved)."""
        now = self._clock()
        today = _day(now)
        with self._lock:
            while self._local and self._local[0][0] < now - BATCH_WINDOW:
                self._local.popleft()  # reserved but not used in time: spent
            if self._local and self._local[0][0] > now + self._slack(WIDEN_MAX):
                self._local.clear()  # reserved before the clock stepped back
            if not self._local:
                self._local.extend(self.budget.update(lambda state: self._reserve(state, now, today)))
            return self._local.popleft() if self._local else None

    def _slack(self, factor: float) -> float:
        """How far ahead a legitimate slot may be: many threads waiting, each holding one."""
        return max(STEP_SLACK * self.interval * factor, STEP_TOLERANCE)

    def _reserve(self, state: BudgetState, now: float, today: str) -> tuple[BudgetState | None, list]:
        # at a high rate, a few slots per transaction (``batch``); at Constant Contact's 4/s, one
        next_slot = now if state.next_slot is None else state.next_slot
        count = state.day_count if state.day == today else 0
        take = min(self.batch, self.daily_quota - count)
        if take <= 0:
            return None, []  # nothing written: the commit is empty
        pace = _Pace.of(state, now)
        factor = pace.factor(now)
        if pace.stepped or next_slot > now + self._slack(factor):
            next_slot = now  # the clock stepped back: the stored slot is not really in the future
        if pace.stepped:
            state = self._with_pace(state, pace.sent, pace.widen, pace.widened_at)
        interval = self.interval * factor
        # spaced from the newest check-in too: a send held back at its check-in (late, or after
        # a `throttled` answer) must not leave the next slot in the past, or sends bunch
        first = max(now, next_slot, pace.sent[-1] + interval if pace.sent else now)
        slots = [(first + i * interval, count + i + 1) for i in range(take)]
        return state._replace(next_slot=first + take * interval, day=today, day_count=count + take), slots

    def _with_pace(self, state: BudgetState, sent: list[float], widen: float, widened_at: float) -> BudgetState:
        return state._replace(
            sent=sent[-self.per_window :] if self.per_window else [], widen=widen, widened_at=widened_at
        )

    def wait_turn(self) -> int | None:
        """Block until this process may send; the day's count, or None when the quota is used up
        (nothing reserved then: the caller pauses until midnight UTC). Call it right before the
        request: the moment it returns is recorded as the send's time."""
        reserved = self.reserve()
        if reserved is None:
            return None
        slot, count = reserved
        delay = slot - self._clock()
        if delay > 0:
            self._sleep(min(delay, self._slack(WIDEN_MAX)))
        if self.per_window:
            self._check_in()
        return count

    def _check_in(self) -> None:
        """Record this send's actual time, first waiting while the ``per_window``-th newest send is
        less than ``span`` ago (an earlier send went out late, or the spacing widened meanwhile)."""

        def check_in(state: BudgetState) -> tuple[BudgetState | None, float]:
            now = self._clock()  # inside the transaction: the time we really go
            pace = _Pace.of(state, now)
            wait = 0.0
            if len(pace.sent) >= self.per_window:
                wait = pace.sent[-self.per_window] + self.span * pace.factor(now) - now
            if wait > 0:
                return None, wait  # nothing written while we wait
            return self._with_pace(state, pace.sent + [now], pace.widen, pace.widened_at), wait

        while True:
            with self._lock:
                wait = self.budget.update(check_in)
            if wait <= 0:
                return
            self._sleep(wait)

    def throttled(self) -> None:
        """Constant Contact answered 429 ``throttled``: our sends still arrived too close. Widen
        the spacing for every process (x``WIDEN``, compounding up to ``WIDEN_MAX``) and, as the
        server's window is full now, let it clear before the next send."""
        now = self._clock()

        def widen(state: BudgetState) -> tuple[BudgetState, None]:
            factor = min(WIDEN_MAX, _Pace.of(state, now).factor(now) * WIDEN)
            state = self._with_pace(state, [now] * self.per_window, factor, now)
            if state.next_slot is not None:
                state = state._replace(next_slot=max(state.next_slot, now + self.span * factor))
            return state, None

        with self._lock:
            self.budget.update(widen)
            self._local.clear()  # reserved at the old spacing

    def spacing(self) -> float:
        """The factor the spacing is widened by now (1.0: not widened), for status and tests."""
        now = self._clock()
        with self._lock:
            return _Pace.of(self.budget.read(), now).factor(now)

    def today_count(self) -> int:
        now = self._clock()
        with self._lock:
            state = self.budget.read()
        return state.day_count if state.day == _day(now) else 0


def _day(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()


class _Pace(NamedTuple):
    sent: list  # wall times of the last few check-ins, oldest first
    widen: float  # the factor the last `throttled` answer set
    widened_at: float
    stepped: bool  # a stored time was ahead of now: the clock stepped back

    @classmethod
    def of(cls, state: BudgetState, now: float) -> "_Pace":
        """The check-in times and widening, with any time ahead of ``now`` (the clock stepped
        back: they were all "now" once) pulled back to it."""
        stepped = max(state.sent + [state.widened_at]) > now + STEP_TOLERANCE
        return cls([min(t, now) for t in state.sent], state.widen, min(state.widened_at, now), stepped)

    def factor(self, now: float) -> float:
        """``widen`` for WIDEN_HOLD s after it was set, then linearly back to 1 over NARROW_OVER s."""
        if self.widen <= 1.0:
            return 1.0
        age = now - self.widened_at
        if age <= WIDEN_HOLD:
            return self.widen
        return max(1.0, self.widen - (self.widen - 1.0) * (age - WIDEN_HOLD) / NARROW_OVER)
