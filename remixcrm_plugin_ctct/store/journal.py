"""The outbox's front door: a per-process append-only journal, so the hook's durable write is
one ``os.write`` (a few microseconds) instead of a SQLite transaction (tens, with a long tail).

Why this is as safe as a SQLite commit in WAL mode with ``synchronous=NORMAL``: once ``write``
returns, the bytes are in the operating system's page cache, so ``kill -9`` of RemixCRM loses
nothing (a power cut can lose the last moments, as with SQLite). The sender moves journal lines
into the SQLite outbox in batches; the offset it reached is stored *in the same transaction*,
so every line is taken exactly once. Each process writes only its own file (no interleaving
between processes) and holds a lock on it while alive; a file whose lock is free belongs to a
process that died, and any other process takes it over and folds it into the outbox.

A line is one JSON object and its ``\n``; a JSON object is self-delimiting, so a line cut short
(a write that failed halfway, disk full) never parses as a record. The hook cuts such a tail off
before its next write (or, if it cannot, ends it with a ``\n`` so it stays a line of its own),
and the fold skips a line it cannot use with one ERROR and goes on: one bad line never holds
back the lines after it. The hook bounds every field (:mod:`.payload`), so a line stays a few
KiB at most; the fold still copes with longer ones from older versions.
"""

import itertools
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from pathlib import Path

from filelock import FileLock, Timeout

from .. import forksafe, payload

log = logging.getLogger("remixcrm_plugin_ctct")

ROTATE_AT = 1 << 20  # bytes: start a new file once this much has been folded into the outbox
FOLD_CHUNK = 256 << 10  # bytes read and folded per transaction
ADOPT_EVERY = 10.0  # seconds between looks for journals of processes that died
EVENT_MAX = 1024  # "lead_converted from lead <id as payload.shown gives it: at most 80 characters, escaped>"

# The tie-break for events of one process with the same ``at``. One counter per process: a
# forked child goes on counting from the parent's value, which keeps its own events in order
# (events of different processes with equal ``at`` have no order to keep), so no reset is needed.
_seq = itertools.count(1)
_RECORD_START = b'{"email":'  # every record starts so; inside a JSON string a '"' is always escaped
_CLIENT_ID = re.compile(rb'"client_id":(?:"((?:[^"\\]|\\.){1,256})|(-?\d{1,256}))')
_BY_HAND = "that event is not sent: add the client to the list in Constant Contact by hand if they should be there"
_CUT_SHORT = "the last record was cut short by a write that failed (disk full?)"
_KEPT = "the hook was told the write failed and kept that event in memory"


def record(contact, event: str, now: float) -> dict:
    """One event as the journal and the outbox know it. ``at`` (wall clock at hook time) and
    ``seq`` order a client's events across processes, whenever each journal gets folded."""
    found = {"email": contact.email, "client_id": contact.client_id, "event": event, "fields": contact.fields,
             "at": now, "seq": next(_seq)}
    if contact.email_opt_in is not None:
        found["email_opt_in"] = contact.email_opt_in
    return found


def encode(contact, event: str, now: float) -> bytes:
    """One journal line: valid UTF-8 whatever the strings hold (payload already replaced lone
    surrogates; this is the last guard, since a line that cannot be encoded could not be kept)."""
    text = json.dumps(record(contact, event, now), ensure_ascii=False, separators=(",", ":")) + "\n"
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()


