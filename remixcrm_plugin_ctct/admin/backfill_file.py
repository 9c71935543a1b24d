"""Reading a backfill file: one client per row, streamed, trusting nothing in it.

The format is the file name's (``.csv``; ``.jsonl``/``.ndjson``), else the content's (a first
character ``{`` is JSON Lines, anything else CSV). CSV needs a header row naming ``id`` and
``email`` (any case, any order; comma, semicolon, tab or ``|`` between them); other columns are
ignored. Memory stays bounded whatever the file holds: lines are read at most ``safe_read.MAX_LINE``
characters at a time, a CSV field may hold ``MAX_FIELD``. What makes one row unusable (bytes
that are not UTF-8, a NUL, an overlong line, no id, not a JSON object) is that row's
``problem``; what makes the whole file unusable is :class:`Refused`, with the fix.
"""

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from .. import payload
from . import safe_read
from .safe_read import Refused

KEYS = ("id", "email", "first_name", "last_name", "phone", "company", "job_title", "email_opt_in")
REQUIRED = ("id", "email")
CSV, JSONL = "CSV", "JSON Lines"
MAX_FIELD = 64 * 1024  # characters of one CSV field (csv's own default is 128 Ki, kept per call here)
_DELIMITERS = ",;\t|"
__all__ = ["BackfillFile", "Line", "Refused", "KEYS", "CSV", "JSONL", "MAX_FIELD"]
_EXPORT = "export it again as CSV with a header row (id,email,first_name,...) or as JSON Lines, UTF-8"


class Line(NamedTuple):
    row: int  # 1-based number of the record (blank lines not counted): what the resume offset counts
    line: int  # the line it starts on, for people
    client: dict | None  # the hook's keys that the row has
    problem: str | None = None  # why the row is unusable before the hook's own checks


