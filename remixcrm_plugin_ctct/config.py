"""Where RemixCRM's shared config lives, how we read our part of it, and when we re-read it.

RemixCRM owns ``config.toml``; we only read it. The file is stat-ed on every event and parsed
again only when it changed, so flipping the provider radio in Settings takes effect on the
next event without a restart.

The read runs in the host's thread, so it must be short and must never hang: only a regular
file is opened (a FIFO would block, ``/dev/zero`` would never end), at most
``MAX_CONFIG_BYTES`` of it, and no lock is held while reading — other threads keep the last
reading until the new one lands. Whatever the file holds, :func:`load` answers; it never raises.
"""

import datetime as dt
import functools
import ipaddress
import logging
import os
import math
import re
import stat
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from . import forksafe

log = logging.getLogger("remixcrm_plugin_ctct")

APP_NAME = "remixcrm"
PROVIDERS = ("constant_contact", "mailchimp", "none")
DEFAULT_API_BASE_URL = "https://api.cc.email/v3"
DEFAULT_TOKEN_URL = "https://authz.constantcontact.com/oauth2/default/v1/token"
SETTINGS_PATH = "Settings → Integrations → Email Marketing"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SECTION = "email_marketing.constant_contact"
MAX_CONFIG_BYTES = 1 << 20  # RemixCRM's config is a few KiB; much more is not a config, and would slow every change
_UTF8_BOM = b"\xef\xbb\xbf"  # what Windows Notepad puts in front of "UTF-8": harmless, skipped
# O_NONBLOCK: should the path become a FIFO between our stat and our open, the open still returns
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0) \
    | getattr(os, "O_BINARY", 0)
_SHOWN = 80  # characters of a bad value quoted back in a message (they end up in log lines)

ACTIVE, INACTIVE, INVALID = "active", "inactive", "invalid"


@functools.cache
def _default_config_file() -> str:
    # cached: platformdirs builds objects on every call, and this runs once per event
    return os.path.join(platformdirs.user_config_dir(APP_NAME, appauthor=False), "config.toml")


def _config_file() -> str:
    # a str, not a Path: this is on the hook's hot path, and Path() costs microseconds
    return os.environ.get("REMIXCRM_CONFIG") or _default_config_file()


def config_path() -> Path:
    """``$REMIXCRM_CONFIG`` if set, else ``config.toml`` in RemixCRM's platform config dir."""
    return Path(_config_file())


def data_dir() -> Path:
    """This plugin's state dir: ``constant_contact/`` under ``$REMIXCRM_DATA_DIR`` or the
    platform data dir of RemixCRM. Not created here; whoever writes state creates it 0700."""
    base = os.environ.get("REMIXCRM_DATA_DIR") or platformdirs.user_data_dir(APP_NAME, appauthor=False)
    return Path(base, "constant_contact")


@dataclass(frozen=True)
class Settings:
    """The ``[email_marketing.constant_contact]`` table, validated. Secrets stay out of repr."""

    list_id: str
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    token_expires_at: dt.datetime | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    api_base_url: str = DEFAULT_API_BASE_URL
    token_url: str = DEFAULT_TOKEN_URL
    max_age_hours: float = 72.0
    retention_days: float = 30.0
    requests_per_second: float = 4.0
    daily_quota: int = 10_000
    consent_guard: bool = True
    restore_deleted: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class LoadedConfig:
    """One reading of the file: ``active`` with settings, ``inactive`` or ``invalid`` with why."""

    status: str
    message: str
    path: Path
    settings: Settings | None = None


def load(path: Path) -> LoadedConfig:
    """Read and validate ``path``. Never raises; problems come back as ``invalid``."""
    try:
        return _load(path)
    except Exception as e:  # the last line of defence: the hook must get an answer, never a traceback
        # the exception's text is left out: it may quote the file, and the file holds secrets
        return LoadedConfig(INVALID, f"{path} could not be read ({type(e).__name__}); save the settings again in "
                                     f"{SETTINGS_PATH}, and report this if it persists", path)


def _load(path: Path) -> LoadedConfig:
    try:
        doc = _read_doc(path)
    except FileNotFoundError:
        return LoadedConfig(INACTIVE, f"no config file at {path}", path)
    except _Unreadable as e:
        return LoadedConfig(INVALID, str(e), path)
    except OSError as e:
        return LoadedConfig(INVALID, f"cannot read {path} ({e.strerror or e}); make it readable by the RemixCRM user",
                            path)

    marketing = doc.get("email_marketing")
    if not isinstance(marketing, dict):
        return LoadedConfig(INACTIVE, f"no [email_marketing] section in {path}", path)
    provider = marketing.get("provider", "none")
    if not isinstance(provider, str) or provider not in PROVIDERS:
        return LoadedConfig(INVALID, f"{path}: email_marketing.provider = {_show(provider)} is not one of "
                                     f"{', '.join(PROVIDERS)}; choose a provider in {SETTINGS_PATH}", path)
    if provider != "constant_contact":
        return LoadedConfig(INACTIVE, f"provider is {provider!r} in {path}", path)

    problems: list[str] = []
    settings = _parse_section(_section(marketing, problems), problems)
    if problems:
        return LoadedConfig(INVALID, f"{path}: " + "; ".join(problems), path)
    return LoadedConfig(ACTIVE, f"sending new clients to list {settings.list_id} via {settings.api_base_url}", path, settings)


