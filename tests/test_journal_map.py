"""The journal written through a map (store/journal_map.py): only where the file system keeps the
reserved blocks, never a NUL taken for a line, nothing lost when the map fills, a writer dies
halfway, or the process forks."""

import errno
import os
from pathlib import Path

import pytest
from filelock import FileLock
from test_journal import contact, errors, folded, line, orphan

from remixcrm_plugin_ctct.store import journal, journal_map
from remixcrm_plugin_ctct.store.journal import Journal, encode
from remixcrm_plugin_ctct.store.journal_watch import JournalWatcher
from remixcrm_plugin_ctct.store.outbox import Outbox

read_mount_table = journal_map.fs_type  # the real one (the fixture below stands in for it)


@pytest.fixture(autouse=True)
def mapped_here(tmp_path, monkeypatch):
    """These tests are about the map: the temp dir's file system counts as one that reserves."""
    monkeypatch.delenv(journal_map.ENV, raising=False)
    monkeypatch.setattr(journal_map, "fs_type", lambda directory, mountinfo=None: "ext4")
    monkeypatch.setattr(journal_map, "_kinds", {})


def test_a_live_mapped_journal_is_reserved_whole_and_its_lines_fold(tmp_path):
    jr, box = Journal(tmp_path), Outbox(tmp_path)
    lines = [encode(contact(n), "e", 1000.0 + n) for n in range(3)]
    for data in lines:
        jr.append(data)
    assert os.path.getsize(jr.path) == journal.MAPPED  # its capacity: the data ends at the first NUL
    assert jr.path.read_bytes().rstrip(b"\0") == b"".join(lines)
    assert jr.backlog(box.journal_offset)
    assert jr.fold_into(box) == 3 and folded(box) == ["0", "1", "2"]
    assert not jr.backlog(box.journal_offset) and jr.fold_into(box) == 0  # the NULs are no line


def test_the_sender_process_takes_whole_lines_of_a_mapped_file_and_never_spins_on_its_nuls(tmp_path):
    host, box, watcher = Journal(tmp_path), Outbox(tmp_path), JournalWatcher(tmp_path)
    host.append(encode(contact(1), "e", 1.0))
    assert watcher.grown() and watcher.fold_into(box) == 1
    assert not watcher.grown() and not watcher.backlog(box.journal_offset)  # idle: nothing to go round for
    assert watcher.fold_into(box) == 0
    host.append(encode(contact(2), "e", 2.0))
    assert watcher.grown() and watcher.fold_into(box) == 1
    assert folded(box) == ["1", "2"]
    assert host.path.exists()  # alive: never adopted


def test_a_live_file_is_read_only_up_to_a_nul_even_inside_a_line(tmp_path):
    """On a weak memory model a reader may see a line's newline before its body: a NUL inside a
    live file's line means "not written yet", never "damaged"."""
    path = orphan(tmp_path, line(1) + b"\0" * 30 + line(2)[30:] + b"\0" * 100)
    held = FileLock(str(path) + ".lock", timeout=0, thread_local=False)
    held.acquire()  # its writer is alive
    try:
        box, watcher = Outbox(tmp_path), JournalWatcher(tmp_path)
        assert watcher.fold_into(box) == 1 and folded(box) == ["1"]
        with open(path, "r+b") as f:  # the body lands
            f.seek(len(line(1)))
            f.write(line(2)[:30])
        assert watcher.grown() and watcher.fold_into(box) == 1 and folded(box) == ["2"]
    finally:
        held.release()


def test_a_writer_killed_while_copying_a_line_leaves_one_error_and_nothing_else_lost(tmp_path, logs):
    path = orphan(tmp_path, line(1) + line(2)[:40] + b"\0" * 5000)
    box = Outbox(tmp_path)
    Journal(tmp_path).fold_into(box)
    assert folded(box) == ["1"]
    (error,) = errors(logs)
    assert "client 2" in error and "died while the hook was writing it" in error
    assert not path.exists()


def test_lines_after_a_run_of_nuls_in_a_dead_journal_are_kept(tmp_path, logs):
    orphan(tmp_path, line(1) + b"\0" * 70_000 + line(2) + b"\0" * 10 + line(3) + b"\0" * 200)
    box = Outbox(tmp_path)
    Journal(tmp_path).fold_into(box)
    assert folded(box) == ["1", "2", "3"]
    assert errors(logs) == []


