"""Where RemixCRM's config file and this plugin's data dir are."""

import functools
import os
from pathlib import Path

import platformdirs

APP_NAME = "remixcrm"


@functools.cache
def _default_config_file() -> str:
    # cached: platformdirs builds objects on every call, and this runs once per event
    return os.path.join(platformdirs.user_config_dir(APP_NAME, appauthor=False), "config.toml")


# The hook reads REMIXCRM_CONFIG on every call, with the host's caches cold: os.environ.get is
# four Python calls (Mapping.get, __getitem__, encodekey, decodevalue), several microseconds
# there. CPython's os.environ keeps the encoded variables in a dict of its own (``_data``, which
# every ``os.environ[...] = ...`` and ``del`` updates): one lookup in it, and the decoded value
# kept while the stored one is the same object, give what os.environ.get gives.
_ENVIRON_MAPPING = os.environ  # the dict is read only while os.environ is still this object (a test may replace it)
_ENVIRON = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey("REMIXCRM_CONFIG") if _ENVIRON is not None else None
_decoded: tuple[object, str] = (None, "")


def config_file() -> str:
    """:func:`config_path` as a str: this is on the hook's hot path, and Path() costs microseconds."""
    global _decoded
    if _ENVIRON is None or os.environ is not _ENVIRON_MAPPING:  # not CPython's dict, or os.environ replaced
        return os.environ.get("REMIXCRM_CONFIG") or _default_config_file()
    raw = _ENVIRON.get(_ENV_KEY)
    if raw is None:
        return _default_config_file()
    known = _decoded  # read once: another thread may replace it meanwhile
    if raw is not known[0]:
        known = _decoded = (raw, os.environ.decodevalue(raw))
    return known[1] or _default_config_file()


def config_path() -> Path:
    """``$REMIXCRM_CONFIG`` if set, else ``config.toml`` in RemixCRM's platform config dir."""
    return Path(config_file())


def forget_default_location() -> None:
    """Look the platform config dir up again on next use (after ``XDG_CONFIG_HOME`` and the like changed)."""
    _default_config_file.cache_clear()


def data_dir() -> Path:
    """This plugin's state dir: ``constant_contact/`` under ``$REMIXCRM_DATA_DIR`` or the
    platform data dir of RemixCRM. Not created here; whoever writes state creates it 0700."""
    base = os.environ.get("REMIXCRM_DATA_DIR") or platformdirs.user_data_dir(APP_NAME, appauthor=False)
    return Path(base, "constant_contact")
