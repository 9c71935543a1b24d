"""Shared state on PostgreSQL, for several hosts (``state_url``): the outbox, the token pair, the
governor's budget and the quota pause, behind the same Protocols as the SQLite store
(:mod:`..interfaces`). psycopg is imported on the first connection, never at import."""

from pathlib import Path

from .budget import PgBudget
from .connect import Database
from .outbox import PgOutbox
from .suppressions import PgSuppressions
from .tokens import PgTokenStore

__all__ = ["Database", "PgBudget", "PgOutbox", "PgSuppressions", "PgTokenStore", "open_store"]


def open_store(url: str, schema: str, data_dir: Path) -> tuple[PgOutbox, PgTokenStore, PgBudget]:
    """The outbox, tokens and budget over one lazily opened connection per process (nothing
    connects here); the suppression mirror is ``PgSuppressions(outbox.db, outbox)``."""
    db = Database(url, schema)
    return PgOutbox(db, data_dir), PgTokenStore(db), PgBudget(db)
