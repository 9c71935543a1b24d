"""The journal: what a line holds, and that no line — cut short, poisoned or overlong — loses
or holds back the lines after it."""

import json
import logging
import os
import re

import pytest
from filelock import FileLock

from remixcrm_plugin_ctct import runtime as dispatch
from remixcrm_plugin_ctct.admin import cli
from remixcrm_plugin_ctct.payload import Contact, contact_from_client, shown
from remixcrm_plugin_ctct.store import journal, journal_lines
from remixcrm_plugin_ctct.store.journal import Journal, encode, record
from remixcrm_plugin_ctct.store.journal_watch import JournalWatcher
from remixcrm_plugin_ctct.store.outbox import Outbox


def contact(n, **fields):
    return Contact(str(n), f"c{n}@example.com", fields)


def line(n, **changes) -> bytes:
    """A line as an older version wrote it (ASCII JSON, no seq)."""
    rec = {"email": f"c{n}@example.com", "client_id": str(n), "event": "client_created", "fields": {}, "at": 1000.0 + n}
    rec.update(changes)
    return (json.dumps(rec, separators=(",", ":")) + "\n").encode()


def orphan(data_dir, data: bytes, name="99999-0badc0de.jsonl"):
    """The journal of a process that died (its lock file is left behind, unheld)."""
    directory = data_dir / "journal"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    (directory / (name + ".lock")).touch()
    return path


def folded(box) -> list[str]:
    return sorted(row.client_id for row in box.claim_many("test", 1000, now=1e10))


def errors(logs) -> list[str]:
    return [r.getMessage() for r in logs.records if r.levelno >= logging.ERROR]


def test_records_carry_the_hook_time_and_a_sequence_that_grows():
    first, second = record(contact(1), "e", 5.0), record(contact(2), "e", 5.0)
    assert (first["at"], second["at"]) == (5.0, 5.0)
    assert second["seq"] > first["seq"]  # the tie-break for events with the same time
    third = json.loads(encode(contact(3), "e", 6.0))
    assert third["at"] == 6.0 and third["seq"] > second["seq"]


def test_a_line_is_valid_utf8_whatever_the_contact_holds():
    data = encode(Contact("1\ud800", "a@example.com", {"first_name": "Zo\udc00ë 😀"}), "e", 1.0)
    rec = json.loads(data.decode("utf-8"))
    assert rec["client_id"] == "1\ufffd" and rec["fields"]["first_name"] == "Zo\ufffdë 😀"
    assert data.endswith(b"}\n") and data.count(b"\n") == 1


def test_no_line_the_hook_writes_comes_near_a_fold_chunk():
    worst = {
        "id": "\x00" * 10**6,
        "email": "a@example.com",
        **{key: "😀" * 10**5 for key in ("first_name", "last_name", "phone", "company", "job_title")},
    }
    data = encode(contact_from_client(worst), "lead_converted from lead " + shown("\x00" * 10**6), 1.0)
    assert len(data) < 4096 < journal_lines.FOLD_CHUNK


