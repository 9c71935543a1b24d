"""The storage seam: what delivery, the worker, the CLI and the token manager ask of storage.

Today's implementations are embedded and zero-config (SQLite files and a JSON file in the data
dir): :class:`.outbox.Outbox`, :class:`.budget.SqliteBudget`, :class:`.pause.SqlitePause`,
:class:`.tokens.TokenStore`, :class:`.suppressions.SqliteSuppressions`. The second backend,
PostgreSQL (``store/postgres/``, for several hosts), implements the same Protocols;
:mod:`.backends` chooses where the parts are built (``runtime``), and nothing that uses them
changes. Hence the rules the methods keep: each call is one atomic step (its own transaction),
times are epoch seconds passed in, and nothing returns a cursor, a connection or a lock of the
backend's own (the token lock is a context manager).
"""

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

if TYPE_CHECKING:
    from .tokens import TokenState

T = TypeVar("T")


class StoreUnavailable(OSError):
    """The shared store cannot be used right now (a server unreachable, its driver missing): like
    a full disk, not a bug. Events wait in the journal; the message names the store, never a
    password."""


class Row(NamedTuple):
    """An outbox row leased for sending."""

    id: int
    client_id: str
    event: str
    contact: dict  # the newest known state of its email: {"email": …, "fields": {…}, "email_opt_in": …}
    attempts: int
    created_at: float


class Summary(NamedTuple):
    counts: dict  # state -> rows
    oldest_pending_at: float | None
    last_error: str | None
    last_error_at: float | None


class JournalSink(Protocol):
    """Where the journal folds its lines, noting in the same step how far it got."""

    # ``start``: the offset the records were read from; when the sink no longer holds it (another
    # folder took these lines meanwhile), nothing is written and the answer is False
    def add_records(
        self, records: list[dict], journal: str | None = None, offset: int = 0, start: int | None = None
    ) -> bool: ...
    def journal_offset(self, journal: str) -> int: ...
    def forget_journal(self, journal: str) -> None: ...


class GoneHost(NamedTuple):
    """A host of this machine whose registered process is gone, and where its journal lies."""

    directory: str  # its journal directory (absolute)
    offsets: JournalSink  # the shared outbox, keeping that host's journal offsets
    pid: int
    started: str | None


class HostJournals(Protocol):
    """Where each host sharing the store keeps its journal (PostgreSQL only: with SQLite the data
    dir *is* the store), so that a live host folds what a host killed on the same machine left
    (see :mod:`.neighbours`)."""

    def register(self, directory: str) -> None: ...  # this process writes its journal there
    def gone_hosts(self, own: str) -> list[GoneHost]: ...  # other hosts of this machine, process gone
    def forget_host(self, host: GoneHost) -> None: ...  # its directory is gone: stop looking


class Outbox(JournalSink, Protocol):
    """Every accepted event until it is delivered, skipped or given up; leased to one process
    at a time (at-least-once), one email in flight at a time."""

    # the worker and delivery
    def claim_many(
        self,
        owner: str,
        limit: int,
        now: float | None = None,
        lease: float = ...,
        lane: str | None = None,  # lanes.SIGN_UP or lanes.IMPORT (as unknown_consent makes them); None: any
        unknown_consent: str = ...,
    ) -> list[Row]: ...
    def first_due_import(self, unknown_consent: str, now: float | None = None) -> float | None: ...
    def renew(self, owner: str, row_ids: Iterable[int], lease: float = ..., now: float | None = None) -> set[int]: ...
    def take(self, owner: str, row: Row, lease: float = ..., now: float | None = None) -> Row | None: ...
    def delivered(self, row_id: int, contact_id: str | None, outcome: str, now: float | None = None) -> None: ...
    def delivered_many(self, done: Sequence[tuple[int, str | None, str]], now: float | None = None) -> None: ...
    def finished(self, row_id: int, state: str, outcome: str, now: float | None = None) -> None: ...
    def dead(self, row_id: int, error: str, now: float | None = None) -> None: ...
    def retry_later(self, row_id: int, when: float, error: str | None, count_attempt: bool = True) -> None: ...
    def release(self, owner: str, keep: Collection[int] = ()) -> int: ...  # keep: rows that stay leased
    def due_count(self, now: float | None = None) -> int: ...
    def pending_count(self) -> int: ...
    def in_flight_count(self, owner: str | None = None) -> int: ...  # leased to anyone, or to owner
    def next_due_at(self) -> float | None: ...
    def checkpoint(self) -> None: ...
    def close(self) -> None: ...
    # where it lives, for messages ("outbox /path/outbox.sqlite3", "PostgreSQL postgresql://…")
    @property
    def location(self) -> str: ...
    @property
    def lease_seconds(self) -> float: ...  # how long a lease lasts before another process may take the row
    def has_state(self) -> bool: ...  # False: nothing stored yet (no file), so nothing can be pending
    # the CLI
    def summary(self) -> Summary: ...
    def for_client(self, client_id: str) -> list[dict]: ...
    def event_counts(self, event: str, since: float) -> dict[str, int]: ...
    def retry(self, dead: bool = False, now: float | None = None) -> int: ...
    def purge(self, before: float, tombstones_before: float | None = None) -> int: ...
    # shared switches and counters, for all processes together
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str | None) -> None: ...
    def bump_counter(self, name: str, now: float | None = None) -> int: ...
    def counter_today(self, name: str, now: float | None = None) -> int: ...


