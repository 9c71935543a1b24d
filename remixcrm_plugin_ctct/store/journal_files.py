"""One journal file at a time: fold it into a sink from the offset the sink holds, and adopt the
files of writers that are gone.

Each process holds a lock on its own file (``<file>.lock``) for its whole life, taken before the
file exists; a file whose lock can be taken belongs to a process that died. Whoever takes that
lock — another process of the same data dir, the dead host restarted, or a live host on the same
machine (:mod:`.neighbours`) — is the only one folding the file: the offset it reached is stored
with each chunk in one transaction, under the dead host's key, so each line is folded exactly
once whoever folds it, and a folder that dies halfway leaves the rest to the next. The file is
deleted before its lock is let go: a process that takes the lock afterwards finds nothing.
"""

import time
from pathlib import Path
from typing import Any, BinaryIO

from .flock import Busy, HeldLock
from .interfaces import JournalSink
from .journal_lines import BY_HAND, CUT_SHORT, DIED_WRITING, FOLD_CHUNK, KEPT, damaged, fold_block, skip_long_line

PROBE = 4096  # bytes read first to tell whether a file holds a new line


def owner_lock(path: Path) -> HeldLock:
    """The lock a journal file's writer holds while it lives (``acquire`` raises Busy if held)."""
    return HeldLock(str(path) + ".lock")


def fold_file(outbox: JournalSink, path: Path, final: bool = False) -> int:
    """Fold ``path`` from where ``outbox`` says its writer stopped, a chunk per transaction (memory
    stays small however long the file grew while sending was paused). ``final``: nobody writes
    the file any more (rotated, or its process died): a last line without its newline was cut
    short and is reported, not waited for. A NUL byte ends the data of a mapped file
    (:mod:`.journal_map`): there a live file's fold stops for now, a finished one's skips the NULs."""
    count = 0
    while True:
        start = outbox.journal_offset(path.name)
        try:
            with open(path, "rb") as f:
                f.seek(start)
                chunk = f.read(FOLD_CHUNK)
                gap = chunk.find(b"\0")
                resume = _past_nuls(f, start + gap) if final and gap >= 0 else None
        except FileNotFoundError:
            return count
        if gap >= 0:
            chunk = chunk[:gap]
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next fold
        if end == 0 and gap < 0 and len(chunk) == FOLD_CHUNK:  # one line longer than a chunk: never written by our hook
            after = skip_long_line(path, start, chunk, final)
            if after is not None:
                outbox.add_records([], path.name, after, start)
                continue
            return count
        if end:
            count += fold_block(outbox, path, start, chunk[:end])
        if gap < 0 and len(chunk) == FOLD_CHUNK:
            # a backlog: between slices, let a host thread that waits for the GIL have it (with
            # sender threads in the host, a fold of many slices would otherwise hold it for
            # switch intervals of 5 ms each)
            time.sleep(0)
            continue
        if final and end < len(chunk):
            # before NULs: a mapped file's writer died copying the line, its hook never returned
            why, fate = (DIED_WRITING, BY_HAND) if gap >= 0 else (CUT_SHORT, KEPT)
            damaged(path, start + end, chunk[end:], why, fate)
        if resume is None:
            return count
        outbox.add_records([], path.name, resume, start + end)  # lines after a run of NULs (a power cut's hole)


def _past_nuls(f: BinaryIO, at: int) -> int | None:
    """The offset of the first byte after the run of NULs at ``at``; None when they end the file."""
    f.seek(at)
    while chunk := f.read(FOLD_CHUNK):
        rest = chunk.lstrip(b"\0")
        if rest:
            return at + len(chunk) - len(rest)
        at += len(chunk)
    return None


def whole_line_after(path: Path, start: int, size: int) -> bool:
    """Bytes ``start``..``size`` of ``path`` hold a line to fold. A tail without its newline does
    not: it is a write that failed halfway (the hook's writes are whole lines), which only its
    writer's next write (or the writer's death, then adoption) settles — no reason for rounds
    until then; nor do the NULs that end a mapped file's data. Reads a few KiB, at most one chunk
    (a longer line is the fold's to report)."""
    if size <= start:
        return False
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(min(size - start, PROBE))  # a mapped file is looked at 10 times a second
            if b"\0" not in data and b"\n" not in data and size - start > PROBE:
                data += f.read(min(size - start, FOLD_CHUNK) - PROBE)
    except FileNotFoundError:
        return False
    except OSError:  # cannot tell: the fold will look, and say what is wrong
        return True
    gap = data.find(b"\0")
    if gap >= 0:
        return b"\n" in data[:gap]
    return b"\n" in data or size - start > FOLD_CHUNK


def forget(outbox: JournalSink, path: Path, lock: Any) -> None:
    """``path`` is folded to its end: delete it (before letting its lock go) and its offset."""
    path.unlink(missing_ok=True)
    outbox.forget_journal(path.name)
    if lock is not None:
        lock.release()
        Path(str(path) + ".lock").unlink(missing_ok=True)


def adopt_dead(directory: Path, outbox: JournalSink, skip: Path | None = None) -> int:
    """Fold and delete every journal file in ``directory`` whose writer is gone (its lock is
    free), with ``outbox``'s offsets: those of the host that wrote them. Files whose writer
    lives are not read. Returns how many events were folded."""
    count = 0
    for path in directory.glob("*.jsonl") if directory.is_dir() else ():
        if path == skip:
            continue
        lock = owner_lock(path)
        try:
            lock.acquire()
        except Busy:
            continue  # its process is alive and folds it itself
        count += fold_file(outbox, path, final=True)
        forget(outbox, path, lock)
    return count
