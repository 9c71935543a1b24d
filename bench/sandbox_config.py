"""A throwaway RemixCRM config and data dir for the benches, pointed at a sandbox API."""

import datetime as dt
import os
import tempfile
from pathlib import Path

from remixcrm_plugin_ctct.config import config_toml
from remixcrm_plugin_ctct.config.toml import Value
from remixcrm_plugin_ctct.sandbox import SEEDED_LIST_ID, SEEDED_TOKEN

FAR_OFF = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)


def use_sandbox_config(api_base_url: str, **keys: Value) -> Path:
    """Write config.toml (the sandbox's static token, far-off expiry) in a fresh temp dir and
    point REMIXCRM_CONFIG and REMIXCRM_DATA_DIR of this process at it. ``keys``: more keys of our table."""
    workdir = Path(tempfile.mkdtemp())
    text = config_toml(
        access_token=SEEDED_TOKEN, token_expires_at=FAR_OFF, list_id=SEEDED_LIST_ID, api_base_url=api_base_url, **keys
    )
    (workdir / "config.toml").write_text(text)
    os.environ["REMIXCRM_CONFIG"] = str(workdir / "config.toml")
    os.environ["REMIXCRM_DATA_DIR"] = str(workdir / "data")
    return workdir
