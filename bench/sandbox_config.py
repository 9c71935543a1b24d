"""A throwaway RemixCRM config and data dir for the benches, pointed at a sandbox API."""

import os
import tempfile
from pathlib import Path

from remixcrm_plugin_ctct.sandbox import SEEDED_LIST_ID, SEEDED_TOKEN


def use_sandbox_config(api_base_url: str, extra: str = "") -> Path:
    """Write config.toml (the sandbox's static token, far-off expiry) in a fresh temp dir and
    point REMIXCRM_CONFIG and REMIXCRM_DATA_DIR of this process at it. ``extra``: more TOML lines."""
    workdir = Path(tempfile.mkdtemp())
    (workdir / "config.toml").write_text(
        f'[email_marketing]\nprovider = "constant_contact"\n[email_marketing.constant_contact]\n'
        f'access_token = "{SEEDED_TOKEN}"\ntoken_expires_at = 2099-01-01T00:00:00Z\n'
        f'list_id = "{SEEDED_LIST_ID}"\napi_base_url = "{api_base_url}"\n{extra}'
    )
    os.environ["REMIXCRM_CONFIG"] = str(workdir / "config.toml")
    os.environ["REMIXCRM_DATA_DIR"] = str(workdir / "data")
    return workdir
