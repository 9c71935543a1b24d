"""The safe read of ``config.toml``: a regular file only, at most ``MAX_CONFIG_BYTES`` of it,
and undecodable bytes named only when they sit in our part of the file.

The read runs in the host's thread, so it must be short and must never hang: a FIFO would
block, ``/dev/zero`` would never end, and a huge file would take seconds per change.
"""

import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

from .messages import SETTINGS_PATH, show

MAX_CONFIG_BYTES = 1 << 20  # RemixCRM's config is a few KiB; much more is not a config, and would slow every change
_UTF8_BOM = b"\xef\xbb\xbf"  # what Windows Notepad puts in front of "UTF-8": harmless, skipped
# O_NONBLOCK: should the path become a FIFO between our stat and our open, the open still returns
# (also what `remixcrm-ctct backfill` opens its export with: admin/safe_read.py)
OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class Unreadable(Exception):
    """The file gives no TOML document; the message says why and what to do."""


def read_doc(path: Path) -> dict[str, Any]:
    """The parsed file. Raises FileNotFoundError, OSError or :class:`Unreadable` (with the message)."""
    data = _read_bytes(path)
    skipped = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    data = data[skipped:]
    resave = f"open it in a text editor and save it as UTF-8, or save the settings again in {SETTINGS_PATH}"
    where = ""
    try:
        text, bad = data.decode("utf-8"), None
    except UnicodeDecodeError as e:
        # RemixCRM's own tables may hold Latin-1 text: if the rest still parses, the odd bytes
        # stay as lone surrogates in values that are not ours, and only ours must be clean
        text, bad = data.decode("utf-8", "surrogateescape"), e
        where = f"byte 0x{data[e.start]:02x} at offset {e.start + skipped}"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        if bad is not None:
            raise Unreadable(f"{path} is not UTF-8 text ({where}); {resave}") from None
        raise Unreadable(
            f"{path} is not valid TOML ({e}); fix the syntax or save the settings again in {SETTINGS_PATH}"
        ) from None
    except RecursionError:
        raise Unreadable(
            f"{path} nests arrays or tables too deeply to be read; remove the deep nesting "
            f"or save the settings again in {SETTINGS_PATH}"
        ) from None
    marketing = doc.get("email_marketing")
    if bad is not None and isinstance(marketing, dict):
        ours = {k: marketing[k] for k in ("provider", "constant_contact") if k in marketing}
        key = _first_undecodable(ours, "email_marketing")
        if key is not None:
            raise Unreadable(f"{path}: {key} is not UTF-8 text (the file's first such byte: {where}); {resave}")
    return doc


def _read_bytes(path: Path) -> bytes:
    """At most MAX_CONFIG_BYTES of a regular file. Anything else would hang the host's thread
    (a FIFO without a writer), never end (``/dev/zero``) or take seconds per change."""
    _check_regular(path, os.stat(path))  # before opening: opening a device may have effects of its own
    fd = os.open(path, OPEN_FLAGS)
    try:
        st = os.fstat(fd)  # what was opened, not what was stat-ed: the path may have been replaced meanwhile
        _check_regular(path, st)
        _check_size(path, st.st_size)
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        _check_size(path, size, grew=True)
    finally:
        os.close(fd)
    return b"".join(chunks)


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(st: os.stat_result) -> str | None:
    """What a file that is not a regular one is ("a FIFO (named pipe)", …); None for a regular file."""
    if stat.S_ISREG(st.st_mode):
        return None
    return next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")


def _check_regular(path: Path, st: os.stat_result) -> None:
    if (kind := kind_of(st)) is not None:
        raise Unreadable(
            f"{path} is {kind}, not a regular file; point REMIXCRM_CONFIG at RemixCRM's config.toml "
            "(or unset it to use the default location)"
        )


def _check_size(path: Path, size: int, grew: bool = False) -> None:
    if size > MAX_CONFIG_BYTES:
        told = "more than" if grew else f"{size} bytes,"  # (a file that grew while read was not read to its end)
        raise Unreadable(
            f"{path} is {told} over the {MAX_CONFIG_BYTES} bytes a config file may have; point "
            "REMIXCRM_CONFIG at RemixCRM's config.toml, or remove what does not belong in it"
        )


def _first_undecodable(value: Any, name: str) -> str | None:
    """The dotted name of the first key or string under ``value`` that holds an undecodable
    byte (a lone surrogate from ``surrogateescape``). A loop, not recursion: the nesting may be deep."""
    todo = [(name, value)]
    while todo:
        name, value = todo.pop()
        if isinstance(value, str) and _has_surrogate(value):
            return name
        if isinstance(value, dict):
            for key, item in value.items():
                if _has_surrogate(key):
                    return f"a key in {name}"
                todo.append((f"{name}.{key if _BARE_KEY.fullmatch(key) else show(key)}", item))
        elif isinstance(value, list):
            todo.extend((f"{name}[{i}]", item) for i, item in enumerate(value))
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
