"""The hook's write without a system call: the first part of a journal file, mapped into memory.

Why: inside a busy prefork worker, where the hook runs with its caches cold, a ``write`` of one
line costs ~20 µs (the kernel's entry, the page cache, the inode's times): half of all the plugin
adds to a request (``bench/prefork.py``). A copy into a mapped page costs ~3 µs, and it lands in
the same page cache ``write`` would have put it in: ``kill -9`` of the process loses nothing, and
every reader's ``read`` of the file sees it.

Why only on some file systems: a store into a mapped page has no error to return. When the file
system cannot back the page (a full disk under a copy-on-write file system such as btrfs or ZFS,
or a sparse file), the kernel kills the whole process with SIGBUS: the host, not just the event.
So the file's blocks are reserved first (``posix_fallocate``: it fails cleanly, ENOSPC, and the
plain ``write`` is used instead), and a map is only made where that reservation is a promise:
ext2/3/4, XFS and tmpfs, told by the file's own device in ``/proc/self/mountinfo``. Anywhere else (other file systems,
overlayfs, other systems), when the reservation fails, or with ``REMIXCRM_CTCT_JOURNAL_MAP=0``,
the journal is written with ``write``, as before.

What readers must know (:mod:`.journal_files` does it): while the writer lives, the file's size is
its capacity and its data ends at the first NUL byte (a JSON line never holds one). The writer
copies a line's body, then its newline: on x86 a reader that sees the newline sees the body; on a
weaker memory model it might see a NUL inside the line first, so a reader of a live file stops at
the first NUL and looks again later. When the writer closes the file (rotation, hand-over) it cuts
the unused tail off; a writer that was killed leaves it, and the fold of a dead file skips NULs.
"""

import mmap
import os

ENV = "REMIXCRM_CTCT_JOURNAL_MAP"  # "0": always the plain write (a file system we cannot see through)
RESERVING = frozenset({"ext2", "ext3", "ext4", "xfs", "tmpfs"})  # fallocate'd blocks are kept for the map
MOUNTINFO = "/proc/self/mountinfo"

_kinds: dict[int, str | None] = {}  # device -> its file system's type (the mount table is read once per device)


def enabled() -> bool:
    return os.environ.get(ENV, "").strip() != "0" and hasattr(os, "posix_fallocate")


def mappable(fd: int) -> bool:
    """The open file ``fd`` may be mapped: its file system keeps fallocate'd blocks."""
    if not enabled():
        return False
    device = os.fstat(fd).st_dev
    if device not in _kinds:
        _kinds[device] = fs_type(device)
    return _kinds[device] in RESERVING


def fs_type(device: int, mountinfo: str = MOUNTINFO) -> str | None:
    """The type of the file system on ``device`` (a ``st_dev``), from the mount table's
    ``major:minor`` column: the file's own device, whatever is mounted over which path; None
    when no mount names it (btrfs subvolumes, say) or the table cannot be read."""
    wanted = f"{os.major(device)}:{os.minor(device)}".encode()
    found = set()
    try:
        with open(mountinfo, "rb") as f:
            for raw in f:
                mine, _, theirs = raw.partition(b" - ")  # optional fields end at the separator
                if mine.split(b" ")[2] == wanted:
                    found.add(theirs.split(b" ")[0].decode("ascii", "replace"))
    except (OSError, IndexError):
        return None
    return found.pop() if len(found) == 1 else None  # bind mounts repeat one file system; two types: unsure


class MappedFile:
    """The first ``capacity`` bytes of an open journal file (opened for reading and writing),
    reserved on disk and mapped; :meth:`open` answers None where that is not safe."""

    def __init__(self, fd: int, capacity: int):
        os.posix_fallocate(fd, 0, capacity)  # every block now, or OSError (ENOSPC, EOPNOTSUPP)
        self.capacity = capacity
        self._map = mmap.mmap(fd, capacity)  # shared: the page cache's own pages

    @classmethod
    def open(cls, fd: int, capacity: int) -> "MappedFile | None":
        try:
            if not mappable(fd):
                return None
            return cls(fd, capacity)
        except (OSError, ValueError):  # no room, a file system that will not: the plain write
            try:
                os.ftruncate(fd, 0)  # a reservation that half happened must not leave NULs before the lines
            except OSError:
                pass
            return None

    def write(self, at: int, line: bytes) -> bool:
        """Put ``line`` (ending in a newline) at byte ``at``; False when it does not fit."""
        end = at + len(line)
        if end > self.capacity:
            return False
        mapped = self._map
        mapped[at : end - 1] = line[:-1]
        mapped[end - 1] = line[-1]  # the newline last: a reader takes only lines it sees the end of
        return True

    def close(self, fd: int, size: int) -> None:
        """Unmap, and cut the file to its ``size`` bytes of lines (a finished file has no NUL tail).
        Raises OSError when the cut fails (the readers still skip the NULs)."""
        self._map.close()
        os.ftruncate(fd, size)
