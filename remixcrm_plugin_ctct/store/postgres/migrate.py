"""``remixcrm-ctct migrate-state``: this host's SQLite store copied into the shared PostgreSQL one.

Idempotent: each row is copied once (table ``imported`` remembers it by host and row id), newest
states only replace older ones, the token pair only fills an empty store, counts take the larger
value. Running it again, or on every host, copies nothing twice. What it copies: unsent and dead
rows, the newest state of every email, the token pair, today's request count and pacing, the
quota pause and counters, and how far this host's journals were folded (so lines already in the
SQLite outbox are not folded again). Delivered rows' history stays in the local file.
"""

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from ..budget import FILE_NAME as BUDGET_FILE
from ..budget import SqliteBudget
from ..journal import Journal
from ..outbox import FILE_NAME as OUTBOX_FILE
from ..outbox import Outbox
from ..pause import KEY as PAUSE_KEY
from ..tokens import TokenStore
from . import sql
from .budget import PgBudget
from .outbox import PgOutbox
from .suppressions import UPSERT as UPSERT_SUPPRESSED
from .tokens import PgTokenStore

COPIED_STATES = ("pending", "sending", "dead")
_COLUMNS = "id, email_key, client_id, other_clients, event, contact, state, attempts, created_at, last_error"


def migrate(data_dir: Path, box: PgOutbox, tokens: PgTokenStore, budget: PgBudget, dry_run: bool) -> dict[str, int]:
    """Copy, or with ``dry_run`` only count, what this host's SQLite store holds. Returns counts."""
    counts = {"rows": 0, "already copied": 0, "newest states": 0, "suppressed": 0, "token pair": 0}
    counts |= {"requests today": 0, "meta": 0}
    data_dir = Path(data_dir)
    if (data_dir / OUTBOX_FILE).exists():
        local = Outbox(data_dir)
        try:
            if not dry_run:
                Journal(data_dir).fold_into(local)  # journals of stopped processes: into the file first
            _outbox(local, box, dry_run, counts)
        finally:
            local.close()
    found = TokenStore(data_dir).read()
    if found is not None and (found.access_token or found.refresh_token):
        empty = tokens.read() is None
        counts["token pair"] = int(empty and (dry_run or tokens.seed(found)))
    if (data_dir / BUDGET_FILE).exists():
        state = SqliteBudget(data_dir).read()
        counts["requests today"] = state.day_count
        if not dry_run and state.day:
            budget.update(lambda now: (_later_budget(now, state), None))
    return counts


def _outbox(local: Outbox, box: PgOutbox, dry_run: bool, counts: dict[str, int]) -> None:
    source = hashlib.sha256(box.host.encode()).hexdigest()[:16]
    rows = local._query(
        f"SELECT {_COLUMNS} FROM events WHERE state IN ({', '.join('?' * len(COPIED_STATES))}) ORDER BY id",
        COPIED_STATES,
    )
    states = local._query("SELECT email_key, contact, stamps, client_id, event, at, seq, updated_at FROM latest")
    meta = local._query(
        "SELECT key, value FROM meta WHERE key LIKE 'journal:%' OR key LIKE 'count:%' OR key LIKE 'mirror:%' "
        "OR key = ?",
        (PAUSE_KEY,),
    )
    suppressed = local._query(
        "SELECT email_key, reason, at, source, contact_id, opted_out_at, recorded_at FROM suppressed"
    )
    s = box.s

    def copy(conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (sql.fold_lock(box.db.schema),))
        for row in rows:
            key = f"{source}:{row[0]}"
            if conn.execute(f"SELECT 1 FROM {s}.imported WHERE source = %s", (key,)).fetchone():
                counts["already copied"] += 1
                continue
            counts["rows"] += 1
            if not dry_run:
                conn.execute(f"INSERT INTO {s}.imported (source, at) VALUES (%s, %s)", (key, time.time()))
                _copy_row(conn, s, row)
        for state in states:
            newer = conn.execute(
                f"SELECT 1 FROM {s}.latest WHERE email_key = %s AND (at, seq) >= (%s, %s)",
                (state[0], state[5], state[6]),
            ).fetchone()
            if newer is None:
                counts["newest states"] += 1
                if not dry_run:
                    conn.execute(box._sql["UPSERT_LATEST"], state)
        for entry in suppressed:  # the mirror: the newer fact wins, as in a sync
            newer = conn.execute(f"SELECT 1 FROM {s}.suppressed WHERE email_key = %s AND at >= %s", entry[:3:2])
            if newer.fetchone() is None:
                counts["suppressed"] += 1
                if not dry_run:
                    conn.execute(UPSERT_SUPPRESSED.format(s=s), entry)
        for key, value in meta:
            target = box._journal_prefix + key.removeprefix("journal:") if key.startswith("journal:") else key
            found = conn.execute(f"SELECT value FROM {s}.meta WHERE key = %s", (target,)).fetchone()
            if found is None or _number(found[0]) < _number(value):
                counts["meta"] += 1
                if not dry_run:
                    conn.execute(box._sql["SET_META"], (target, value))

    box.db.run(copy)


def _copy_row(conn: Any, s: str, row: tuple) -> None:
    """One SQLite row into the shared outbox: a dead row as it is; an unsent one coalesced into the
    email's pending row there (one push per email), or pending of its own, due now."""
    row_id, email_key, client, others, event, contact, state, attempts, created, error = row
    now = time.time()
    if state != "dead":
        pending = conn.execute(
            f"SELECT id FROM {s}.events WHERE email_key = %s AND state = 'pending' FOR UPDATE", (email_key,)
        ).fetchone()
        if pending is not None:
            conn.execute(
                f"UPDATE {s}.events SET other_clients = trim(other_clients || ' ' || %s || ' ' || %s), "
                "created_at = least(created_at, %s), updated_at = %s WHERE id = %s",
                (client, others, created, now, pending[0]),
            )
            return
    conn.execute(
        f"INSERT INTO {s}.events (email_key, client_id, other_clients, event, contact, state, attempts, created_at, "
        "next_attempt_at, last_error, outcome, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            email_key,
            client,
            others,
            event,
            contact,
            "dead" if state == "dead" else "pending",
            attempts,
            created,
            now,
            error,
            "dead" if state == "dead" else None,
            now,
        ),
    )


def _later_budget(shared: Any, local: Any) -> Any:
    """The shared budget, with the local day's count if that is the larger one for the same day."""
    if local.day != shared.day and shared.day > local.day:
        return None
    if local.day == shared.day and local.day_count <= shared.day_count:
        return None
    return shared._replace(
        day=local.day, day_count=max(local.day_count, shared.day_count if local.day == shared.day else 0)
    )


def _number(value: str) -> float:
    try:
        return float(json.loads(value))
    except (ValueError, TypeError):
        return float("-inf")
