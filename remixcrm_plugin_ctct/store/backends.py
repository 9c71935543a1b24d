"""Which store holds the shared state: the embedded SQLite files in the data dir (one host,
zero-config), or PostgreSQL (``state_url``: several hosts). Chosen once per process, where the
parts are built (``runtime``); the journal stays on local disk in front of either, so the hook
never touches the network.
"""

from pathlib import Path
from typing import NamedTuple

from ..config import StateLocation
from .budget import SqliteBudget
from .interfaces import Budget, Outbox, Suppressions, TokenStore
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


def open_store(data_dir: Path, where: StateLocation) -> Store:
    """The parts for ``where`` (nothing is opened or connected here)."""
    if where.url is None:
        outbox = SqliteOutbox(data_dir)
        suppressions = SqliteSuppressions(outbox)
        return Store(outbox, FileTokenStore(data_dir), SqliteBudget(data_dir), suppressions, "sqlite", None)
    from . import postgres  # (psycopg itself only on the first connection)

    pg, tokens, budget = postgres.open_store(where.url, where.schema, data_dir)
    return Store(pg, tokens, budget, postgres.PgSuppressions(pg.db, pg), "postgresql", where.url)
