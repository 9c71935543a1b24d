"""The journal written through a map (store/journal_map.py): only where the file system keeps the
reserved blocks, never a NUL taken for a line, nothing lost when the map fills, a writer dies
halfway, or the process forks."""

import errno
import os

import pytest
from filelock import FileLock
from test_journal import contact, errors, folded, line, orphan

from remixcrm_plugin_ctct.store import journal, journal_files, journal_map
from remixcrm_plugin_ctct.store.journal import Journal, encode
from remixcrm_plugin_ctct.store.journal_watch import JournalWatcher
from remixcrm_plugin_ctct.store.outbox import Outbox

read_mount_table = journal_map.fs_type  # the real one (the fixture below stands in for it)


@pytest.fixture(autouse=True)
def mapped_here(tmp_path, monkeypatch):
    """These tests are about the map: the temp dir's file system counts as one that reserves."""
    monkeypatch.delenv(journal_map.ENV, raising=False)
    monkeypatch.setattr(journal_map, "fs_type", lambda device, mountinfo=None: "ext4")
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


def test_a_full_map_with_our_own_threads_folding_is_cut_and_written_on_with_os_write(tmp_path, monkeypatch):
    """sender = "thread": never handed over (a fold of it may be under way: let go of, it would be
    adopted and folded twice); cut to its lines, then plain writes until the fold rotates it."""
    monkeypatch.setattr(journal, "MAPPED", 200)  # two lines
    jr, box = Journal(tmp_path), Outbox(tmp_path)
    lines = [encode(contact(n), "e", 1.0 + n) for n in range(10)]
    for data in lines:
        jr.append(data)
    assert jr.path.read_bytes() == b"".join(lines)  # one file, no NULs left in it
    assert jr.fold_into(box) == 10 and jr.fold_into(box) == 0
    assert folded(box) == sorted(str(n) for n in range(10))


def test_a_full_map_when_the_sender_process_folds_is_handed_over_and_each_line_folded_once(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "MAPPED", 200)
    host, box, watcher = Journal(tmp_path), Outbox(tmp_path), JournalWatcher(tmp_path)
    host.hand_off = True
    paths = set()
    for n in range(10):
        host.append(encode(contact(n), "e", 1.0 + n))
        paths.add(host.path)
    assert len(paths) > 3
    assert watcher.fold_into(box) == 10 and watcher.fold_into(box) == 0
    assert folded(box) == sorted(str(n) for n in range(10))


def test_a_tail_that_cannot_be_cut_is_cut_before_the_next_plain_write(tmp_path, monkeypatch, logs):
    monkeypatch.setattr(journal, "MAPPED", 200)
    jr, box = Journal(tmp_path), Outbox(tmp_path)
    jr.append(encode(contact(0), "e", 1.0))
    jr.append(encode(contact(1), "e", 2.0))
    real = journal_map.os.ftruncate

    def cannot(fd, size):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(journal_map.os, "ftruncate", cannot)
    monkeypatch.setattr(journal.os, "ftruncate", cannot)
    with pytest.raises(OSError):  # the hook keeps this one in memory: never written behind the NULs
        jr.append(encode(contact(2), "e", 3.0))
    monkeypatch.setattr(journal.os, "ftruncate", real)
    jr.append(encode(contact(3), "e", 4.0))
    assert b"\0" not in jr.path.read_bytes()
    assert jr.fold_into(box) == 3 and folded(box) == ["0", "1", "3"]


