"""Who holds the outbox's leases, and which holders are gone (see :mod:`.owners`).

A row is leased to one process at a time. A process that dies cannot hand its leases back; a
holder on this machine that is provably gone has its rows taken back at once, others once their
lease ran out (and a live holder's only after ``LIVE_HOLDER_GRACE`` more).
"""

import json
import logging
import os
import sqlite3
from collections.abc import Iterable

from . import owners

log = logging.getLogger("remixcrm_plugin_ctct")

_started: dict[int, str | None] = {}  # pid -> its start time (read from /proc once per pid)


def identity() -> tuple[str, int, str | None]:
    """(machine, pid, start time) of this process, as the ``owners`` table records a holder."""
    pid = os.getpid()
    if pid not in _started:
        _started[pid] = owners.started(pid)
    return owners.machine(), pid, _started[pid]


def note_holder(conn: sqlite3.Connection, owner: str) -> None:
    """Record who ``owner`` is (once), so that other processes can tell when it is gone."""
    conn.execute(
        "INSERT OR IGNORE INTO owners (owner, machine, pid, started) VALUES (?, ?, ?, ?)", (owner, *identity())
    )


def holders(conn: sqlite3.Connection) -> tuple[str, str]:
    """The lease holders on this machine that are gone, and those alive (JSON lists); forgets
    holders that lease nothing any more. Runs inside the claim's transaction."""
    dead, alive = classify(
        conn.execute(
            "SELECT DISTINCT e.lease_owner, o.machine, o.pid, o.started FROM events e "
            "JOIN owners o ON o.owner = e.lease_owner WHERE e.state = 'sending'"
        )
    )
    conn.execute(
        "DELETE FROM owners WHERE owner NOT IN "
        "(SELECT lease_owner FROM events WHERE state = 'sending' AND lease_owner IS NOT NULL)"
    )
    return json.dumps(dead), json.dumps(alive)


def classify(found: Iterable[tuple[str, str, int, str | None]]) -> tuple[list[str], list[str]]:
    """Of the holders ``(owner, machine, pid, started)``, those on this machine that are gone, and
    those on it that are alive (any backend: holders on other machines are in neither list)."""
    here = owners.machine()
    dead: list[str] = []
    alive: list[str] = []
    for owner, machine, pid, started in found:
        if machine == here:
            (dead if owners.gone(pid, started) else alive).append(owner)
    for owner in dead:
        log.info("taking back the events leased by %s: that process is gone", owner)
    return dead, alive
