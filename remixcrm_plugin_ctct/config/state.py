"""Where the shared state lives: ``state_url`` and ``state_schema`` (PostgreSQL, for several
hosts), or nowhere said (the embedded SQLite files in the data dir). The environment variable
``REMIXCRM_CTCT_STATE_URL`` overrides the config's ``state_url`` (containers keep secrets there).

Read once, when a process builds its machinery (``runtime``): which store a process uses must
not change under its running threads, so a changed ``state_url`` needs a restart.
"""

import os
from pathlib import Path
from typing import Any, NamedTuple

from . import reading
from .settings import DEFAULT_STATE_SCHEMA
from .values import mask_url, state_schema, state_url

ENV_URL = "REMIXCRM_CTCT_STATE_URL"


class StateLocation(NamedTuple):
    url: str | None  # None: the embedded SQLite store in the data dir
    schema: str

    def __repr__(self) -> str:  # the URL may hold a password
        return f"StateLocation({mask_url(self.url) if self.url else None!r}, {self.schema!r})"


def location(path: Path, environ: dict[str, str] | None = None) -> StateLocation:
    """The state store for this process: the environment's URL, else the config's keys read on
    their own (a config broken elsewhere must not send a host back to its local files). Never raises."""
    env = os.environ if environ is None else environ
    default = DEFAULT_STATE_SCHEMA
    table: dict[str, Any] = {}
    try:
        marketing = reading.read_doc(path).get("email_marketing")
        section = marketing.get("constant_contact") if isinstance(marketing, dict) else None
        table = section if isinstance(section, dict) else {}
    except Exception:  # missing or unreadable: the watcher says so, in its own words
        table = {}
    problems: list[str] = []
    url = env.get(ENV_URL, "").strip() or state_url(table, problems)
    schema = state_schema(table, default, problems) if table else default
    return StateLocation(url or None, schema)
