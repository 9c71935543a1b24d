"""Checks of single values of ``[email_marketing.constant_contact]``. Each check appends at most one
problem (naming the key and the fix) to ``problems`` and returns the value to use."""

import datetime as dt
import ipaddress
import math
import re
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from .messages import SECTION, SETTINGS_PATH, show

_TOKEN = re.compile(r"[!-~]+")  # printable ASCII, no space
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")  # a PostgreSQL name that needs no quoting
_STATE_SCHEMES = ("postgresql", "postgres")
_URL_CHARS = re.compile(r"[^\x00-\x20\x7f]+")
# (lowest, highest, what to say). Bounded on both sides: inf, nan or 1e400 would overflow the
# governor's and the purge's arithmetic later, far from the line that caused it
_RANGES = {
    "max_age_hours": (0, 1e6, "a number above 0 and at most 1000000"),
    "retention_days": (0, 1e6, "a number above 0 and at most 1000000"),
    "requests_per_second": (0, 1e6, "a number from 0.001 to 1000000"),
    "daily_quota": (1, 10**12, "a whole number from 1 to 1000000000000"),
    "import_window_seconds": (-1, 300, "a number of seconds from 0 to 300"),
    "optout_poll_minutes": (-1, 1440, "0 (off) or a number of minutes from 1 to 1440"),
}
# an expiry outside these years is not a real one (and years past 9999, or before 1 once
# converted to UTC, crash every date-time conversion later)
_EARLIEST_EXPIRY = dt.datetime(1970, 1, 1, tzinfo=dt.UTC).timestamp()
_LATEST_EXPIRY = dt.datetime(9999, 1, 1, tzinfo=dt.UTC).timestamp()


def text(
    section: dict[str, Any], key: str, problems: list[str], secret: bool = False, token: bool = False
) -> str | None:
    """An optional string, stripped; None when absent or blank."""
    value = section.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        shown = "" if secret else f" (got {show(value)})"
        problems.append(f"{SECTION}.{key} must be a quoted string{shown}")
        return None
    value = value.strip()
    # tokens, keys and secrets go into HTTP headers and forms: a stray newline, space or
    # non-ASCII letter (a bad paste) would fail every request, so it is named here instead
    if token and not _TOKEN.fullmatch(value):
        shown = "" if secret else f" (got {show(value)})"
        problems.append(
            f"{SECTION}.{key} must be one word of printable ASCII characters, no spaces or line breaks"
            f"{shown}; paste it again in {SETTINGS_PATH}"
        )
        return None
    return value


def switch(section: dict[str, Any], key: str, default: bool, problems: list[str]) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        problems.append(f"{SECTION}.{key} must be true or false (got {show(value)}; default {str(default).lower()})")
        return default
    return value


def choice(section: dict[str, Any], key: str, allowed: tuple[str, ...], problems: list[str]) -> str:
    """One of ``allowed`` (the first is the default), compared stripped and lower-case."""
    value = section.get(key, allowed[0])
    found = value.strip().lower() if isinstance(value, str) else None
    if found not in allowed:
        wanted = ", ".join(f'"{a}"' for a in allowed)
        problems.append(f'{SECTION}.{key} must be one of {wanted} (got {show(value)}; default "{allowed[0]}")')
        return allowed[0]
    return found


def number(section: dict[str, Any], key: str, default: float, problems: list[str]) -> float:
    value = section.get(key, default)
    low, high, wanted = _RANGES[key]
    # comparisons, not float(): they are exact for huge integers, and false for nan
    ok = not isinstance(value, bool) and isinstance(value, int | float) and low < value <= high
    if ok and key == "requests_per_second":
        ok = value >= 0.001  # slower would mean hours between sends, and sleeps too long to schedule
    if ok and key == "import_window_seconds":
        ok = value >= 0
    if ok and key == "optout_poll_minutes":
        ok = value == 0 or value >= 1  # more often would spend a fifth of the daily quota on polls
    if ok and key == "daily_quota":
        ok = value >= 1 and float(value).is_integer()
    if not ok:
        problems.append(f"{SECTION}.{key} must be {wanted} (got {show(value)}; default {default})")
        return default
    return value


