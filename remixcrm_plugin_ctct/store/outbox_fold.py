"""Folding journal records into the outbox: one transaction per batch (see :meth:`.outbox.Outbox.add_records`).

Each email's records are merged into its newest known state (table ``latest``, :mod:`.newest`),
and a pending row asks for a push of that state: also when the records are older than what was
already sent (a push of the newest state again is harmless; a newest decline is skipped).
"""

import json
import sqlite3

from . import newest
from .outbox_sql import INSERT_PENDING, UPSERT_LATEST


def fold(conn: sqlite3.Connection, records: list[dict], now: float) -> None:
    """Merge ``records`` inside the caller's transaction on ``conn``."""
    by_email = group(records)
    keys = json.dumps(list(by_email))
    known = {
        f[0]: newest.State(json.loads(f[1]), json.loads(f[2]), *f[3:])
        for f in conn.execute(
            "SELECT email_key, contact, stamps, client_id, event, at, seq FROM latest "
            "WHERE email_key IN (SELECT value FROM json_each(?))",
            (keys,),
        )
    }
    pending = {
        f[0]: f[1:]
        for f in conn.execute(
            "SELECT email_key, id, client_id, other_clients FROM events "
            "WHERE state = 'pending' AND email_key IN (SELECT value FROM json_each(?))",
            (keys,),
        )
    }
    states, inserts, updates = plan(by_email, known, pending, now)
    conn.executemany(UPSERT_LATEST, states)
    conn.executemany(INSERT_PENDING, inserts)
    conn.executemany(
        "UPDATE events SET client_id = ?, event = coalesce(?, event), other_clients = ?, "
        "contact = ?, created_at = min(created_at, ?), updated_at = ? WHERE id = ?",
        updates,
    )


Plan = tuple[list[tuple], list[tuple], list[tuple]]


def group(records: list[dict]) -> dict[str, list[dict]]:
    """``records`` by email key (the email lower-cased)."""
    by_email: dict[str, list[dict]] = {}
    for r in records:
        by_email.setdefault(r["email"].lower(), []).append(r)
    return by_email


def plan(
    by_email: dict[str, list[dict]], known: dict[str, newest.State], pending: dict[str, tuple], now: float
) -> Plan:
    """What the fold writes, whatever the backend: (the newest states to upsert, the pending rows
    to insert, the pending rows to update), from each email's records, its known newest state and
    its pending row ``(id, client_id, other_clients)``. Pure: every backend's fold shares it.

    states: (email_key, contact, stamps, client_id, event, at, seq, now);
    inserts: (email_key, client_id, other_clients, event, contact, created_at, next_attempt_at, now);
    updates: (client_id, event or None, other_clients, contact, created_at (lowered only), now, row id).
    """
    states, inserts, updates = [], [], []
    for key, batch in by_email.items():
        batch.sort(key=newest.stamp)
        before = known.get(key)
        state = before
        for r in batch:
            state = newest.merge(state, r)
        assert state is not None  # a batch is never empty
        contact = json.dumps(state.contact)
        stamps = json.dumps(state.stamps)
        states.append((key, contact, stamps, state.client_id, state.event, state.at, state.seq, now))
        last, clients = batch[-1], [str(r["client_id"]) for r in batch]
        # the row's time is its oldest event's (a clock ahead of ours must not delay the row)
        created = min(now, *(newest.stamp(r)[0] or now for r in batch))
        if key not in pending:
            client = str(last["client_id"])
            others = _others(clients, client)
            inserts.append((key, client, others, last["event"], contact, created, created, now))
            continue
        row_id, old_client, others = pending[key]
        client, event = old_client, None  # None: the event stays
        if before is None or newest.stamp(last) >= (before.at, before.seq):
            client, event = str(last["client_id"]), last["event"]  # the row now carries the newest event
        everyone = [old_client, *others.split(), *clients]
        # an older event folded late (another process's journal) joins the row: the row's time goes
        # back to it, so its event marker counts as the row's own (see newest.consent_in_force)
        updates.append((client, event, _others(everyone, client), contact, created, now, row_id))
    return states, inserts, updates


def _others(clients: list[str], client: str) -> str:
    """The space-separated client ids other than ``client``, each once, in order."""
    return " ".join(dict.fromkeys(c for c in clients if c and c != client))