class Journal:
    def __init__(self, directory: Path):
        self.directory = Path(directory) / "journal"
        self._append_lock = threading.Lock()  # threads of this process take turns writing
        self._fold_lock = threading.Lock()  # one folder at a time
        self._fd: int | None = None
        self._path: Path | None = None
        self._owner_lock: FileLock | None = None
        self._pid: int | None = None
        self._size = 0  # bytes written to the current file (by this process: it is the only writer)
        self._torn = False  # a cut-short write could not be cut off: end it with a newline first
        self.last_append = 0.0  # monotonic time of the last hook write
        self._folded = 0  # bytes of the current file already folded (a cheap "anything new?")
        self._adopted_at = -ADOPT_EVERY
        forksafe.after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """The child writes its own file (append() opens one, as the pid differs); the parent's
        file, fd and owner lock stay the parent's: the lock object is parked, never released
        here (releasing it would unlock the parent's file, which is shared across fork)."""
        self._append_lock = threading.Lock()  # a parent thread may have held either at fork time
        self._fold_lock = threading.Lock()
        forksafe.keep(self._owner_lock)
        self._fd, self._path, self._owner_lock, self._pid, self._size, self._folded = None, None, None, None, 0, 0

    def __repr__(self) -> str:
        return f"Journal({str(self.directory)!r})"

    # --- the hook's path ---
    def append(self, data: bytes) -> None:
        """Durable once this returns. Raises OSError (disk full, read-only) for the caller's fallback."""
        with self._append_lock:
            if self._pid != os.getpid():
                self._open()
            if self._torn:
                data = b"\n" + data
            try:
                written = os.write(self._fd, data)
            except OSError:
                self._cut_tail()
                raise
            if written != len(data):  # a short write on a regular file means the disk is full
                self._cut_tail()
                raise OSError(28, "short write to the outbox journal")
            self._size += written
            self._torn = False
            self.last_append = time.monotonic()

    def _cut_tail(self) -> None:
        """After a failed or short write, cut off what part of the line it left: else the next
        record would be appended to it and both would be lost as one damaged line."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:  # cannot cut it: the next write starts with a newline, leaving it a line of its own
            try:
                self._size = os.fstat(self._fd).st_size
            except OSError:
                pass
            self._torn = True

    def _open(self) -> None:
        self.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the plugin's own dir: 0700 too
        self.directory.mkdir(mode=0o700, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        self._path = self.directory / name
        owner = FileLock(str(self._path) + ".lock", timeout=0, mode=0o600, thread_local=False)
        owner.acquire()  # held for this process's life: tells other processes we are alive
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._owner_lock, self._pid, self._size, self._folded, self._torn = owner, os.getpid(), 0, 0, False

    # --- the sender's path ---
    def backlog(self, folded_offset) -> bool:
        """True when this process wrote lines that are not in the outbox yet."""
        path = self._path
        return path is not None and self._pid == os.getpid() and self._size > folded_offset(path.name)

    def fold_into(self, outbox) -> int:
        """Move new lines (ours, and any dead process's) into the outbox. Returns how many."""
        if not self._fold_lock.acquire(blocking=False):
            return 0  # another worker of ours is at it
        try:
            count = 0
            if self._path is not None and self._pid == os.getpid() and self._size > self._folded:
                size = self._size  # only this process appends to its file
                count += self._fold_file(outbox, self._path)
                self._folded = size
                if self._size >= ROTATE_AT:
                    count += self._rotate(outbox)
            now = time.monotonic()
            if now - self._adopted_at >= ADOPT_EVERY:  # a directory scan: not on every fold
                self._adopted_at = now
                count += self._adopt_orphans(outbox)
            return count
        finally:
            self._fold_lock.release()

    def _fold_file(self, outbox, path: Path, final: bool = False) -> int:
        """Fold ``path`` from where the outbox says we stopped, a chunk per transaction (memory
        stays small however long the file grew while sending was paused). ``final``: nobody
        writes the file any more (rotated, or its process died): a last line without its
        newline was cut short and is reported, not waited for."""
        count = 0
        while True:
            start = outbox.journal_offset(path.name)
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    chunk = f.read(FOLD_CHUNK)
            except FileNotFoundError:
                return count
            end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next fold
            if end == 0:
                if len(chunk) == FOLD_CHUNK:  # one line longer than a chunk: never written by our hook
                    after = _skip_long_line(path, start, chunk, final)
                    if after is not None:
                        outbox.add_records([], path.name, after)
                        continue
                elif final and chunk:
                    _damaged(path, start, chunk, _CUT_SHORT, _KEPT)
                return count
            count += _add(outbox, path, start, chunk[:end])
            if len(chunk) < FOLD_CHUNK:
                if final and end < len(chunk):
                    _damaged(path, start + end, chunk[end:], _CUT_SHORT, _KEPT)
                return count

    def _rotate(self, outbox) -> int:
        with self._append_lock:  # no hook writes to the old file after this
            old_fd, old_path, old_owner = self._fd, self._path, self._owner_lock
            self._open()
        os.close(old_fd)
        count = self._fold_file(outbox, old_path, final=True)
        self._forget(outbox, old_path, old_owner)
        return count

    def _adopt_orphans(self, outbox) -> int:
        count = 0
        for path in self.directory.glob("*.jsonl") if self.directory.exists() else ():
            if path == self._path:
                continue
            lock = FileLock(str(path) + ".lock", timeout=0, mode=0o600, thread_local=False)
            try:
                lock.acquire()
            except Timeout:
                continue  # its process is alive and folds it itself
            count += self._fold_file(outbox, path, final=True)
            self._forget(outbox, path, lock)
        return count

    def _forget(self, outbox, path: Path, lock) -> None:
        path.unlink(missing_ok=True)
        outbox.forget_journal(path.name)
        if lock is not None:
            lock.release()
            Path(str(path) + ".lock").unlink(missing_ok=True)


def _add(outbox, path: Path, start: int, block: bytes) -> int:
    """Fold the whole lines of ``block`` (read at ``start``) in one transaction; a line that is
    not a usable record is skipped with one ERROR."""
    found = []  # (record, offset just after its line)
    at = start
    for line in block.split(b"\n")[:-1]:
        after = at + len(line) + 1
        if line.strip():
            rec = _usable(path, at, line)
            if rec is not None:
                found.append((rec, after))
        at = after
    try:
        outbox.add_records([rec for rec, _ in found], path.name, start + len(block))
        return len(found)
    except (ValueError, TypeError, KeyError, OverflowError):  # not a disk or lock problem: a record the outbox refused
        pass
    count = 0
    for rec, after in found:  # one at a time, so that the one it refuses does not hold back the others
        try:
            outbox.add_records([rec], path.name, after)
            count += 1
        except (ValueError, TypeError, KeyError, OverflowError) as e:
            log.error("outbox journal %s: the outbox refused the event of client %s (%s); %s",
                      path.name, payload.shown(rec.get("client_id")), type(e).__name__, _BY_HAND)
    outbox.add_records([], path.name, start + len(block))
    return count


def _usable(path: Path, at: int, line: bytes) -> dict | None:
    """The record on ``line``, bounded and valid UTF-8 as the hook writes it; None (after one
    ERROR) when there is none."""
    try:
        rec = json.loads(line)
    except ValueError:  # also UnicodeDecodeError
        # an older version appended the next record to a line cut short by a failed write: keep the record
        i = line.rfind(_RECORD_START, 1)
        try:
            rec = json.loads(line[i:]) if i > 0 else None
        except ValueError:
            rec = None
        if rec is None:
            if line.startswith(_RECORD_START) and not line.rstrip().endswith(b"}"):
                _damaged(path, at, line, "a record was cut short by a write that failed (disk full?)", _KEPT)
            else:
                _damaged(path, at, line, "the line is not a record (written by something else?)")
            return None
        _damaged(path, at, line[:i], "a record cut short by a failed write ran into the next one (which is kept)",
                 _KEPT)
    why = None
    if not isinstance(rec, dict):
        why = "the line is not a record"
    else:
        try:
            rec, why = _bounded(rec)
        except Exception as e:  # whatever a foreign line holds, it must not stop the fold
            why = f"the record cannot be read ({type(e).__name__})"
    if why is not None:
        _damaged(path, at, line, why)
        return None
    return rec


def _bounded(rec: dict) -> tuple[dict, str | None]:
    """``rec`` checked and cut to the limits the hook keeps (lines from older versions or other
    programs may break them): (record, None) or (rec, why it is not usable)."""
    email, client_id, event, at = rec.get("email"), rec.get("client_id"), rec.get("event"), rec.get("at")
    if not isinstance(email, str) or not email:
        return rec, "the record has no email"
    if len(email) > payload.EMAIL_MAX or payload.clean_text(email) != email:
        return rec, "the record's email is not a valid address"
    if not isinstance(client_id, (str, int)) or isinstance(client_id, bool) or not isinstance(event, str):
        return rec, "the record has no client id or event"
    if not isinstance(at, (int, float)) or isinstance(at, bool) or not math.isfinite(at):
        return rec, "the record has no time"
    fields = rec.get("fields") or {}
    if not isinstance(fields, dict):
        return rec, "the record's fields are not a mapping"
    limits = {body_key: limit for body_key, (_, limit) in payload.TEXT_FIELDS.items()}
    found = {
        "email": email,
        "client_id": payload.clean_text(str(client_id))[:payload.ID_MAX],
        "event": payload.clean_text(event)[:EVENT_MAX],
        "fields": {k: payload.clean_text(v)[:limits[k]] for k, v in fields.items()
                   if k in limits and isinstance(v, str)},  # only what the hook would send
        "at": float(at),
    }
    seq = rec.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 1 << 62:
        found["seq"] = seq
    if isinstance(rec.get("email_opt_in"), bool):
        found["email_opt_in"] = rec["email_opt_in"]
    return found, None


def _skip_long_line(path: Path, start: int, head: bytes, final: bool) -> int | None:
    """The offset just after the overlong line at ``start`` (after one ERROR), or None when it
    has no end yet (and the file is still written: wait for it)."""
    at = start + len(head)
    try:
        with open(path, "rb") as f:
            f.seek(at)
            while True:
                chunk = f.read(FOLD_CHUNK)
                i = chunk.find(b"\n")
                if i >= 0:
                    after = at + i + 1
                    break
                at += len(chunk)
                if len(chunk) < FOLD_CHUNK:
                    if not final:
                        return None
                    after = at
                    break
    except FileNotFoundError:
        return None
    _damaged(path, start, head, f"the line is {after - start} bytes long, more than any record of this plugin")
    return after


def _damaged(path: Path, at: int, data: bytes, why: str, fate: str = _BY_HAND) -> None:
    """One ERROR for a line the fold cannot use, naming its client if the bytes show it."""
    found = _CLIENT_ID.search(data[:4096])
    if found:
        raw = found.group(1) if found.group(1) is not None else found.group(2)
        try:
            client = json.loads(b'"' + raw + b'"') if found.group(1) is not None else raw.decode()
        except ValueError:
            client = raw.decode("utf-8", "replace")
        log.error("outbox journal %s: skipping a damaged line of client %s: %s; %s",
                  path.name, payload.shown(client), why, fate)
    else:
        log.error("outbox journal %s: skipping a damaged line at byte %d: %s; %s", path.name, at, why, fate)
