"""Which store holds the shared state: the embedded SQLite files in the data dir (one host,
zero-config), or PostgreSQL (``state_url``: several hosts). Chosen once per process, where the
parts are built (``runtime``); the journal stays on local disk in front of either, so the hook
never touches the network.
"""

from pathlib import Path
from typing import NamedTuple

from ..config import StateLocation, mask_url
from .budget import SqliteBudget
from .interfaces import Budget, HostJournals, Outbox, Suppressions, TokenStore
from .outbox import Outbox as SqliteOutbox
from .suppressions import SqliteSuppressions
from .tokens import TokenStore as FileTokenStore


class Store(NamedTuple):
    outbox: Outbox
    tokens: TokenStore
    budget: Budget
    suppressions: Suppressions
    kind: str  # "sqlite" or "postgresql"
    url: str | None  # the state_url in force (None: SQLite)
    journals: HostJournals | None = None  # where every host's journal lies (shared store only)

    def __repr__(self) -> str:  # the URL may hold a password
        return f"Store({self.kind}, {mask_url(self.url) if self.url else None!r})"


def open_store(data_dir: Path, where: StateLocation) -> Store:
    """The parts for ``where`` (nothing is opened or connected here)."""
    if where.url is None:
        outbox = SqliteOutbox(data_dir)
        suppressions = SqliteSuppressions(outbox)
        return Store(outbox, FileTokenStore(data_dir), SqliteBudget(data_dir), suppressions, "sqlite", None)
    from . import postgres  # (psycopg itself only on the first connection)

    pg, tokens, budget = postgres.open_store(where.url, where.schema, data_dir)
    shared_mirror = postgres.PgSuppressions(pg.db, pg)
    return Store(pg, tokens, budget, shared_mirror, "postgresql", where.url, postgres.PgJournals(pg))
