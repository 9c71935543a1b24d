"""The shared store's tables, created and migrated by whichever process connects first.

Each migration runs once, in order, in one transaction that holds a transaction-scoped
advisory lock: many processes starting at once wait for the first and then find the work done
(a plain ``CREATE … IF NOT EXISTS`` races in PostgreSQL's catalog). A process that is up to
date takes no lock at all: one ``SELECT``. Statements name the schema (``{s}``), never rely on
``search_path`` (PgBouncer hands each transaction to any server connection).
"""

from typing import Any

from ..interfaces import StoreUnavailable

# version -> statements; never edit one that shipped, add the next
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE {s}.events (
  id bigserial PRIMARY KEY,
  email_key text,                          -- lower-cased email; NULL once purged
  client_id text NOT NULL,
  other_clients text NOT NULL DEFAULT '',  -- ids of earlier events coalesced into this row
  event text NOT NULL,
  contact text,                            -- JSON of the contact (email, fields, email_opt_in); NULL once purged
  state text NOT NULL,
  attempts integer NOT NULL DEFAULT 0,
  created_at double precision NOT NULL,
  next_attempt_at double precision NOT NULL,
  lease_owner text,
  lease_until double precision,
  last_error text,
  outcome text,
  contact_id text,
  updated_at double precision NOT NULL
);
CREATE UNIQUE INDEX one_pending_per_email ON {s}.events (email_key) WHERE state = 'pending';
CREATE INDEX sending_per_email ON {s}.events (email_key) WHERE state = 'sending';
CREATE INDEX due ON {s}.events (state, next_attempt_at);
CREATE INDEX by_client ON {s}.events (client_id);
CREATE INDEX by_email ON {s}.events (email_key);
CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE {s}.latest (
  email_key text PRIMARY KEY, contact text NOT NULL, stamps text NOT NULL, client_id text NOT NULL,
  event text NOT NULL, at double precision NOT NULL, seq bigint NOT NULL, updated_at double precision NOT NULL
);
CREATE TABLE {s}.owners (owner text PRIMARY KEY, machine text NOT NULL, pid integer NOT NULL, started text);
CREATE TABLE {s}.hosts (host text PRIMARY KEY, last_seen double precision NOT NULL);
CREATE TABLE {s}.tokens (id integer PRIMARY KEY CHECK (id = 1), version bigint NOT NULL, state text);
INSERT INTO {s}.tokens (id, version, state) VALUES (1, 0, NULL);
CREATE TABLE {s}.budget (
  id integer PRIMARY KEY CHECK (id = 1), next_slot double precision, day text NOT NULL,
  day_count integer NOT NULL, sent text NOT NULL, widen double precision NOT NULL,
  widened_at double precision NOT NULL
);
INSERT INTO {s}.budget VALUES (1, NULL, '', 0, '[]', 1.0, 0.0);
CREATE TABLE {s}.imported (source text PRIMARY KEY, at double precision NOT NULL);  -- migrate-state
""",
    2: """
CREATE TABLE {s}.suppressed (             -- the suppression mirror (see store/suppressions.py)
  email_key text PRIMARY KEY, reason text NOT NULL, at double precision NOT NULL, source text,
  contact_id text, opted_out_at double precision, client_id text, recorded_at double precision NOT NULL
);
CREATE INDEX suppressed_by_recorded ON {s}.suppressed (recorded_at);
""",
}
LATEST = max(MIGRATIONS)


def ensure(conn: Any, name: str) -> int:
    """Bring schema ``name`` up to :data:`LATEST` on ``conn`` (autocommit); returns the version."""
    s = quoted(name)
    if _version(conn, s) == LATEST:
        return LATEST
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"remixcrm_ctct:migrate:{name}",))
        if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,)).fetchone() is None:
            conn.execute(f"CREATE SCHEMA {s}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.schema_version "
            "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        found = conn.execute(f"SELECT coalesce(max(version), 0) FROM {s}.schema_version").fetchone()[0]
        if found > LATEST:
            raise StoreUnavailable(
                f"the shared store's schema {name} is at version {found}, newer than this plugin knows "
                f"({LATEST}): upgrade remixcrm-plugin-ctct on this host"
            )
        for version in sorted(v for v in MIGRATIONS if v > found):
            conn.execute(MIGRATIONS[version].format(s=s))
            conn.execute(f"INSERT INTO {s}.schema_version (version) VALUES (%s)", (version,))
    return LATEST


def _version(conn: Any, s: str) -> int | None:
    """The schema's version, or None when it has no version table yet (one query, no lock)."""
    found = conn.execute("SELECT to_regclass(%s)", (f"{s}.schema_version",)).fetchone()[0]
    if found is None:
        return None
    return conn.execute(f"SELECT max(version) FROM {s}.schema_version").fetchone()[0]


def quoted(name: str) -> str:
    """The schema's name as SQL (the config admits only lower-case letters, digits and ``_``)."""
    return '"' + name.replace('"', '""') + '"'
