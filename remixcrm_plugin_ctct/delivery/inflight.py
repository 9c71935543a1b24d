"""What the workers have in flight, counted once for ``flush()`` and ``close()``."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class InFlight:
    def __init__(self) -> None:
        self.cond = threading.Condition()  # notified whenever a step finishes
        self.count = 0  # steps in flight
        self.memory = 0  # memory events taken by a worker: lost too if we exit meanwhile
        # +1 each time a step starts or finishes: an outbox read is only trusted when no step
        # started or finished during it (see ``unchanged``)
        self.ticks = 0

    @contextmanager
    def step(self, memory: bool = False) -> Iterator[None]:
        """One step of a worker (a claim and its sends, or one memory event)."""
        with self.cond:
            self.count += 1
            self.memory += memory
            self.ticks += 1
        try:
            yield
        finally:
            with self.cond:
                self.count -= 1
                self.memory -= memory
                self.ticks += 1
                self.cond.notify_all()

    def snapshot(self) -> tuple[int, int]:
        """(ticks, steps in flight), read together."""
        with self.cond:
            return self.ticks, self.count

    def unchanged(self, ticks: int) -> bool:
        with self.cond:
            return self.ticks == ticks

    def wait(self, timeout: float) -> None:
        """Until a step finishes, at most ``timeout`` seconds."""
        with self.cond:
            self.cond.wait(timeout)

    def wait_idle(self, deadline: float) -> None:
        """Until nothing is in flight, or the monotonic ``deadline``."""
        with self.cond:
            while self.count and time.monotonic() < deadline:
                self.cond.wait(deadline - time.monotonic())
