"""This process's connection to the shared PostgreSQL store: opened lazily (importing the plugin,
and the hook, never touch the network), one per process, used by one thread at a time, made
anew after a fork and after PostgreSQL dropped it.

- psycopg is imported on the first connection, never before (``pip install
  "remixcrm-plugin-ctct[postgres]"`` brings it; without it, one ERROR names that command).
- Every call is one transaction (:meth:`Database.run`); a connection that broke (PostgreSQL
  restarted, ``pg_terminate_backend``, a network blip) is replaced and the call runs once more:
  the store's calls may run twice (a lost COMMIT answer), and each is written to be harmless then.
- Unreachable: :class:`StoreUnavailable` (an OSError, which the worker already treats as "the
  disk, not a bug": events wait in the journal), one ERROR a minute naming the URL with its
  password masked, and an INFO when it is back.
- No prepared statements and no session state (``SET``, session advisory locks): PgBouncer in
  transaction mode hands each transaction to any server connection.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from ... import forksafe
from ...config import mask_url, url_secrets
from ..interfaces import StoreUnavailable
from . import schema

log = logging.getLogger("remixcrm_plugin_ctct")

T = TypeVar("T")
CONNECT_TIMEOUT = 3  # seconds: the worker, never the hook, waits for it
# Every transaction bounds its own waits (transaction-local, so PgBouncer's transaction pooling
# is fine): a host that froze or lost its network mid-transaction would otherwise hold its locks
# until TCP keepalive gives up (about 2 h by default) and stall every other host's folds and claims.
LOCK_TIMEOUT = "15s"  # waiting for another transaction's lock: then StoreUnavailable, tried again later
IDLE_IN_TRANSACTION_TIMEOUT = "60s"  # the server ends a session that sits idle inside a transaction
GUARDS = "SELECT set_config('lock_timeout', %s, true), set_config('idle_in_transaction_session_timeout', %s, true)"
# a dead peer is noticed by the socket itself within about a minute, not two hours
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
RECONNECT_PAUSE = 1.0  # seconds after a failed connection before the next try (callers loop)
ERROR_EVERY = 60.0  # seconds between "cannot reach" ERRORs
APPLICATION_NAME = "remixcrm-ctct"  # and the schema, in pg_stat_activity: what an admin (or a test) sees
INSTALL = 'pip install "remixcrm-plugin-ctct[postgres]"'


class Database:
    """One PostgreSQL database and schema, as this process reaches it."""

    def __init__(self, url: str, schema_name: str):
        self.url, self.schema = url, schema_name
        self.where = f"PostgreSQL {mask_url(url)} (schema {schema_name})"
        self.version: int | None = None  # the schema version, once connected
        self._said_at = float("-inf")
        self._down = False
        self._closed = False  # closed for good (the runtime was reset): a late thread must not reconnect
        self._reset()
        forksafe.after_fork_in_child(self._after_fork)

    def __repr__(self) -> str:
        return f"Database({self.where!r})"

    def _reset(self) -> None:
        self._lock = threading.RLock()  # one transaction at a time on the connection
        self._conn: Any = None
        self._retry_at = 0.0

    def _after_fork(self) -> None:
        # never closed here: libpq's goodbye would end the parent's session on the server
        forksafe.keep(self._conn)
        self._reset()

    def run(self, work: Callable[[Any], T]) -> T:
        """``work(connection)`` in one transaction; once more on a fresh connection if the
        connection broke. Raises :class:`StoreUnavailable` when PostgreSQL cannot be used."""
        psycopg = _driver(self)
        with self._lock:
            for attempt in (1, 2):
                conn = self._connection(psycopg)
                try:
                    with conn.transaction():
                        conn.execute(GUARDS, (LOCK_TIMEOUT, IDLE_IN_TRANSACTION_TIMEOUT))
                        return work(conn)
                except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                    if not conn.closed and not conn.broken:
                        raise StoreUnavailable(f"{self.where}: {_first_line(e, self.url)}") from None
                    self._drop()
                    if attempt == 2:
                        raise self._unreachable(e) from None
        raise AssertionError("unreachable")  # for the type checker: the loop returns or raises

    def connect(self) -> Any:
        """A connection of the caller's own (the token lock holds one through a refresh); the
        caller closes it. Raises :class:`StoreUnavailable`."""
        psycopg = _driver(self)
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                **KEEPALIVE,
                prepare_threshold=None,  # no prepared statements: PgBouncer's transaction pooling
                application_name=f"{APPLICATION_NAME} {self.schema}"[:63],
            )
        except psycopg.Error as e:
            raise self._unreachable(e) from None
        return conn

    def _connection(self, psycopg: Any) -> Any:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._closed:
            raise StoreUnavailable(f"{self.where}: closed (this process's machinery was reset)")
        if time.monotonic() < self._retry_at:
            raise StoreUnavailable(f"{self.where} is unreachable; trying again shortly")
        self._retry_at = time.monotonic() + RECONNECT_PAUSE
        conn = self.connect()
        try:
            self.version = schema.ensure(conn, self.schema)
        except psycopg.Error as e:
            conn.close()
            raise self._unreachable(e) from None
        self._conn, self._retry_at = conn, 0.0
        if self._down:
            self._down = False
            log.info("the shared state store %s is reachable again", self.where)
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing to say goodbye to
                pass

    def _unreachable(self, e: BaseException) -> StoreUnavailable:
        """The error to raise, after one ERROR a minute."""
        reason = _first_line(e, self.url)
        self._down = True
        now = time.monotonic()
        if now - self._said_at >= ERROR_EVERY:
            self._said_at = now
            log.error(
                "cannot use the shared state store %s (%s); events wait in this host's journal "
                "and are delivered once it is back",
                self.where,
                reason,
            )
        return StoreUnavailable(f"{self.where} is unreachable ({reason})")

    def close(self) -> None:
        """Close the connection for good: a thread still running afterwards gets StoreUnavailable."""
        with self._lock:
            self._closed = True
            self._drop()


@contextmanager
def transaction_lock(db: Database, key: str, timeout: float, hold: float) -> Iterator[None]:
    """Hold ``pg_advisory_xact_lock(key)`` for the block, in a transaction of its own connection
    (released by COMMIT, or by the server if this process dies: never a session lock, which
    would strand behind PgBouncer's transaction pooling). Waits at most ``timeout`` seconds; the
    server ends the transaction once it has sat idle ``hold`` seconds (the connection sits idle
    through the whole block): a holder that froze — SIGSTOP, a paused VM, a deadlock — keeps its
    socket open and its kernel answers keepalives, so nothing else would ever let go."""
    conn = db.connect()
    psycopg = _driver(db)
    try:
        tx = conn.transaction()
        tx.__enter__()
        try:
            conn.execute(f"SET LOCAL lock_timeout = '{int(timeout * 1000)}ms'")
            conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = '{max(1, int(hold * 1000))}ms'")
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))
        except psycopg.Error as e:
            tx.__exit__(None, None, None)
            raise StoreUnavailable(f"{db.where}: could not take the lock {key} ({_first_line(e, db.url)})") from None
        try:
            yield
        finally:
            try:
                tx.__exit__(None, None, None)  # nothing was written: COMMIT only lets go
            except psycopg.Error:
                pass  # the connection died: the server let go already
    finally:
        conn.close()


def _driver(db: Database) -> Any:
    """psycopg, imported on first use (never while a fork runs)."""
    try:
        return forksafe.load_module("psycopg")
    except ImportError:
        now = time.monotonic()
        if now - db._said_at >= ERROR_EVERY:
            db._said_at = now
            log.error(
                "state_url is set but the PostgreSQL driver is not installed: run `%s` in RemixCRM's "
                "environment (events wait in this host's journal until then)",
                INSTALL,
            )
        raise StoreUnavailable(f"the PostgreSQL driver is missing: {INSTALL}") from None


def _first_line(e: BaseException, url: str) -> str:
    """The driver's message, one line, with the URL's password (if echoed) masked."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    text = text.replace(url, mask_url(url))
    for secret in url_secrets(url):  # longest first: one that holds another is masked whole
        text = text.replace(secret, "***")
    return text[:300]
