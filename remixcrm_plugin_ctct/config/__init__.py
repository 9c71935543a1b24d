"""Where RemixCRM's shared config lives, how we read our part of it, and when we re-read it.

RemixCRM owns ``config.toml``; we only read it. The rooms:

- :mod:`.locate`: where the file and our data dir are;
- :mod:`.reading`: the safe read (a regular file only, a size cap, non-UTF-8 bytes named);
- :mod:`.settings` and :mod:`.values`: our table, its defaults and its validation;
- :mod:`.fields`: the ``fields`` sub-table (client keys to Constant Contact fields);
- :mod:`.loading`: one reading judged (:func:`load`, :func:`load_for_tokens`); never raises;
- :mod:`.watcher`: re-reads when the file changes, announcing each change once;
- :mod:`.state`: where the shared state lives (``state_url``: PostgreSQL for several hosts);
- :mod:`.toml`: :func:`config_toml`, the file's text for the demo, the sandbox, benches and tests.
"""

from .fields import FieldMap
from .loading import load, load_for_tokens
from .locate import APP_NAME, config_file, config_path, data_dir, forget_default_location
from .messages import SECTION, SETTINGS_PATH
from .reading import MAX_CONFIG_BYTES
from .settings import (
    ACTIVE,
    DEFAULT_API_BASE_URL,
    DEFAULT_TOKEN_URL,
    INACTIVE,
    INVALID,
    NUMBERS,
    PROVIDERS,
    SWITCHES,
    LoadedConfig,
    Settings,
)
from .state import ENV_URL, StateLocation, mask_url
from .state import location as state_location
from .toml import Raw, config_toml
from .values import url_secrets
from .watcher import ConfigWatcher

__all__ = [
    "ACTIVE",
    "APP_NAME",
    "DEFAULT_API_BASE_URL",
    "DEFAULT_TOKEN_URL",
    "ENV_URL",
    "INACTIVE",
    "INVALID",
    "MAX_CONFIG_BYTES",
    "NUMBERS",
    "PROVIDERS",
    "SECTION",
    "SETTINGS_PATH",
    "SWITCHES",
    "ConfigWatcher",
    "FieldMap",
    "LoadedConfig",
    "Raw",
    "Settings",
    "StateLocation",
    "config_file",
    "config_path",
    "config_toml",
    "data_dir",
    "forget_default_location",
    "load",
    "load_for_tokens",
    "mask_url",
    "state_location",
    "url_secrets",
]