def _short_once(monkeypatch, jr):
    """os.write that writes half of the journal's next line and reports it (a full disk)."""
    real, done = os.write, []
    ours = os.stat(jr.path)

    def write(fd, data):
        if not done and os.path.samestat(os.fstat(fd), ours):
            done.append(fd)
            return real(fd, data[: len(data) // 2])
        return real(fd, data)

    monkeypatch.setattr(journal.os, "write", write)


def test_a_short_write_is_cut_off_and_the_next_record_is_kept(tmp_path, monkeypatch, logs, plain_journal):
    jr, box = Journal(tmp_path), Outbox(tmp_path)
    jr.append(encode(contact(1), "e", 1.0))
    _short_once(monkeypatch, jr)
    with pytest.raises(OSError):
        jr.append(encode(contact(2), "e", 2.0))  # the hook keeps this one in memory
    jr.append(encode(contact(3), "e", 3.0))
    jr.fold_into(box)
    assert folded(box) == ["1", "3"]
    assert errors(logs) == []  # nothing torn is left to report
    assert not jr.backlog(box.journal_offset)


def test_a_tail_that_cannot_be_cut_becomes_a_line_of_its_own(tmp_path, monkeypatch, logs, plain_journal):
    jr, box = Journal(tmp_path), Outbox(tmp_path)
    jr.append(encode(contact(1), "e", 1.0))
    _short_once(monkeypatch, jr)

    def no_truncate(fd, size):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal.os, "ftruncate", no_truncate)
    with pytest.raises(OSError):
        jr.append(encode(contact(2), "e", 2.0))
    jr.fold_into(box)
    # the tail left behind is no backlog: the worker must not go round every 20 ms for it
    assert box.pending_count() == 1 and not jr.backlog(box.journal_offset)
    jr.append(encode(contact(3), "e", 3.0))
    jr.append(encode(contact(4), "e", 4.0))
    jr.fold_into(box)
    assert folded(box) == ["1", "3", "4"]
    (error,) = errors(logs)
    assert "cut short by a write that failed" in error and "kept that event in memory" in error
    assert not jr.backlog(box.journal_offset)


def test_a_torn_tail_in_an_older_journal_does_not_eat_the_next_record(tmp_path, logs):
    orphan(tmp_path, line(1) + line(2)[:40] + line(3) + line(4))
    box = Outbox(tmp_path)
    Journal(tmp_path).fold_into(box)
    assert folded(box) == ["1", "3", "4"]
    (error,) = errors(logs)
    assert "ran into the next one (which is kept)" in error


def test_a_torn_last_line_of_a_dead_process_is_reported_not_waited_for(tmp_path, logs):
    path = orphan(tmp_path, line(1) + line(2)[:-20])
    box = Outbox(tmp_path)
    Journal(tmp_path).fold_into(box)
    assert folded(box) == ["1"]
    (error,) = errors(logs)
    assert "client 2" in error and "cut short" in error
    assert not path.exists()


def test_poison_lines_are_skipped_with_one_error_naming_the_client_and_hold_nothing_back(tmp_path, logs):
    data = (
        line(1)
        + line(2, email="a\ud800@example.com", client_id="poison\nERROR forged")  # escaped by json.dumps
        + line(3, client_id="3\udfff", fields={"first_name": "A\ud800", "secret_key": "x"})
        + b"not json at all\n"
        + b"[1, 2]\n"
        + line(4, at="yesterday")
        + line(5)
    )
    path = orphan(tmp_path, data)
    box = Outbox(tmp_path)
    Journal(tmp_path).fold_into(box)  # an older version raised UnicodeEncodeError here, forever
    rows = {row.client_id: row for row in box.claim_many("test", 1000, now=1e10)}
    assert sorted(rows) == ["1", "3\ufffd", "5"]
    assert rows["3\ufffd"].contact["fields"] == {"first_name": "A\ufffd"}  # repaired; unknown keys never sent
    found = errors(logs)
    assert len(found) == 4
    assert sum("client 'poison\\nERROR forged'" in e and "not a valid address" in e for e in found) == 1
    assert sum("client 4" in e and "no time" in e for e in found) == 1
    assert all("\n" not in e for e in found)
    assert not path.exists()


def test_an_overlong_line_in_an_older_journal_is_skipped_and_the_rest_is_folded(tmp_path, logs):
    huge = line(2, client_id="x" * 300_000)
    assert len(huge) > journal_lines.FOLD_CHUNK
    path = orphan(tmp_path, line(1) + huge + line(3) + line(4))
    box = Outbox(tmp_path)
    Journal(tmp_path).fold_into(box)
    assert folded(box) == ["1", "3", "4"]
    (error,) = errors(logs)
    assert "'xxxx" in error and f"{len(huge)} bytes long" in error
    assert len(error) < 600
    assert not path.exists()


def test_an_overlong_line_at_the_end_of_a_dead_journal_is_skipped(tmp_path, logs):
    orphan(tmp_path, line(1) + line(2, client_id="y" * 300_000)[:-1])  # no newline: cut short too
    box = Outbox(tmp_path)
    Journal(tmp_path).fold_into(box)
    assert folded(box) == ["1"]
    assert len(errors(logs)) == 1


def test_orphans_are_adopted_and_live_journals_left_alone(tmp_path):
    dead = orphan(tmp_path, line(1) + line(2))
    live = orphan(tmp_path, line(3), name="88888-11111111.jsonl")
    held = FileLock(str(live) + ".lock", timeout=0, thread_local=False)
    held.acquire()  # its process is alive: it folds its own journal
    try:
        box = Outbox(tmp_path)
        Journal(tmp_path).fold_into(box)
        assert folded(box) == ["1", "2"]
        assert not dead.exists() and not (tmp_path / "journal" / (dead.name + ".lock")).exists()
        assert live.exists()
    finally:
        held.release()


def test_status_copes_with_poison_and_overlong_lines(write_config, capsys, logs):
    write_config()
    poison, huge = line(2, email="b\udc80@example.com"), line(3, client_id="z" * 300_000)
    orphan(dispatch.runtime().journal.directory.parent, line(1) + poison + huge + line(4))
    assert cli.main(["status"]) == 0
    assert re.search(r"pending\s+2\n", capsys.readouterr().out)
    assert len(errors(logs)) == 2


# --- sender = "process": the host hands full files over; the sender process folds them all ---


def test_a_host_that_hands_off_closes_a_full_file_and_frees_its_lock(isolated, monkeypatch):
    from remixcrm_plugin_ctct.store.journal_watch import JournalWatcher

    monkeypatch.setattr(journal, "ROTATE_AT", 300)
    data = isolated / "data"
    host = Journal(data)
    host.hand_off = True
    sizes = []
    for n in range(6):
        host.append(encode(contact(n), "e", 1000.0 + n))
        sizes.append(host.path)
    handed = {p for p in sizes if p is not None and p != host.path}
    assert handed, "no file was handed over"
    for path in handed:  # closed and unlocked: anyone may take it, as a dead process's
        lock = FileLock(str(path) + ".lock", timeout=0)
        lock.acquire()
        lock.release()
    live = host.path
    assert live is None or live.exists()

    box = Outbox(data)
    watcher = JournalWatcher(data)
    assert watcher.grown()
    assert watcher.fold_into(box) == 6
    assert folded(box) == [str(n) for n in range(6)]
    assert all(not p.exists() for p in handed)  # adopted and removed
    assert not watcher.grown() and watcher.fold_into(box) == 0  # each line exactly once
    host.append(encode(contact(6), "e", 1006.0))  # the host goes on writing its live file
    assert watcher.grown() and watcher.fold_into(box) == 1
    assert folded(box) == ["6"]  # only the new line became a row (the others are leased by the first look)


def test_the_sender_process_folds_a_live_journal_but_leaves_it_to_its_writer(isolated):
    from remixcrm_plugin_ctct.store.journal_watch import JournalWatcher

    data = isolated / "data"
    host = Journal(data)
    host.append(encode(contact(1), "e", 1.0))
    host.append(b'{"email":"c2@example.com","client_id":"2"')  # a line still being written
    box = Outbox(data)
    watcher = JournalWatcher(data)
    assert watcher.fold_into(box) == 1
    assert host.path.exists()  # its process is alive: never adopted, never removed
    # the unfinished line waits, but is no backlog: only its writer's next write can end it
    assert not watcher.backlog(box.journal_offset) and not watcher.grown()
    host.append(b"\n" + encode(contact(3), "e", 3.0))  # as the hook does after a tail it could not cut
    assert watcher.backlog(box.journal_offset) and watcher.grown()
    assert watcher.fold_into(box) == 1


def test_a_live_journal_folded_by_the_host_and_the_sender_process_at_once_is_folded_once(tmp_path):
    """After a switch from sender = "process" to "thread" the host folds its own live journal while
    the sender process (alive up to 300 s idle, or for good as a service) still folds it (found by
    review: 210-481 of 2,000 events twice in a stress run; a duplicate of a delivered row is sent
    again). The offset is compared and set in the fold's transaction."""
    host, ours = Journal(tmp_path), Outbox(tmp_path)  # hand_off False: sender = "thread" again
    sender, theirs = JournalWatcher(tmp_path), Outbox(tmp_path)
    for n in range(3):
        host.append(encode(contact(n), "e", 1.0 + n))
    taken: list[str] = []
    real_ours, real_theirs = ours.add_records, theirs.add_records

    def their_add(records, name=None, offset=0, start=None):
        done = real_theirs(records, name, offset, start)
        taken.extend(r["client_id"] for r in records if done)
        return done

    def our_add(records, name=None, offset=0, start=None):
        if records and not taken:  # we read our chunk; before we commit, the sender process looks (every 0.1 s)
            sender.fold_into(theirs)
        done = real_ours(records, name, offset, start)
        taken.extend(r["client_id"] for r in records if done)
        return done

    theirs.add_records, ours.add_records = their_add, our_add
    host.fold_into(ours)
    assert sorted(taken) == ["0", "1", "2"], f"folded twice: {sorted(taken)}"