def url(value: str, key: str, problems: list[str]) -> str:
    """An https:// URL (plain http:// only on loopback), without a trailing slash."""
    problem = (
        f"{SECTION}.{key} {show(value)} must be an https:// URL (plain http:// only for 127.0.0.1, ::1 or localhost)"
    )
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
        problems.append(f"{SECTION}.{key} must not contain a user name or password")
        return value
    if parts.scheme == "https" and host:
        return value.rstrip("/")
    if parts.scheme == "http" and _is_loopback(host):
        return value.rstrip("/")
    problems.append(problem)
    return value


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def expiry(value: Any, problems: list[str]) -> dt.datetime | None:
    """``token_expires_at``: a TOML date-time or an RFC 3339 string; one without offset is UTC."""
    if value is None or value == "":
        return None
    raw = value
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            value = None
    if not isinstance(value, dt.datetime):
        problems.append(f"{SECTION}.token_expires_at must be a date-time such as 2026-11-27T19:00:00Z")
        return None
    # a local date-time without offset: RemixCRM writes UTC, so read it as UTC
    value = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    try:
        when = value.timestamp()
    except (OverflowError, ValueError, OSError):
        when = math.nan
    if not _EARLIEST_EXPIRY <= when < _LATEST_EXPIRY:
        shown = raw.isoformat() if isinstance(raw, dt.datetime) else show(raw)
        problems.append(
            f"{SECTION}.token_expires_at {shown} is not a real expiry (it must lie between the years 1970 "
            f"and 9998); leave it out if unknown, or run `remixcrm-ctct login` to get a fresh token"
        )
        return None
    return value


def state_url(table: dict[str, Any], problems: list[str]) -> str | None:
    """``state_url``: a ``postgresql://`` URL, or None (SQLite)."""
    value = table.get("state_url")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    fix = 'a URL such as "postgresql://remixcrm@db.internal:5432/remixcrm" (or leave it out for one host)'
    if not isinstance(value, str):
        problems.append(f"{SECTION}.state_url must be {fix}")
        return None
    value = value.strip()
    try:
        scheme = urlsplit(value).scheme
    except ValueError:
        scheme = ""
    if scheme not in _STATE_SCHEMES or any(c.isspace() for c in value):
        problems.append(f"{SECTION}.state_url {show(mask_url(value))} must be {fix}")
        return None
    return value


def state_schema(table: dict[str, Any], default: str, problems: list[str]) -> str:
    value = table.get("state_schema", default)
    if not isinstance(value, str) or not _SCHEMA_NAME.fullmatch(value):
        problems.append(
            f"{SECTION}.state_schema must be a lower-case name of letters, digits and _ "
            f"(got {show(value)}; default {default!r})"
        )
        return default
    return value


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs, ``check`` and errors): in the
    user part, in the query (``?password=``, ``?sslpassword=``: libpq reads both) and in a
    ``key=value`` conninfo, which the environment variable may hold."""
    try:
        if "://" not in url:
            return _CONNINFO_PASSWORD.sub(r"\1***", url)
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[1]}"
        return urlunsplit(parts._replace(netloc=netloc, query=_QUERY_PASSWORD.sub(r"\1***", parts.query)))
    except ValueError:
        return "<a URL that cannot be parsed>"


def url_secrets(url: str) -> list[str]:
    """The passwords ``url`` holds, as written and decoded (a driver may echo either)."""
    found: list[str] = []
    try:
        if "://" not in url:
            found = [m.group(2).strip("'") for m in _CONNINFO_PASSWORD.finditer(url)]
        else:
            parts = urlsplit(url)
            found = [parts.password or ""] + [m.group(2) for m in _QUERY_PASSWORD.finditer(parts.query)]
    except ValueError:
        pass
    return sorted({v for s in found if s for v in (s, unquote(s))}, key=len, reverse=True)


_CONNINFO_PASSWORD = re.compile(r"(\b\w*password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"((?:^|&)[^&=]*password=)([^&]*)", re.IGNORECASE)