def load_for_tokens(path: Path) -> tuple[Settings | None, str]:
    """The config as ``login`` and ``refresh`` need it: the list and the provider radio may still
    be unset (an admin often logs in first). Returns (settings, "") or (None, the problem)."""
    loaded = load(path)
    if loaded.settings is not None:
        return loaded.settings, ""
    try:
        doc = _read_doc(path)
    except FileNotFoundError:
        doc = {}
    except Exception:  # unreadable, not TOML, too big...: load() has said why
        return None, loaded.message
    try:
        marketing = doc.get("email_marketing")
        problems: list[str] = []
        section = _section(marketing, problems) if isinstance(marketing, dict) else {}
        settings = _parse_section(section, problems, require_list=False)
    except Exception:  # as in load(): a message, never a traceback
        return None, loaded.message
    return (settings, "") if settings else (None, f"{path}: " + "; ".join(problems))


class _Unreadable(Exception):
    """The file gives no TOML document; the message says why and what to do."""


def _read_doc(path: Path) -> dict:
    """The parsed file. Raises FileNotFoundError, OSError or _Unreadable (with the message)."""
    data = _read_bytes(path)
    skipped = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    data = data[skipped:]
    resave = f"open it in a text editor and save it as UTF-8, or save the settings again in {SETTINGS_PATH}"
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
            raise _Unreadable(f"{path} is not UTF-8 text ({where}); {resave}") from None
        raise _Unreadable(f"{path} is not valid TOML ({e}); fix the syntax or save the settings again in "
                          f"{SETTINGS_PATH}") from None
    except RecursionError:
        raise _Unreadable(f"{path} nests arrays or tables too deeply to be read; remove the deep nesting "
                          f"or save the settings again in {SETTINGS_PATH}") from None
    marketing = doc.get("email_marketing")
    if bad is not None and isinstance(marketing, dict):
        ours = {k: marketing[k] for k in ("provider", "constant_contact") if k in marketing}
        key = _first_undecodable(ours, "email_marketing")
        if key is not None:
            raise _Unreadable(f"{path}: {key} is not UTF-8 text (the file's first such byte: {where}); {resave}")
    return doc


