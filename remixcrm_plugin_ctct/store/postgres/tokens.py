"""The token pair in PostgreSQL, one row for every host: :class:`.interfaces.TokenStore`.

Rotating refresh tokens are single-use, so two hosts must never refresh with the same one. The
refresh is serialised by :meth:`PgTokenStore.lock`, a transaction-scoped advisory lock held on a
connection of its own for the read–refresh–write (released by COMMIT, or by the server when the
holder dies; never a session lock, which PgBouncer's transaction pooling would strand). Reads
and writes go through the shared connection and commit at once (the new pair is durable before
it is used); every write is a compare-and-set on the row's version, so a writer that read an
older pair can never overwrite a newer one.
"""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from ..interfaces import TokenConflict
from ..tokens import LOCK_TIMEOUT, TokenState
from .connect import Database, transaction_lock

__all__ = ["PgTokenStore", "TokenConflict"]

# seconds the token lock may be held: a refresh takes one token call (connect + read timeouts,
# about 13 s) and a second's wait; a holder frozen longer loses the lock (see ctct/token_manager.py)
LOCK_HOLD = 60.0


class PgTokenStore:
    def __init__(self, db: Database):
        self.db = db
        self.s = f'"{db.schema}"'
        self._seen = threading.local()  # the version this thread last read or wrote

    def __repr__(self) -> str:
        return f"PgTokenStore({self.db.where!r})"

    @contextmanager
    def lock(self) -> Iterator[None]:
        with transaction_lock(self.db, f"remixcrm_ctct:tokens:{self.db.schema}", LOCK_TIMEOUT, LOCK_HOLD):
            yield

    def read(self) -> TokenState | None:
        version, raw = self.db.run(
            lambda c: c.execute(f"SELECT version, state FROM {self.s}.tokens WHERE id = 1").fetchone()
        )
        self._seen.version = version
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None  # unreadable: reseeded from the config, as a torn tokens.json would be
        known = TokenState.__dataclass_fields__
        return TokenState(**{k: v for k, v in data.items() if k in known})

    def write(self, state: TokenState) -> None:
        """Replace the pair if nobody wrote since this thread's last read (raises TokenConflict)."""
        expected = getattr(self._seen, "version", None)
        if expected is None:
            raise TokenConflict("read the tokens before writing them")
        raw = json.dumps(asdict(state))

        def swap(conn: Any) -> Any:
            return conn.execute(
                f"UPDATE {self.s}.tokens SET state = %s, version = version + 1 WHERE id = 1 AND version = %s "
                "RETURNING version",
                (raw, expected),
            ).fetchone()

        found = self.db.run(swap)
        if found is None:
            # written twice if the COMMIT's answer was lost: the first one is ours when it holds our pair
            version, current = self.db.run(
                lambda c: c.execute(f"SELECT version, state FROM {self.s}.tokens WHERE id = 1").fetchone()
            )
            if current != raw:
                raise TokenConflict("the tokens were changed by another process since they were read")
            found = (version,)
        self._seen.version = found[0]

    def signature(self) -> tuple:
        """The row's version: changes whenever the tokens are rewritten, on any host."""
        return (self.db.run(lambda c: c.execute(f"SELECT version FROM {self.s}.tokens WHERE id = 1").fetchone()[0]),)

    def seed(self, state: TokenState, replace: bool = False) -> bool:
        """For ``migrate-state``: store ``state`` if the store holds no tokens yet (or ``replace``);
        True when written."""
        raw = json.dumps(asdict(state))
        condition = "" if replace else " AND state IS NULL"
        return bool(
            self.db.run(
                lambda c: (
                    c.execute(
                        f"UPDATE {self.s}.tokens SET state = %s, version = version + 1 WHERE id = 1{condition}", (raw,)
                    ).rowcount
                )
            )
        )