def test_a_file_handed_over_or_rotated_holds_its_lines_only(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "ROTATE_AT", 200)
    host = Journal(tmp_path)
    host.hand_off = True
    host.append(encode(contact(0), "e", 1.0))
    first = host.path
    for n in range(1, 4):
        host.append(encode(contact(n), "e", 1.0 + n))
    assert first is not None and first != host.path
    assert b"\0" not in first.read_bytes() and first.read_bytes().endswith(b"\n")

    own, box = Journal(tmp_path / "own"), Outbox(tmp_path / "own")
    own.append(encode(contact(9), "e", 9.0))
    old = own.path
    monkeypatch.setattr(journal, "ROTATE_AT", 1)
    assert own.fold_into(box) == 1 and own.path != old  # rotated: the old file was folded and removed
    assert not old.exists() and folded(box) == ["9"]


def test_a_full_map_is_handed_over_and_every_line_is_folded_once(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "MAPPED", 200)  # two lines per file
    monkeypatch.setattr(journal, "ADOPT_EVERY", 0.0)
    jr, box = Journal(tmp_path), Outbox(tmp_path)
    paths = set()
    for n in range(10):
        jr.append(encode(contact(n), "e", 1.0 + n))
        paths.add(jr.path)
    assert len(paths) > 3
    assert jr.fold_into(box) == 10
    assert jr.fold_into(box) == 0
    assert folded(box) == sorted(str(n) for n in range(10))
    assert list((tmp_path / "journal").glob("*.jsonl")) == [jr.path]


def test_no_map_where_the_file_system_does_not_keep_reserved_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_map, "fs_type", lambda directory, mountinfo=None: "btrfs")
    jr = Journal(tmp_path)
    data = encode(contact(1), "e", 1.0)
    jr.append(data)
    assert jr.path.read_bytes() == data  # the plain write: no reservation, no NULs


def test_no_map_when_the_admin_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(journal_map.ENV, "0")
    jr = Journal(tmp_path)
    jr.append(encode(contact(1), "e", 1.0))
    assert os.path.getsize(jr.path) < 1000


def test_a_reservation_that_fails_falls_back_to_the_plain_write(tmp_path, monkeypatch):
    def full(fd, offset, length):
        os.ftruncate(fd, 4096)  # it got part of the way
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_map.os, "posix_fallocate", full)
    jr, box = Journal(tmp_path), Outbox(tmp_path)
    data = encode(contact(1), "e", 1.0)
    jr.append(data)
    assert jr.path.read_bytes() == data  # no NULs before the line
    assert jr.fold_into(box) == 1


def test_a_forked_child_never_writes_into_the_parents_map(tmp_path):
    jr = Journal(tmp_path)
    jr.append(encode(contact(1), "e", 1.0))
    parent_file = jr.path
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            jr.append(encode(contact(2), "e", 2.0))
            os._exit(0 if jr.path != parent_file else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    jr.append(encode(contact(3), "e", 3.0))
    assert parent_file.read_bytes().rstrip(b"\0").count(b"\n") == 2  # 1 and 3: never the child's
    (child_file,) = [p for p in (tmp_path / "journal").glob("*.jsonl") if p != parent_file]
    assert child_file.read_bytes().rstrip(b"\0").count(b"\n") == 1
    box = Outbox(tmp_path)
    assert jr.fold_into(box) == 3 and folded(box) == ["1", "2", "3"]  # the child's file adopted: it died


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:21 / /srv rw shared:5 - btrfs /dev/vdb rw
26 25 0:22 / /srv/my\\040data rw - tmpfs tmpfs rw
27 22 0:23 / /srv rw - xfs /dev/vdc rw
"""


@pytest.mark.parametrize(
    "directory, kind",
    [
        ("/var/lib/remixcrm", "ext4"),
        ("/srv/app", "xfs"),  # the later mount on /srv hides the earlier one
        ("/srv/my data/ctct", "tmpfs"),
        ("/srvx", "ext4"),  # a prefix of the name is not a parent
    ],
)
def test_the_file_system_is_told_from_the_mount_table(tmp_path, directory, kind):
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTINFO)
    assert read_mount_table(directory, mountinfo=str(table)) == kind


def test_an_unreadable_mount_table_means_no_map(tmp_path):
    assert read_mount_table(str(tmp_path), mountinfo=str(tmp_path / "missing")) is None
    assert read_mount_table(str(Path("/")), mountinfo="/dev/null") is None
