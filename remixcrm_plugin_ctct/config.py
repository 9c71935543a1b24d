"""Where RemixCRM's shared config lives, how we read our part of it, and when we re-read it.

RemixCRM owns ``config.toml``; we only read it. The file is stat-ed on every event and parsed
again only when it changed, so flipping the provider radio in Settings takes effect on the
next event without a restart.
"""

import datetime as dt
import functools
import ipaddress
import logging
import os
import re
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

log = logging.getLogger("remixcrm_plugin_ctct")

APP_NAME = "remixcrm"
PROVIDERS = ("constant_contact", "mailchimp", "none")
DEFAULT_API_BASE_URL = "https://api.cc.email/v3"
DEFAULT_TOKEN_URL = "https://authz.constantcontact.com/oauth2/default/v1/token"
SETTINGS_PATH = "Settings → Integrations → Email Marketing"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SECTION = "email_marketing.constant_contact"

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
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        return LoadedConfig(INACTIVE, f"no config file at {path}", path)
    except tomllib.TOMLDecodeError as e:
        return LoadedConfig(INVALID, f"{path} is not valid TOML ({e}); fix the syntax or save the settings again in {SETTINGS_PATH}", path)
    except OSError as e:
        return LoadedConfig(INVALID, f"cannot read {path} ({e.strerror}); make it readable by the RemixCRM user", path)

    marketing = doc.get("email_marketing")
    if not isinstance(marketing, dict):
        return LoadedConfig(INACTIVE, f"no [email_marketing] section in {path}", path)
    provider = marketing.get("provider", "none")
    if provider not in PROVIDERS:
        return LoadedConfig(INVALID, f"{path}: email_marketing.provider = {provider!r} is not one of {', '.join(PROVIDERS)}; choose a provider in {SETTINGS_PATH}", path)
    if provider != "constant_contact":
        return LoadedConfig(INACTIVE, f"provider is {provider!r} in {path}", path)

    section = marketing.get("constant_contact")
    problems: list[str] = []
    settings = _parse_section(section if isinstance(section, dict) else {}, problems)
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
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        doc = {}
    except (OSError, tomllib.TOMLDecodeError):
        return None, loaded.message
    section = doc.get("email_marketing", {}).get("constant_contact", {}) if isinstance(doc.get("email_marketing"), dict) else {}
    problems: list[str] = []
    settings = _parse_section(section if isinstance(section, dict) else {}, problems, require_list=False)
    return (settings, "") if settings else (None, f"{path}: " + "; ".join(problems))


def _parse_section(section: dict, problems: list[str], require_list: bool = True) -> Settings | None:
    def text(key: str, secret: bool = False) -> str | None:
        value = section.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            shown = "" if secret else f" (got {value!r})"
            problems.append(f"{_SECTION}.{key} must be a quoted string{shown}")
            return None
        return value.strip()

    list_id = text("list_id")
    if not require_list:
        list_id = list_id or ""
    elif list_id is None:
        problems.append(f"{_SECTION}.list_id is missing: set it in {SETTINGS_PATH} → List ID (the list's UUID from Constant Contact)")
    elif not _UUID.match(list_id):
        problems.append(f"{_SECTION}.list_id {list_id!r} is not a UUID: copy the list's id from Constant Contact into {SETTINGS_PATH} → List ID")
    # a missing token is not a config error: `remixcrm-ctct login` may have put one in the token store
    access_token = text("access_token", secret=True)
    api_base_url = _url(text("api_base_url") or DEFAULT_API_BASE_URL, "api_base_url", problems)
    token_url = _url(text("token_url") or DEFAULT_TOKEN_URL, "token_url", problems)
    expires_at = _datetime(section.get("token_expires_at"), problems)
    refresh_token = text("refresh_token", secret=True)
    client_id = text("client_id")
    client_secret = text("client_secret", secret=True)
    numbers = {key: _number(section, key, default, problems) for key, default in NUMBERS.items()}
    switches = {key: _switch(section, key, default, problems) for key, default in SWITCHES.items()}
    if problems:
        return None
    return Settings(list_id, access_token, refresh_token, expires_at, client_id, client_secret, api_base_url, token_url,
                    numbers["max_age_hours"], numbers["retention_days"], numbers["requests_per_second"], int(numbers["daily_quota"]),
                    **switches)


# optional true/false keys, defaults from the dataclass as well
SWITCHES = {key: Settings.__dataclass_fields__[key].default for key in ("consent_guard", "restore_deleted", "dry_run")}


def _switch(section: dict, key: str, default: bool, problems: list[str]) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        problems.append(f"{_SECTION}.{key} must be true or false (got {value!r}; default {str(default).lower()})")
        return default
    return value


# optional numeric keys (all must be > 0); their defaults are the dataclass's, stated once
NUMBERS = {key: Settings.__dataclass_fields__[key].default for key in ("max_age_hours", "retention_days", "requests_per_second", "daily_quota")}


def _number(section: dict, key: str, default, problems: list[str]) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        problems.append(f"{_SECTION}.{key} must be a number above 0 (got {value!r}; default {default})")
        return default
    return value


def _url(value: str, key: str, problems: list[str]) -> str:
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return value.rstrip("/")
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return value.rstrip("/")
    problems.append(f"{_SECTION}.{key} {value!r} must be an https:// URL (plain http:// only for 127.0.0.1, ::1 or localhost)")
    return value


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _datetime(value, problems: list[str]) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            value = None
    if not isinstance(value, dt.datetime):
        problems.append(f"{_SECTION}.token_expires_at must be a date-time such as 2026-11-27T19:00:00Z")
        return None
    # a local date-time without offset: RemixCRM writes UTC, so read it as UTC
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


class ConfigWatcher:
    """Returns the current config, re-parsing only when the file's stat changes.

    Announces each change of state once: INFO for on/off, ERROR (naming the file, the key
    and the fix) for a broken config.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: tuple[tuple, LoadedConfig] | None = None
        self._announced: tuple[str, str] | None = None

    def current(self) -> LoadedConfig:
        path = _config_file()
        key = _stat_key(path)
        snapshot = self._snapshot  # one read: key and config always belong together
        if snapshot is not None and snapshot[0] == key:
            return snapshot[1]
        with self._lock:
            if self._snapshot is None or self._snapshot[0] != key:
                loaded = load(Path(path))
                self._announce(loaded)
                self._snapshot = (key, loaded)
            return self._snapshot[1]

    def forget(self) -> None:
        """Drop what was read and announced (tests, the demo): the next event reads afresh."""
        with self._lock:
            self._snapshot, self._announced = None, None

    def signature(self) -> tuple:
        """The file's stat now (one stat call): changes when the file does."""
        return _stat_key(_config_file())

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
