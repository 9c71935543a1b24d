"""What can go wrong, on purpose: Constant Contact's rate limits and injected faults.

Limits as the facts file gives them: more than ``rate_limit`` requests in any one second gets
429 ``throttled``; more than ``daily_quota`` in a UTC day gets 429 ``quota_exceeded``
(the count starts again at 00:00 UTC by ``wall_clock``, which tests replace). The second
is a *sliding* window over arrival times, closed at both ends (a request exactly 1 s after the
4th before it is refused too), and counts every key together: at least as strict as Constant
Contact's 4 requests/s per API key, however it counts (a fixed per-second counter lets more through). Faults:
a random error rate, a fixed answer for the next N calls, added latency, dropped connections,
hangs, a failed import activity. Only the API (``/v3``) is affected, never the authorization server.
"""

import random
import threading
import time
from collections import deque
from collections.abc import Callable

THROTTLED = {"error_key": "throttled", "error_message": "Too Many Requests"}
QUOTA_EXCEEDED = {"error_key": "quota_exceeded", "error_message": "Limit Exceeded"}


class Faults:
    def __init__(
        self,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.rate_limit: float | None = None  # requests per second, like Constant Contact's 4
        self.daily_quota: int | None = None
        self.error_rate = 0.0  # share of calls answered with error_status
        self.error_status = 503
        self.latency = 0.0  # seconds added to every answer
        self.drop_rate = 0.0  # share of calls whose connection is closed without an answer
        self.script: deque = deque()  # the next calls' fates: ("status", code, body) | ("drop",) | ("hang",)
        self.fail_imports = 0  # the next N contacts_json_import activities end "failed"
        self.throttled = 0
        self.quota_refused = 0
        self.requests = 0  # every API call that arrived, answered or refused: what a bench counts
        self._arrivals: deque = deque()
        self._day_count = 0
        self._day: int | None = None  # the UTC day (days since the epoch) _day_count belongs to
        self.wall_clock = wall_clock
        self._random = random.Random(seed)
        self._clock = clock
        self._lock = threading.Lock()

    def configure(self, settings: dict) -> None:
        """From the admin endpoint: any of the attributes above, plus ``next``: [[status, body], …]
        and ``drop_next`` / ``hang_next`` / ``fail_next_imports``: counts."""
        with self._lock:
            for key in ("rate_limit", "daily_quota", "error_rate", "error_status", "latency", "drop_rate"):
                if key in settings:
                    setattr(self, key, settings[key])
            for status, body in settings.get("next", []):
                self.script.append(("status", int(status), body))
            self.script.extend([("drop",)] * int(settings.get("drop_next", 0)))
            self.script.extend([("hang",)] * int(settings.get("hang_next", 0)))
            self.fail_imports += int(settings.get("fail_next_imports", 0))

    def take_import_failure(self) -> bool:
        """Whether the activity being created now should end ``failed`` (uses up one)."""
        with self._lock:
            if self.fail_imports > 0:
                self.fail_imports -= 1
                return True
            return False

    def fail_next(self, count: int, status: int, body: object = None) -> None:
        with self._lock:
            self.script.extend(
                [
                    (
                        "status",
                        status,
                        body
                        if body is not None
                        else [{"error_key": "injected", "error_message": f"injected {status}"}],
                    )
                ]
                * count
            )

    def decide(self) -> tuple:
        """The fate of one API call: ("ok",), ("status", code, body), ("drop",) or ("hang",)."""
        with self._lock:
            self.requests += 1
            now = self._clock()
            if self.script:
                return self.script.popleft()
            if self.daily_quota is not None:
                day = int(self.wall_clock() // 86400)  # Constant Contact's day starts at 00:00:00 UTC
                if day != self._day:
                    self._day, self._day_count = day, 0
                self._day_count += 1
                if self._day_count > self.daily_quota:
                    self.quota_refused += 1
                    return ("status", 429, QUOTA_EXCEEDED)
            if self.rate_limit is not None:
                while self._arrivals and now - self._arrivals[0] > 1.0:
                    self._arrivals.popleft()
                if len(self._arrivals) >= self.rate_limit:
                    self.throttled += 1
                    return ("status", 429, THROTTLED)
                self._arrivals.append(now)
            if self.drop_rate and self._random.random() < self.drop_rate:
                return ("drop",)
            if self.error_rate and self._random.random() < self.error_rate:
                return (
                    "status",
                    self.error_status,
                    [{"error_key": "server.error", "error_message": "injected failure"}],
                )
        return ("ok",)
