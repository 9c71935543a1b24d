"""The journal's offset, compared and set in the fold's transaction: each line folded exactly once,
whoever races whom (found by review: a host and the sender process folding one file), and a
deleted journal's offset kept as a tombstone until the hourly purge (store/offsets.py)."""

import time

from test_journal import line, orphan

from remixcrm_plugin_ctct.store import journal_files, journal_lines, offsets, outbox_admin
from remixcrm_plugin_ctct.store.journal_watch import JournalWatcher
from remixcrm_plugin_ctct.store.outbox import Outbox


def spy(box, taken):
    real = box.add_records

    def add(records, name=None, offset=0, start=None):
        done = real(records, name, offset, start)
        if done:
            taken.extend(r["client_id"] for r in records)
        return done

    box.add_records = add
    return real


def test_a_dead_file_adopted_by_a_host_while_the_sender_process_folds_it_is_folded_once(tmp_path):
    """A host (sender = "thread" again) adopts a dead, never-folded file: it holds the file's lock,
    so the sender process's JournalWatcher takes the lock as Busy ("its process is alive") and
    folds it as a live file from offset 0. The adopter folds it, deletes it and forgets its
    offset (the key is deleted: read as 0 again) before the watcher commits: the watcher's
    compare-and-set with start=0 matched the forgotten key (ABA) and folded every line again: the
    key is now a tombstone."""
    path = orphan(tmp_path, line(1) + line(2) + line(3))
    ours, theirs = Outbox(tmp_path), Outbox(tmp_path)
    watcher = JournalWatcher(tmp_path)
    taken: list[str] = []
    spy(ours, taken)
    real_theirs = spy(theirs, [])

    lock = journal_files.owner_lock(path)
    lock.acquire()  # the host's adopt_dead took the dead writer's lock

    def their_add(records, name=None, offset=0, start=None):
        if records and not taken:  # the watcher read offset 0 and its chunk; the adopter finishes first
            journal_files.fold_file(ours, path, final=True)
            journal_files.forget(ours, path, lock)
        done = real_theirs(records, name, offset, start)
        if done:
            taken.extend(r["client_id"] for r in records)
        return done

    theirs.add_records = their_add
    watcher.fold_into(theirs)
    assert sorted(taken) == ["1", "2", "3"], f"folded twice: {sorted(taken)}"
    assert ours.journal_offset(path.name) == offsets.DONE  # a tombstone, until the hourly purge


def test_a_refused_record_in_the_one_at_a_time_fallback_loses_and_repeats_nothing(tmp_path):
    path = orphan(tmp_path, line(1) + line(2) + b"garbage\n" + line(3) + line(4))
    box = Outbox(tmp_path)
    taken: list[str] = []
    real = box.add_records

    def add(records, name=None, offset=0, start=None):
        if any(r["client_id"] == "2" for r in records):
            raise ValueError("refused")
        done = real(records, name, offset, start)
        if done:
            taken.extend(r["client_id"] for r in records)
        return done

    box.add_records = add
    assert journal_files.fold_file(box, path, final=True) == 3
    assert sorted(taken) == ["1", "3", "4"]
    assert box.journal_offset(path.name) == path.stat().st_size


def test_another_folder_between_two_records_of_the_fallback_stops_it_without_a_double(tmp_path):
    path = orphan(tmp_path, line(1) + line(2) + line(3) + line(4))
    ours, theirs = Outbox(tmp_path), Outbox(tmp_path)
    taken: list[str] = []
    spy(theirs, taken)
    real = ours.add_records
    calls = []

    def add(records, name=None, offset=0, start=None):
        calls.append(len(records))
        if len(records) > 1:
            raise ValueError("refused as a batch")
        if len(calls) == 3:  # after record 1 went in one at a time, the other folder takes the rest
            journal_files.fold_file(theirs, path)
        done = real(records, name, offset, start)
        if done:
            taken.extend(r["client_id"] for r in records)
        return done

    ours.add_records = add
    journal_files.fold_file(ours, path)
    assert sorted(taken) == ["1", "2", "3", "4"]
    assert ours.journal_offset(path.name) == path.stat().st_size


def test_a_dead_mapped_file_partial_line_then_nuls_then_lines(tmp_path):
    data = line(1) + line(2)[:20] + b"\0" * 5000 + line(3) + b"\0" * 100
    path = orphan(tmp_path, data)
    box = Outbox(tmp_path)
    taken: list[str] = []
    spy(box, taken)
    assert journal_files.fold_file(box, path, final=True) == 2
    assert sorted(taken) == ["1", "3"]


def test_a_chunk_of_damaged_lines_only_moves_on(tmp_path):
    bad = b"x" * 1000 + b"\n"
    path = orphan(tmp_path, bad * (journal_lines.FOLD_CHUNK // len(bad) + 5) + line(1))
    box = Outbox(tmp_path)
    taken: list[str] = []
    spy(box, taken)
    assert journal_files.fold_file(box, path, final=True) == 1
    assert taken == ["1"] and box.journal_offset(path.name) == path.stat().st_size


def test_a_tombstone_refuses_a_fold_from_zero_and_the_purge_drops_it_only_once_old(tmp_path):
    box = Outbox(tmp_path)
    assert box.add_records([], "1-a.jsonl", 300, start=0)
    box.forget_journal("1-a.jsonl")
    assert box.journal_offset("1-a.jsonl") == offsets.DONE
    assert not box.add_records([{"email": "x@example.com"}], "1-a.jsonl", 300, start=0)
    now = time.time()
    outbox_admin.purge(box, 30 * 86400, now)  # the hourly purge: a fresh tombstone stays
    assert box.journal_offset("1-a.jsonl") == offsets.DONE
    outbox_admin.purge(box, 30 * 86400, now + offsets.KEEP + 5)
    assert box.get_meta("journal:1-a.jsonl") is None
    assert box.add_records([], "2-b.jsonl", 10, start=0) and box.get_meta("journal:2-b.jsonl") == "10"  # others kept
