"""When the worker folds the journal into the outbox: when the hooks pause for a moment, not
during their burst (folding competes with the hooks for the GIL and shows in their tail
latency), but at least every few seconds, and at once for someone waiting in a flush."""

import time

from .interfaces import Outbox
from .journal import Journal

FOLD_QUIET = 0.02  # seconds without a hook write before the journal is folded into the outbox
FOLD_AT_LEAST_EVERY = 5.0  # ... but never later than this during a long burst


class FoldPacer:
    def __init__(self, journal: Journal):
        self.journal = journal
        self._folded_at = time.monotonic()

    def hooks_writing(self, next_due: float | None, now: float, urgent: bool = False) -> bool:
        """The hooks are writing a burst and no row is due (``next_due`` epoch time, None when
        the outbox is empty) at ``now``: better to stay out of their way."""
        if urgent:
            return False
        mono = time.monotonic()
        if mono - self.journal.last_append >= FOLD_QUIET or mono - self._folded_at >= FOLD_AT_LEAST_EVERY:
            return False
        return next_due is None or next_due > now

    def fold_due(self, urgent: bool) -> bool:
        """True (and counted as folded) when the hooks paused, the last fold is old, or ``urgent``."""
        mono = time.monotonic()
        if urgent or mono - self.journal.last_append >= FOLD_QUIET or mono - self._folded_at >= FOLD_AT_LEAST_EVERY:
            self._folded_at = mono
            return True
        return False

    def fold(self, outbox: Outbox, urgent: bool = False) -> bool:
        """Fold what the hooks wrote since the last look, if it is time; True when rows were added."""
        return self.fold_due(urgent) and bool(self.journal.fold_into(outbox))

    def backlog(self, outbox: Outbox) -> bool:
        """The hooks wrote something not yet folded into ``outbox``."""
        return bool(self.journal.backlog(outbox.journal_offset))