class SharedPause(Protocol):
    """A pause every process obeys (the daily quota): until an epoch time, or None."""

    def get(self) -> float | None: ...
    def set(self, until: float | None) -> None: ...


class BudgetState(NamedTuple):
    """The governor's shared state, as one record (see delivery/governor.py for what it means)."""

    next_slot: float | None  # None: never reserved
    day: str  # UTC date of day_count
    day_count: int
    sent: list[float]  # wall times of the last few check-ins, oldest first
    widen: float  # spacing factor set by the last `throttled` answer (1: none)
    widened_at: float


class Budget(Protocol):
    """The request budget all processes share. ``update`` runs ``change`` under the cross-process
    lock on the current state; ``change`` returns (the new state, or None to write nothing; a
    result for the caller). ``change`` may run again (a backend may retry on conflict)."""

    def update(self, change: Callable[[BudgetState], tuple[BudgetState | None, T]]) -> T: ...
    def read(self) -> BudgetState: ...


class TokenConflict(RuntimeError):
    """The tokens changed since this thread read them: it must read again (never overwrite)."""


class TokenStore(Protocol):
    """The plugin's own copy of the OAuth tokens (rotating refresh tokens are single-use).
    ``write`` may raise :class:`TokenConflict` (a store shared by hosts compares and sets)."""

    def read(self) -> "TokenState | None": ...
    def write(self, state: "TokenState") -> None: ...
    def lock(self) -> AbstractContextManager[Any]: ...  # cross-process, for read–refresh–write
    def signature(self) -> tuple: ...  # changes whenever the tokens are rewritten


class Suppression(NamedTuple):
    """An email Constant Contact will not mail (or no longer has): never to be imported again."""

    email_key: str  # lower-cased email
    reason: str  # "unsubscribed" | "deleted" (deleted wins: see delivery/mirror.py)
    at: float  # epoch: opt-out time (email_address.opt_out_date) or deletion; the time we saw it if unknown
    source: str | None  # email_address.opt_out_source ("Contact"/"Account"), None if unknown
    contact_id: str | None
    opted_out_at: float | None = None  # the opt-out time, kept also when a deletion followed it


class OptOut(NamedTuple):
    """One opt-out as RemixCRM is told of it (see ``opt_outs.py`` and hookspecs.md)."""

    email: str  # lower-cased
    client_id: str | None  # the RemixCRM client we pushed with this email (the newest); None if never
    opted_out_at: float  # epoch, Constant Contact's opt_out_date (when it is unknown: when we first saw it)
    source: str | None  # "Contact" (the person) | "Account" (someone in the account); None if unknown
    recorded_at: float  # epoch, this host's clock: when it was recorded here; the readers' cursor


class Suppressions(Protocol):
    """The local mirror of Constant Contact's unsubscribed and deleted emails, shared by all
    processes, with the watermarks that keep it current (see delivery/mirror.py). A large
    ``record``/``clear`` may commit in chunks: each change is idempotent, so a reader that sees
    part of one loses nothing."""

    def suppressed(self, emails: Iterable[str]) -> dict[str, Suppression]: ...  # keyed by lower-cased email
    def record(self, entries: Iterable[Suppression]) -> None: ...  # upsert; the newer `at` wins
    def clear(self, emails: Iterable[str]) -> None: ...  # active again in Constant Contact
    # clear each email unless what we hold is newer than the given time (when Constant Contact last
    # updated the contact it now shows as active): a page read before an opt-out cannot undo it
    def clear_stale(self, active_since: Mapping[str, float]) -> None: ...
    def counts(self) -> dict[str, int]: ...  # reason -> emails
    # opt-outs recorded after ``since`` (exclusive; None: all), oldest recorded first; each
    # record() stamps strictly later than every earlier one, so "after the last one seen" misses none
    def opt_outs(self, since: float | None = None) -> list[OptOut]: ...
    def get_meta(self, key: str) -> str | None: ...  # the mirror's watermarks
    def set_meta(self, key: str, value: str | None) -> None: ...