class BackfillFile:
    """``with BackfillFile(path) as f:`` ``f.fingerprint()``, then ``for line in f.rows(): …``."""

    def __init__(self, path: Path | str, mapped: tuple[str, ...] = ()):
        self.path = Path(path)
        # the client keys the config's [...fields] table maps: read like the hook's own keys
        self.keys = (*KEYS, *(k for k in mapped if k not in KEYS))
        self._fh = safe_read.open_regular(self.path)
        try:
            self._setup()
        except BaseException:
            self._fh.close()
            raise

    def _setup(self) -> None:
        self.size = os.fstat(self._fh.fileno()).st_size
        head = self._fh.read(4096)
        self._fh.seek(0)
        self.format = _detect(self.path, head)
        self.ignored: list[str] = []  # columns (or JSON keys) that are not the hook's, as shown
        self.delimiter = ","
        if self.format == CSV:  # a header that cannot work refuses the file now, before any row is read
            with self._text() as text:
                self._header(safe_read.lines(text))

    @contextmanager
    def _text(self) -> Iterator[io.TextIOWrapper]:
        self._fh.seek(0)
        text = io.TextIOWrapper(self._fh, encoding="utf-8-sig", errors="surrogateescape", newline="")
        try:
            yield text
        finally:
            text.detach()  # the binary file stays open

    def __enter__(self) -> "BackfillFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._fh.close()

    def fingerprint(self) -> str:
        """sha256 of every byte: the backfill's identity, so an edited file is a new backfill."""
        digest = hashlib.sha256()
        self._fh.seek(0)
        while chunk := self._fh.read(1 << 20):
            digest.update(chunk)
        self._fh.seek(0)
        return digest.hexdigest()

    def position(self) -> int:
        """Bytes read so far (roughly: the text layer reads ahead), for a progress bar."""
        return self._fh.tell()

    def rows(self) -> Iterator[Line]:
        with self._text() as text:
            yield from (self._jsonl(text) if self.format == JSONL else self._csv(text))

    # --- JSON Lines ---
    def _jsonl(self, text: io.TextIOWrapper) -> Iterator[Line]:
        index, extra = 0, set[str]()
        for number, raw in safe_read.lines(text):
            if raw is not None and not raw.strip():
                continue
            index += 1
            problem = safe_read.line_problem(number, raw)
            if problem or raw is None:
                yield Line(index, number, None, problem)
                continue
            try:
                found = json.loads(raw)
            except (ValueError, RecursionError) as e:
                yield Line(index, number, None, f"line {number} is not valid JSON ({_short(e)})")
                continue
            if not isinstance(found, dict):
                yield Line(index, number, None, f"line {number} is a JSON {type(found).__name__}, not an object")
                continue
            for key in found:
                if key not in self.keys and len(extra) < 20 and key not in extra:
                    extra.add(key)
                    self.ignored.append(payload.shown(key, 40))
            yield _checked(index, number, {k: found[k] for k in self.keys if k in found})

    # --- CSV ---
    def _csv(self, text: io.TextIOWrapper) -> Iterator[Line]:
        lines = safe_read.lines(text)
        header_at, columns = self._header(lines)
        overlong: set[int] = set()

        def physical() -> Iterator[str]:
            for number, raw in lines:
                if raw is None:
                    overlong.add(number)
                    yield "\n"
                else:
                    yield raw

        reader = csv.reader(physical(), delimiter=self.delimiter)
        index, last = 0, header_at  # the last line the reader has consumed
        while True:
            limit = csv.field_size_limit(MAX_FIELD)
            try:
                row: list[str] | None = next(reader)
                problem = None
            except StopIteration:
                return
            except csv.Error as e:
                row, problem = None, f"{_short(e)} (a field over {MAX_FIELD} characters, or a quote never closed?)"
            finally:
                csv.field_size_limit(limit)
            first, last = last + 1, header_at + reader.line_num
            too_long = sorted(n for n in overlong if n <= last)
            overlong.difference_update(too_long)
            if too_long:
                problem = (
                    f"line {too_long[0]} is longer than {safe_read.MAX_LINE} characters; a client row is a few hundred"
                )
            elif row is not None and not any(cell.strip() for cell in row):
                continue  # a blank line
            index += 1
            if problem is None and row is not None:
                problem = safe_read.line_problem(first, self.delimiter.join(row))
            if problem is not None or row is None:
                problem = problem or "unreadable"
                yield Line(index, first, None, problem if problem.startswith("line ") else f"line {first}: {problem}")
                continue
            yield _checked(index, first, {key: row[i] for key, i in columns.items() if i < len(row)})

    def _header(self, lines: Iterator[tuple[int, str | None]]) -> tuple[int, dict[str, int]]:
        """(the header's line number, each hook key's column)."""
        self.ignored = []
        for number, raw in lines:
            if raw is None:
                raise Refused(
                    f"{self.path}: line {number}, the header, is longer than {safe_read.MAX_LINE} characters; {_EXPORT}"
                )
            if raw.strip():
                break
        else:
            raise Refused(f"{self.path} is empty; {_EXPORT}")
        if safe_read.RAW_BYTE.search(raw) or "\x00" in raw:
            raise Refused(f"{self.path}: the header row is not UTF-8 text; {_EXPORT}")
        names = _names(raw, ",")
        for delimiter in _DELIMITERS:  # whichever separator makes an "email" column (Excel may use ";")
            if "email" in (found := _names(raw, delimiter)):
                self.delimiter, names = delimiter, found
                break
        columns: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in self.keys:
                if name in columns:
                    raise Refused(f"{self.path}: the header names the column {name} twice; keep one")
                columns[name] = i
            elif name:
                self.ignored.append(payload.shown(name, 40))
        missing = [key for key in REQUIRED if key not in columns]
        if missing:
            raise Refused(
                f"{self.path}: the header row has no {' and no '.join(missing)} column "
                f"(it reads {payload.shown(raw.strip(), 120)}); the first row must name the columns: {','.join(KEYS)}"
            )
        return number, columns


def _names(header: str, delimiter: str) -> list[str]:
    return [name.strip().lower() for name in next(csv.reader([header], delimiter=delimiter), [])]


def _detect(path: Path, head: bytes) -> str:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or head[:200].count(b"\x00") > 20:
        raise Refused(f"{path} is UTF-16 text (or binary); {_EXPORT}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return CSV
    if suffix in (".jsonl", ".ndjson"):
        return JSONL
    first = head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1]
    if first == b"[":
        raise Refused(f"{path} holds a JSON array; write one JSON object per line (JSON Lines) instead")
    return JSONL if first == b"{" else CSV


def _checked(index: int, number: int, client: dict) -> Line:
    """Every row needs its RemixCRM id: it names the client in `status --client` and the log."""
    raw_id = client.get("id")
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        return Line(index, number, None, f"line {number} has no id; every client needs its RemixCRM id")
    if isinstance(raw_id, str):
        client["id"] = raw_id.strip()
    if any(isinstance(value, str) and "\x00" in value for value in client.values()):
        return Line(index, number, None, f"line {number} holds a NUL character; the export is damaged")
    return Line(index, number, client)


def _short(error: Exception) -> str:
    return payload.shown(str(error), 100)
