"""The journal's lines: what the fold makes of them (a record, or one ERROR and the next line).

A line is one JSON object and its ``\n``; a JSON object is self-delimiting, so a line cut short
(a write that failed halfway, disk full) never parses as a record. The fold skips a line it
cannot use with one ERROR and goes on: one bad line never holds back the lines after it. Every
record is checked and cut to the limits the hook keeps (lines from older versions or other
programs may break them).
"""

import json
import logging
import math
import re
from pathlib import Path

from .. import fieldmap, payload
from .interfaces import JournalSink

log = logging.getLogger("remixcrm_plugin_ctct")

FOLD_CHUNK = 64 << 10  # bytes read and folded per transaction: a slice of ~300 records, a few ms of Python
EVENT_MAX = 1024  # "lead_converted from lead <id as payload.shown gives it: at most 80 characters, escaped>"
RECORD_START = b'{"email":'  # every record starts so (record.Event.to_record); inside a JSON string a '"' is escaped
_CLIENT_ID = re.compile(rb'"client_id":(?:"((?:[^"\\]|\\.){1,256})|(-?\d{1,256}))')
BY_HAND = "that event is not sent: add the client to the list in Constant Contact by hand if they should be there"
CUT_SHORT = "the last record was cut short by a write that failed (disk full?)"
KEPT = "the hook was told the write failed and kept that event in memory"
DIED_WRITING = "its process died while the hook was writing it (that hook call never returned)"


def fold_block(outbox: JournalSink, path: Path, start: int, block: bytes) -> int:
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
    # start=: only if nobody took these lines meanwhile (then 0: the fold reads the offset again)
    try:
        return len(found) if outbox.add_records([rec for rec, _ in found], path.name, start + len(block), start) else 0
    except (ValueError, TypeError, KeyError, OverflowError):  # not a disk or lock problem: a record the outbox refused
        pass
    count, at = 0, start  # at: the offset the outbox holds
    for rec, after in found:  # one at a time, so that the one it refuses does not hold back the others
        try:
            if not outbox.add_records([rec], path.name, after, at):
                return count
            count, at = count + 1, after
        except (ValueError, TypeError, KeyError, OverflowError) as e:
            log.error(
                "outbox journal %s: the outbox refused the event of client %s (%s); %s",
                path.name,
                payload.shown(rec.get("client_id")),
                type(e).__name__,
                BY_HAND,
            )
    outbox.add_records([], path.name, start + len(block), at)
    return count


def _usable(path: Path, at: int, line: bytes) -> dict | None:
    """The record on ``line``, bounded and valid UTF-8 as the hook writes it; None (after one
    ERROR) when there is none."""
    try:
        rec = json.loads(line)
    except ValueError:  # also UnicodeDecodeError
        # an older version appended the next record to a line cut short by a failed write: keep the record
        i = line.rfind(RECORD_START, 1)
        try:
            rec = json.loads(line[i:]) if i > 0 else None
        except ValueError:
            rec = None
        if rec is None:
            if line.startswith(RECORD_START) and not line.rstrip().endswith(b"}"):
                damaged(path, at, line, "a record was cut short by a write that failed (disk full?)", KEPT)
            else:
                damaged(path, at, line, "the line is not a record (written by something else?)")
            return None
        damaged(path, at, line[:i], "a record cut short by a failed write ran into the next one (which is kept)", KEPT)
    why = None
    if not isinstance(rec, dict):
        why = "the line is not a record"
    else:
        try:
            rec, why = _bounded(rec)
        except Exception as e:  # whatever a foreign line holds, it must not stop the fold
            why = f"the record cannot be read ({type(e).__name__})"
    if why is not None:
        damaged(path, at, line, why)
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
        "client_id": payload.clean_text(str(client_id))[: payload.ID_MAX],
        "event": payload.clean_text(event)[:EVENT_MAX],
        "fields": fieldmap.bounded(fields, limits),  # only what the hook would send
        "at": float(at),
    }
    seq = rec.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 1 << 62:
        found["seq"] = seq
    if isinstance(rec.get("email_opt_in"), bool):
        found["email_opt_in"] = rec["email_opt_in"]
    return found, None


def skip_long_line(path: Path, start: int, head: bytes, final: bool) -> int | None:
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
    damaged(path, start, head, f"the line is {after - start} bytes long, more than any record of this plugin")
    return after


def damaged(path: Path, at: int, data: bytes, why: str, fate: str = BY_HAND) -> None:
    """One ERROR for a line the fold cannot use, naming its client if the bytes show it."""
    found = _CLIENT_ID.search(data[:4096])
    if found:
        raw = found.group(1) if found.group(1) is not None else found.group(2)
        try:
            client = json.loads(b'"' + raw + b'"') if found.group(1) is not None else raw.decode()
        except ValueError:
            client = raw.decode("utf-8", "replace")
        log.error(
            "outbox journal %s: skipping a damaged line of client %s: %s; %s",
            path.name,
            payload.shown(client),
            why,
            fate,
        )
    else:
        log.error("outbox journal %s: skipping a damaged line at byte %d: %s; %s", path.name, at, why, fate)
