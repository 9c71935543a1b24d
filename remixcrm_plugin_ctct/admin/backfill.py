"""``remixcrm-ctct backfill``'s machinery: each row of a file checked exactly as the hook checks a
client, recorded into the durable outbox in resumable chunks, and the delivery of those rows
watched. Data in, data out: :mod:`.backfill_command` prints.

Resuming: the chunks go in through ``Outbox.add_records(records, journal=key, offset=n)``, which
commits the records and "rows 1..n are in" in one transaction, the way the hook's journal is
folded. The key is the file's sha256, so a rerun with the same file skips exactly the rows an
earlier run recorded, and an edited file is a new backfill.
"""

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .. import payload
from ..config.fields import FieldMap
from ..record import Event
from ..store.interfaces import Outbox
from .backfill_file import BackfillFile

EVENT = "backfill"  # the event name of every row: the worker sends it through the import lane
CHUNK = 1000  # rows per transaction: a kill loses at most this much work, never a row
LISTED = 50  # invalid rows and notes kept to show; the rest are counted
SEND, DECLINED, SKIP_UNKNOWN, SUPPRESSED = 1, 2, 3, 8  # an email's fate (SUPPRESSED: a bit on SEND)

# the suppression mirror's lookup (``store.interfaces.Suppressions.suppressed``): lower-case
# emails -> the ones Constant Contact has unsubscribed or deleted
SuppressedLookup = Callable[[list[str]], Mapping[str, Any]]
Chunk = Callable[[list[dict], int], None]  # (records, rows 1..n are in) -> recorded

log = logging.getLogger("remixcrm_plugin_ctct")


@dataclass
class Tally:
    """What a file holds and what became of it. Counts by email are of each email's newest row."""

    rows: int = 0  # records read (blank lines are not rows)
    invalid: int = 0
    problems: list[str] = field(default_factory=list)  # the first LISTED: "line N: why"
    notes: int = 0
    noted: list[str] = field(default_factory=list)  # the first LISTED: the hook's warnings for a row
    declined_without_email: int = 0  # declined rows with no usable email (the hook's own case)
    earlier: int = 0  # rows an earlier run of this file recorded
    recorded: int = 0  # rows this run recorded
    mirror_checked: bool = False
    emails: dict[bytes, int] = field(default_factory=dict, repr=False)  # email digest -> fate

    def counts(self) -> dict[str, int]:
        found = {"to import": 0, "declined": self.declined_without_email, "consent unknown": 0, "suppressed": 0}
        for fate in self.emails.values():
            if fate & SUPPRESSED and fate & ~SUPPRESSED == SEND:
                found["suppressed"] += 1
            else:
                found[
                    {SEND: "to import", DECLINED: "declined", SKIP_UNKNOWN: "consent unknown"}[fate & ~SUPPRESSED]
                ] += 1
        found["duplicates"] = self.rows - self.invalid - self.declined_without_email - len(self.emails)
        return found

    def problem(self, text: str) -> None:
        self.invalid += 1
        if len(self.problems) < LISTED:
            self.problems.append(text)

    def note(self, text: str) -> None:
        self.notes += 1
        if len(self.noted) < LISTED:
            self.noted.append(text)


