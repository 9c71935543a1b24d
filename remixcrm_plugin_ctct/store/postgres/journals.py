"""Where each host sharing the store keeps its journal, so that a live host on the same machine
folds what a killed one left (:class:`..interfaces.HostJournals`; the adoption itself is
:mod:`..neighbours`).

A host registers its journal directory (absolute), its machine, the prefix of its journal
offsets and the process that registered it. Another host of the same machine looks only at
directories whose registered process is provably gone (pid and start time, as for leases), and
folds their files under *that* host's offsets: when it restarts it carries on after what was
folded for it.
"""

import time

from .. import leases, offsets, owners
from ..interfaces import GoneHost
from .outbox import PgOutbox

FORGET_AFTER = 30 * 86400.0  # seconds: a directory nobody registered for this long is forgotten

REGISTER = """
INSERT INTO {s}.journal_dirs (machine, directory, offsets, pid, started, seen_at) VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (machine, directory) DO UPDATE SET offsets = excluded.offsets, pid = excluded.pid,
  started = excluded.started, seen_at = excluded.seen_at
"""


class PgJournals:
    def __init__(self, outbox: PgOutbox):
        self.outbox = outbox

    def __repr__(self) -> str:
        return f"PgJournals({self.outbox.location!r})"

    def register(self, directory: str) -> None:
        machine, pid, started = leases.identity()
        now, s = time.time(), self.outbox.s

        def register(conn) -> None:
            conn.execute(REGISTER.format(s=s), (machine, directory, self.outbox.journal_prefix, pid, started, now))
            conn.execute(f"DELETE FROM {s}.journal_dirs WHERE seen_at < %s", (now - FORGET_AFTER,))

        self.outbox.db.run(register)

    def gone_hosts(self, own: str) -> list[GoneHost]:
        found = self.outbox._q(
            "SELECT directory, offsets, pid, started FROM {s}.journal_dirs WHERE machine = %s AND directory <> %s",
            (owners.machine(), own),
        )
        return [
            GoneHost(directory, OffsetsOf(self.outbox, prefix), pid, started)
            for directory, prefix, pid, started in found
            if owners.gone(pid, started)
        ]

    def forget_host(self, host: GoneHost) -> None:
        self.outbox._x(
            "DELETE FROM {s}.journal_dirs WHERE machine = %s AND directory = %s AND pid = %s "
            "AND started IS NOT DISTINCT FROM %s",  # not a registration made since by a new process
            (owners.machine(), host.directory, host.pid, host.started),
        )


class OffsetsOf:
    """The shared outbox as a journal sink keeping another host's offsets (``prefix``)."""

    def __init__(self, outbox: PgOutbox, prefix: str):
        self.outbox, self.prefix = outbox, prefix

    def add_records(
        self, records: list[dict], journal: str | None = None, offset: int = 0, start: int | None = None
    ) -> bool:
        return self.outbox.fold_records(records, None if journal is None else self.prefix + journal, offset, start)

    def journal_offset(self, journal: str) -> int:
        return offsets.parse(self.outbox.get_meta(self.prefix + journal))

    def forget_journal(self, journal: str) -> None:
        self.outbox.set_meta(self.prefix + journal, offsets.tombstone(time.time()))  # see store/offsets.py