def _read_bytes(path: Path) -> bytes:
    """At most MAX_CONFIG_BYTES of a regular file. Anything else would hang the host's thread
    (a FIFO without a writer), never end (``/dev/zero``) or take seconds per change."""
    _check_regular(path, os.stat(path))  # before opening: opening a device may have effects of its own
    fd = os.open(path, _OPEN_FLAGS)
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


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_regular(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise _Unreadable(f"{path} is {kind}, not a regular file; point REMIXCRM_CONFIG at RemixCRM's config.toml "
                          "(or unset it to use the default location)")


def _check_size(path: Path, size: int, grew: bool = False) -> None:
    if size > MAX_CONFIG_BYTES:
        told = "more than" if grew else f"{size} bytes,"  # (a file that grew while read was not read to its end)
        raise _Unreadable(f"{path} is {told} over the {MAX_CONFIG_BYTES} bytes a config file may have; point "
                          "REMIXCRM_CONFIG at RemixCRM's config.toml, or remove what does not belong in it")


def _first_undecodable(value, name: str) -> str | None:
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
                todo.append((f"{name}.{key if _BARE_KEY.fullmatch(key) else _show(key)}", item))
        elif isinstance(value, list):
            todo.extend((f"{name}[{i}]", item) for i, item in enumerate(value))
    return None


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _show(value) -> str:
    """A bad value as quoted back in a message (and so in a log line): escaped and capped."""
    try:
        shown = repr(value)
    except Exception:  # a nesting too deep for repr
        return f"<a {type(value).__name__}>"
    return shown if len(shown) <= _SHOWN else shown[:_SHOWN] + f"… ({len(shown)} characters)"


def _section(marketing: dict, problems: list[str]) -> dict:
    section = marketing.get("constant_contact")
    if section is None:
        return {}
    if not isinstance(section, dict):
        problems.append(f"{_SECTION} must be a table ([{_SECTION}] with its keys below it; got {_show(section)})")
        return {}
    return section


def _parse_section(section: dict, problems: list[str], require_list: bool = True) -> Settings | None:
    def text(key: str, secret: bool = False, token: bool = False) -> str | None:
        value = section.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            shown = "" if secret else f" (got {_show(value)})"
            problems.append(f"{_SECTION}.{key} must be a quoted string{shown}")
            return None
        value = value.strip()
        # tokens, keys and secrets go into HTTP headers and forms: a stray newline, space or
        # non-ASCII letter (a bad paste) would fail every request, so it is named here instead
        if token and not _TOKEN.fullmatch(value):
            shown = "" if secret else f" (got {_show(value)})"
            problems.append(f"{_SECTION}.{key} must be one word of printable ASCII characters, no spaces or line breaks"
                            f"{shown}; paste it again in {SETTINGS_PATH}")
            return None
        return value

    said = len(problems)
    list_id = text("list_id")
    if not require_list:
        list_id = list_id or ""
    elif list_id is None:
        if len(problems) == said:  # (a wrongly typed one is named already)
            problems.append(f"{_SECTION}.list_id is missing: set it in {SETTINGS_PATH} → List ID "
                            "(the list's UUID from Constant Contact)")
    elif not _UUID.fullmatch(list_id):
        problems.append(f"{_SECTION}.list_id {_show(list_id)} is not a UUID: copy the list's id from Constant Contact "
                        f"into {SETTINGS_PATH} → List ID")
    # a missing token is not a config error: `remixcrm-ctct login` may have put one in the token store
    access_token = text("access_token", secret=True, token=True)
    api_base_url = _url(text("api_base_url") or DEFAULT_API_BASE_URL, "api_base_url", problems)
    token_url = _url(text("token_url") or DEFAULT_TOKEN_URL, "token_url", problems)
    expires_at = _datetime(section.get("token_expires_at"), problems)
    refresh_token = text("refresh_token", secret=True, token=True)
    client_id = text("client_id", token=True)
    client_secret = text("client_secret", secret=True, token=True)
    numbers = {key: _number(section, key, default, problems) for key, default in NUMBERS.items()}
    switches = {key: _switch(section, key, default, problems) for key, default in SWITCHES.items()}
    if problems:
        return None
    return Settings(list_id, access_token, refresh_token, expires_at, client_id, client_secret, api_base_url, token_url,
                    numbers["max_age_hours"], numbers["retention_days"], numbers["requests_per_second"], int(numbers["daily_quota"]),
                    **switches)


_TOKEN = re.compile(r"[!-~]+")  # printable ASCII, no space


# optional true/false keys, defaults from the dataclass as well
SWITCHES = {key: Settings.__dataclass_fields__[key].default for key in ("consent_guard", "restore_deleted", "dry_run")}


def _switch(section: dict, key: str, default: bool, problems: list[str]) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        problems.append(f"{_SECTION}.{key} must be true or false (got {_show(value)}; default {str(default).lower()})")
        return default
    return value


# optional numeric keys; their defaults are the dataclass's, stated once
NUMBERS = {key: Settings.__dataclass_fields__[key].default for key in ("max_age_hours", "retention_days", "requests_per_second", "daily_quota")}
# (lowest, highest, what to say). Bounded on both sides: inf, nan or 1e400 would overflow the
# governor's and the purge's arithmetic later, far from the line that caused it
_RANGES = {
    "max_age_hours": (0, 1e6, "a number above 0 and at most 1000000"),
    "retention_days": (0, 1e6, "a number above 0 and at most 1000000"),
    "requests_per_second": (0, 1e6, "a number from 0.001 to 1000000"),
    "daily_quota": (1, 10**12, "a whole number from 1 to 1000000000000"),
}


def _number(section: dict, key: str, default, problems: list[str]) -> float:
    value = section.get(key, default)
    low, high, wanted = _RANGES[key]
    # comparisons, not float(): they are exact for huge integers, and false for nan
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and low < value <= high
    if ok and key == "requests_per_second":
        ok = value >= 0.001  # slower would mean hours between sends, and sleeps too long to schedule
    if ok and key == "daily_quota":
        ok = value >= 1 and float(value).is_integer()
    if not ok:
        problems.append(f"{_SECTION}.{key} must be {wanted} (got {_show(value)}; default {default})")
        return default
    return value


def _url(value: str, key: str, problems: list[str]) -> str:
    problem = (f"{_SECTION}.{key} {_show(value)} must be an https:// URL "
               "(plain http:// only for 127.0.0.1, ::1 or localhost)")
    if not _URL_CHARS.fullmatch(value):
        problems.append(f"{problem}, without spaces, line breaks or other control characters")
        return value
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port  # .port raises for a port out of range
    except ValueError as e:  # e.g. "http://[::1/v3": an unclosed IPv6 bracket
        problems.append(f"{problem}; it cannot be parsed ({e})")
        return value
    if parts.username is not None or parts.password is not None:
        # it would be logged with every "sync is on" line: no user name or password in it
        problems.append(f"{_SECTION}.{key} must not contain a user name or password")
        return value
    if parts.scheme == "https" and host:
        return value.rstrip("/")
    if parts.scheme == "http" and _is_loopback(host):
        return value.rstrip("/")
    problems.append(problem)
    return value


_URL_CHARS = re.compile(r"[^\x00-\x20\x7f]+")


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


# an expiry outside these years is not a real one (and years past 9999, or before 1 once
# converted to UTC, crash every date-time conversion later)
_EARLIEST_EXPIRY = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc).timestamp()
_LATEST_EXPIRY = dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc).timestamp()