class _Catch(logging.Filter):
    """While :meth:`checking`, the plugin's log lines from this thread are kept for the report
    instead of printed in the middle of it; other threads (the sender) and other moments log as
    always."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self._thread: int | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self._thread:
            return True
        self.lines.append(record.getMessage())
        return False

    @contextmanager
    def checking(self) -> Iterator[list[str]]:
        self.lines, self._thread = [], threading.get_ident()
        try:
            yield self.lines
        finally:
            self._thread = None


@contextmanager
def _caught() -> Iterator[_Catch]:
    catch = _Catch()
    log.addFilter(catch)
    try:
        yield catch
    finally:
        log.removeFilter(catch)


def read(
    file: BackfillFile,
    unknown_consent: str = "implicit",
    suppressed: SuppressedLookup | None = None,
    record: Chunk | None = None,
    start: int = 0,
    chunk: int = CHUNK,
    progress: Callable[[int], None] | None = None,
    field_map: FieldMap = (),
) -> Tally:
    """Check every row of ``file`` as the hook would and tally it. With ``record``, the rows after
    the first ``start`` go to ``record(records, n)`` every ``chunk`` rows (n: rows 1..n are in)."""
    tally, batch, lookups, index = Tally(), [], [], 0
    tally.mirror_checked = suppressed is not None
    with _caught() as caught:
        for line in file.rows():
            index = tally.rows = line.row
            entry = _one(tally, line, unknown_consent, caught, field_map)
            if entry is not None:
                fate, key, row = entry
                if fate == SEND:
                    lookups.append(key)
                if record is not None and index > start:
                    batch.append(row)
            if index % chunk == 0:
                _mirror(tally, suppressed, lookups)
                if record is not None and index > start:
                    record(batch, index)
                    tally.recorded += len(batch)
                batch = []
                if progress is not None:
                    progress(index)
    _mirror(tally, suppressed, lookups)
    if record is not None and index > start and index % chunk:
        record(batch, index)
        tally.recorded += len(batch)
    tally.earlier = min(start, tally.rows) if record is not None else 0
    return tally


def _one(
    tally: Tally, line, unknown_consent: str, caught: _Catch, field_map: FieldMap = ()
) -> tuple[int, str, dict] | None:
    """One row: (its fate, its lower-case email, its journal record), or None when unusable."""
    if line.client is None:
        tally.problem(line.problem or f"line {line.line} cannot be read")
        return None
    with caught.checking() as said:
        contact = payload.contact_from_client(line.client, field_map)
    for text in said:  # what the hook would have logged: a truncated name, an odd email_opt_in
        tally.note(f"line {line.line}: {text}")
    if isinstance(contact, payload.Skipped):
        if contact.reason == payload.declined(contact.client_id):  # declined, and no usable email either
            tally.declined_without_email += 1
        else:
            tally.problem(f"line {line.line}: {contact.reason.split('; not sent', 1)[0]}")
        return None
    key = contact.email.lower()
    fate = DECLINED if contact.email_opt_in is False else SEND
    if contact.email_opt_in is None and unknown_consent == "skip":
        fate = SKIP_UNKNOWN
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()  # 8 bytes an email: memory stays small
    tally.emails[digest] = fate | (tally.emails.get(digest, 0) & SUPPRESSED)  # the newest row wins
    return fate, key, Event.of(contact, EVENT, time.time()).to_record()


def _mirror(tally: Tally, suppressed: SuppressedLookup | None, emails: list[str]) -> None:
    if suppressed is not None and emails:
        for key in suppressed(list(emails)):
            digest = hashlib.blake2b(key.lower().encode(), digest_size=8).digest()
            if digest in tally.emails:
                tally.emails[digest] |= SUPPRESSED
    emails.clear()


class Watched(NamedTuple):
    counts: dict[str, int]  # the backfill's rows by state
    left: int  # pending or being sent
    pause: str | None  # why sending is paused, when it is
    timed_out: bool


def watch(
    outbox: Outbox,
    worker,
    shared_pause: Callable[[], Any],
    since: float,
    progress: Callable[[dict[str, int]], None],
    timeout: float | None = None,
) -> Watched:
    """Wake this process's worker and follow the backfill's rows (event ``backfill``, touched since
    ``since``) until none is left to send, sending is paused, or ``timeout`` seconds pass."""
    worker.wake()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        worker.flush(0.5, retries=True)  # returns early when all is settled; else after 0.5 s
        counts = outbox.event_counts(EVENT, since)
        progress(counts)
        left = counts.get("pending", 0) + counts.get("sending", 0)
        pause = worker.paused
        if pause is not None and pause.over(time.time()):
            pause = None
        pause = pause or shared_pause()
        if left == 0 or pause is not None or (deadline is not None and time.monotonic() >= deadline):
            reason = pause.reason if pause is not None and left else None
            return Watched(counts, left, reason, left > 0 and reason is None)