def test_lines_after_a_hand_over_during_our_own_fold_are_not_stranded(tmp_path, monkeypatch):
    """A hook fills the map while our own fold runs (found by review: a hand-over then left the
    new file's lines unfolded, backlog() True, the worker coming back every 20 ms)."""
    monkeypatch.setattr(journal, "MAPPED", 400)  # four lines per file
    monkeypatch.setattr(journal, "ADOPT_EVERY", 1e9)  # no orphan scan of our own
    jr, box = Journal(tmp_path), Outbox(tmp_path)
    for n in range(4):
        jr.append(encode(contact(n), "e", 1.0 + n))  # the map nearly full
    real, done = journal_files.fold_file, []

    def fold_file(outbox, path, final=False):
        if not done:  # meanwhile a hook thread fills the map: hand-over, a new file with one line
            done.append(1)
            jr.append(encode(contact(4), "e", 5.0))
        return real(outbox, path, final)

    monkeypatch.setattr(journal_files, "fold_file", fold_file)
    for _ in range(3):
        jr.fold_into(box)
    assert not jr.backlog(box.journal_offset), "the new file's line is stranded"


def test_a_file_handed_over_mid_fold_is_not_folded_twice(tmp_path, monkeypatch):
    """Found by review: a hand-over freed the file's lock while our own fold of it was under way, and
    a sibling worker's orphan scan adopted and folded it too (our late commit left a stale offset)."""
    monkeypatch.setattr(journal, "MAPPED", 400)
    monkeypatch.setattr(journal, "ADOPT_EVERY", 1e9)
    jr, box, sibling = Journal(tmp_path), Outbox(tmp_path), Outbox(tmp_path)
    jr.append(encode(contact(0), "e", 1.0))
    old = jr.path
    taken: list[str] = []
    ours, theirs = box.add_records, sibling.add_records

    def sibling_add(records, name=None, offset=0, start=None):
        taken.extend(r["client_id"] for r in records)
        return theirs(records, name, offset, start)

    def our_add(records, name=None, offset=0, start=None):
        if records and not taken:  # we read our chunk; before we commit ...
            for n in range(1, 6):
                jr.append(encode(contact(n), "e", 1.0 + n))  # the hook fills the map: hand-over
            journal_files.adopt_dead(tmp_path / "journal", sibling)  # a sibling worker's scan
        taken.extend(r["client_id"] for r in records)
        return ours(records, name, offset, start)

    monkeypatch.setattr(sibling, "add_records", sibling_add)
    monkeypatch.setattr(box, "add_records", our_add)
    jr.fold_into(box)
    assert taken.count("0") == 1, f"folded twice: {taken}"
    if not old.exists():
        assert box.get_meta(f"journal:{old.name}") is None, "a stale offset of a deleted journal"


def test_no_map_where_the_file_system_does_not_keep_reserved_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_map, "fs_type", lambda device, mountinfo=None: "btrfs")
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
28 22 8:1 /var /mnt/var rw - ext4 /dev/vda rw
29 22 0:30 / /odd rw - ext4 /dev/vde rw
30 22 0:30 / /odd2 rw - fuse.sshfs host: rw
"""


@pytest.mark.parametrize(
    "major, minor, kind",
    [
        (8, 1, "ext4"),  # mounted twice (a bind mount): one file system
        (0, 23, "xfs"),  # whatever is mounted over which path: the file's own device decides
        (0, 22, "tmpfs"),
        (0, 99, None),  # no mount names it (a btrfs subvolume's own device, say): no map
        (0, 30, None),  # two types for one device: unsure, no map
    ],
)
def test_the_file_system_is_told_by_the_files_own_device(tmp_path, major, minor, kind):
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTINFO)
    assert read_mount_table(os.makedev(major, minor), mountinfo=str(table)) == kind


def test_an_unreadable_mount_table_means_no_map(tmp_path):
    device = os.stat(tmp_path).st_dev
    assert read_mount_table(device, mountinfo=str(tmp_path / "missing")) is None
    assert read_mount_table(device, mountinfo="/dev/null") is None


@pytest.mark.skipif(not os.path.exists(journal_map.MOUNTINFO), reason="no /proc/self/mountinfo (not Linux)")
def test_this_machines_own_mount_table_is_read():
    assert read_mount_table(os.stat("/proc").st_dev) == "proc"
