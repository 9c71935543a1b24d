"""Reading a file that may be hostile, for the admin commands: regular files only (a FIFO
would block until a writer comes, ``/dev/zero`` would never end), lines of bounded length, and
bytes that are not UTF-8 named by the line that holds them."""

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..config.reading import OPEN_FLAGS, kind_of

MAX_LINE = 1 << 20  # characters of one line; a client is a few hundred
RAW_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8


class Refused(Exception):
    """The file as a whole cannot be used; the message says why and what to do."""


def open_regular(path: Path) -> BinaryIO:
    """Refuse what is not a regular file before reading a byte: a FIFO would block until a writer
    comes, ``/dev/zero`` would never end."""
    try:
        check_regular(path, os.stat(path))
        fd = os.open(path, OPEN_FLAGS)  # O_NONBLOCK: should the path become a FIFO meanwhile, this returns
    except FileNotFoundError:
        raise Refused(f"{path}: no such file") from None
    except OSError as e:
        raise Refused(f"{path} cannot be read ({e.strerror or e}); check the path and its permissions") from None
    try:
        check_regular(path, os.fstat(fd))  # what was opened, not what was stat-ed
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: Path, st: os.stat_result) -> None:
    if (kind := kind_of(st)) is not None:
        raise Refused(f"{path} is {kind}, not a regular file; save the export to a file and pass its path")


def lines(text: io.TextIOWrapper) -> Iterator[tuple[int, str | None]]:
    """(line number, the line) with the line None when it is longer than MAX_LINE (its rest is read
    and dropped in MAX_LINE pieces: memory stays bounded)."""
    number = 0
    while line := text.readline(MAX_LINE):
        number += 1
        if len(line) < MAX_LINE or line.endswith(("\n", "\r")):
            yield number, line
            continue
        while (rest := text.readline(MAX_LINE)) and len(rest) == MAX_LINE and not rest.endswith(("\n", "\r")):
            pass
        yield number, None


def line_problem(number: int, raw: str | None) -> str | None:
    if raw is None:
        return f"line {number} is longer than {MAX_LINE} characters; a client row is a few hundred"
    found = RAW_BYTE.search(raw)
    if found:
        byte = ord(found.group()) - 0xDC00
        return f"line {number} holds a byte that is not UTF-8 (0x{byte:02x}); save the export as UTF-8"
    if "\x00" in raw:
        return f"line {number} holds a NUL character; the export is damaged"
    return None