def _datetime(value, problems: list[str]) -> dt.datetime | None:
    if value is None or value == "":
        return None
    raw = value
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            value = None
    if not isinstance(value, dt.datetime):
        problems.append(f"{_SECTION}.token_expires_at must be a date-time such as 2026-11-27T19:00:00Z")
        return None
    # a local date-time without offset: RemixCRM writes UTC, so read it as UTC
    value = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    try:
        when = value.timestamp()
    except (OverflowError, ValueError, OSError):
        when = math.nan
    if not _EARLIEST_EXPIRY <= when < _LATEST_EXPIRY:
        shown = raw.isoformat() if isinstance(raw, dt.datetime) else _show(raw)
        problems.append(f"{_SECTION}.token_expires_at {shown} is not a real expiry (it must lie between the years 1970 "
                        f"and 9998); leave it out if unknown, or run `remixcrm-ctct login` to get a fresh token")
        return None
    return value


class ConfigWatcher:
    """Returns the current config, re-parsing only when the file's stat changes.

    Announces each change of state once: INFO for on/off, ERROR (naming the file, the key
    and the fix) for a broken config.

    The thread that notices a change reads the file, with no lock held; meanwhile the other
    threads get the previous reading at once instead of queueing behind a slow disk.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the fields below; never held while the file is read
        self._snapshot: tuple[tuple, LoadedConfig] | None = None
        self._announced: tuple[str, str] | None = None
        self._reader: object | None = None  # the token of the thread reading the file now
        self._generation = 0  # forget() bumps it: a reading begun before then is not kept
        self._fork_safe = False

    def current(self) -> LoadedConfig:
        return self._current()[1]

    def _current(self) -> tuple[tuple, LoadedConfig]:
        path = _config_file()
        key = _stat_key(path)
        snapshot = self._snapshot  # one read: key and config always belong together
        if snapshot is not None and snapshot[0] == key:
            return snapshot
        with self._lock:
            snapshot = self._snapshot
            if snapshot is not None and snapshot[0] == key:
                return snapshot
            if snapshot is not None and self._reader is not None:
                # another thread is reading the change: its predecessor serves meanwhile, under a
                # signature of its own, so that a pause taken on it (or a flush() looking at such
                # a pause) never mistakes "being read" for "unchanged"
                return (*snapshot[0], "being read"), snapshot[1]
            token = object() if self._reader is None else None  # else: nothing read yet, read alongside
            if token is not None:
                self._reader = token
            generation = self._generation
            if not self._fork_safe:  # registered on first use: importing the plugin registers nothing
                self._fork_safe = True
                forksafe.after_fork_in_child(self._after_fork)
        loaded = None
        try:
            loaded = load(Path(path))  # never raises
        finally:
            with self._lock:
                if token is not None and self._reader is token:
                    self._reader = None
                if loaded is not None and generation == self._generation:
                    self._announce(loaded)
                    self._snapshot = (key, loaded)
        return key, loaded

    def forget(self) -> None:
        """Drop what was read and announced (tests, the demo): the next event reads afresh."""
        with self._lock:
            self._snapshot, self._announced, self._reader = None, None, None
            self._generation += 1

    def signature(self) -> tuple:
        """Changes when the file does, when another thread starts reading the change, and when
        that reading lands (a pause taken on the previous reading lifts once the new one is in)."""
        return self._current()[0]

    def _after_fork(self) -> None:
        # a parent thread may have held the lock, or been reading, at the fork: neither exists here
        self._lock = threading.Lock()
        self._reader = None

    def _announce(self, loaded: LoadedConfig) -> None:
        said = (loaded.status, loaded.message)
        if said == self._announced:
            return
        self._announced = said
        if loaded.status == INVALID:
            log.error("constant contact sync is paused, config problem: %s", loaded.message)
        elif loaded.status == INACTIVE:
            log.info("constant contact sync is off: %s", loaded.message)
        else:
            log.info("constant contact sync is on: %s", loaded.message)


def _stat_key(path: str) -> tuple:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (path, None)
    except OSError as e:
        return (path, "error", e.errno)
    return (path, st.st_mtime_ns, st.st_size, st.st_ino)
