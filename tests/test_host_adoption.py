"""A host killed on this machine: a live host of another data dir folds what its journal still
held, under the dead host's offsets, and never touches a journal whose writer lives (real
PostgreSQL; the processes are played by objects here, by real processes in test_several_hosts.py)."""

import json
import subprocess
import sys

import pytest
from conftest import pg_sql
from filelock import FileLock

from remixcrm_plugin_ctct.store import neighbours, offsets
from remixcrm_plugin_ctct.store.journal import Journal
from remixcrm_plugin_ctct.store.postgres import PgJournals, open_store


def line(n: int) -> bytes:
    rec = {"email": f"c{n}@example.com", "client_id": str(n), "event": "client_created", "fields": {}, "at": 1000.0 + n}
    return (json.dumps(rec) + "\n").encode()


def gone_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


@pytest.fixture
def two_hosts(pg_schema, tmp_path, monkeypatch):
    """(dead, live): host a, whose process died leaving ``99999-dead.jsonl`` in its journal (lines
    1–3, line 1 folded before it died), and a live host b that looks for such journals at once."""
    url, name = pg_schema
    monkeypatch.setattr(neighbours, "LOOK_EVERY", 0.0)
    a = open_store(url, name, tmp_path / "host-a")[0]
    b = open_store(url, name, tmp_path / "host-b")[0]
    dead = Journal(tmp_path / "host-a")
    dead.directory.mkdir(parents=True)
    path = dead.directory / "99999-dead.jsonl"
    path.write_bytes(line(1) + line(2) + line(3))
    a.add_records([json.loads(line(1))], path.name, len(line(1)))  # host a folded line 1, then died
    PgJournals(a).register(str(dead.directory))
    pg_sql(url, f'UPDATE "{name}".journal_dirs SET pid = %s, started = NULL', (gone_pid(),))
    yield a, b, path, Journal(tmp_path / "host-b", PgJournals(b))
    a.close()
    b.close()


def clients(box) -> list[str]:
    return sorted(r["client_id"] for r in box.rows())


def test_a_live_host_folds_a_dead_hosts_journal_under_its_offsets(two_hosts, logs):
    a, b, path, live = two_hosts
    (sent,) = a.claim_many("a-worker", 4)
    a.delivered(sent.id, "contact-1", "created")  # line 1 went out before host a died
    assert live.fold_into(b) == 2
    assert clients(b) == ["1", "2", "3"]  # line 1 not again: host a's offset was used
    assert (
        not path.exists() and a.journal_offset(path.name) == offsets.DONE
    )  # adopted whole: file gone, offset a tombstone
    assert any("folded 2 event(s) a gone process" in r.getMessage() for r in logs.records)
    again = Journal(path.parent.parent)  # host a restarts on its data dir: nothing is left to fold twice
    assert again.fold_into(a) == 0 and clients(a) == ["1", "2", "3"]


def test_a_journal_whose_writer_holds_its_lock_is_left_to_it(two_hosts):
    a, b, path, live = two_hosts
    held = FileLock(str(path) + ".lock", timeout=0, thread_local=False)
    held.acquire()  # host a restarted and is adopting its own file right now
    try:
        assert live.fold_into(b) == 0 and path.exists()
    finally:
        held.release()
    assert Journal(path.parent.parent).fold_into(a) == 2  # the restarted host carries on after line 1
    assert clients(a) == ["1", "2", "3"]
    assert live.fold_into(b) == 0 and clients(b) == ["1", "2", "3"]


def test_a_host_whose_registered_process_lives_is_not_looked_into(two_hosts, pg_schema):
    url, name = pg_schema
    a, b, path, live = two_hosts
    PgJournals(a).register(str(path.parent))  # a process of host a (this one) lives
    assert live.fold_into(b) == 0 and path.exists() and clients(b) == ["1"]


def test_every_host_registers_where_its_journal_lies_and_removed_dirs_are_forgotten(two_hosts, pg_schema, tmp_path):
    url, name = pg_schema
    a, b, path, live = two_hosts
    live.fold_into(b)
    found = pg_sql(url, f'SELECT directory, offsets FROM "{name}".journal_dirs ORDER BY directory')
    assert found == [(str(path.parent), a.journal_prefix), (str(live.directory), b.journal_prefix)]
    other = tmp_path / "host-c" / "journal"
    table = f'"{name}".journal_dirs'
    copy = f"INSERT INTO {table} SELECT machine, %s, offsets, pid, started, seen_at FROM {table} WHERE directory = %s"
    pg_sql(url, copy, (str(other), str(path.parent)))
    live.fold_into(b)  # host c's data dir was removed: nothing to fold there, ever
    assert str(other) not in [d for (d,) in pg_sql(url, f'SELECT directory FROM "{name}".journal_dirs')]
