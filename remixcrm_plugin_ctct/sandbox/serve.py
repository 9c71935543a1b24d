"""``remixcrm-ctct sandbox``: run the stand-in on a loopback port until Ctrl-C, and print a
config that points the plugin at it (a fresh token pair from its authorization server)."""

import datetime as dt
import threading
from collections.abc import Callable

from ..config import config_toml
from .authz import SANDBOX_CLIENT_ID
from .contacts import SEEDED_LIST_ID
from .server import Sandbox


def seeded_config(sandbox: Sandbox, token_lifetime: float) -> str:
    """A config.toml pointing the plugin at ``sandbox`` with a fresh token pair from its
    authorization server, expiring in ``token_lifetime`` seconds."""
    pair = sandbox.authz.seed()
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=token_lifetime)).replace(microsecond=0)
    return config_toml(
        access_token=pair["access_token"],
        refresh_token=pair["refresh_token"],
        token_expires_at=expires,
        client_id=SANDBOX_CLIENT_ID,
        list_id=SEEDED_LIST_ID,
        api_base_url=sandbox.api_base_url,
        token_url=sandbox.token_url,
    )


def run(
    say: Callable[[str], object],
    port: int = 8910,
    token_lifetime: float = 86400,
    long_lived: bool = False,
    rate_limit: float | None = 4,
    daily_quota: int | None = 10_000,
    error_rate: float = 0.0,
    latency: float = 0.0,
    stop: threading.Event | None = None,
) -> int:
    sandbox = Sandbox(
        access_token=None, port=port, access_lifetime=token_lifetime, rotating=not long_lived, auto_approve_device=False
    )
    sandbox.faults.configure(
        {"rate_limit": rate_limit, "daily_quota": daily_quota, "error_rate": error_rate, "latency": latency}
    )
    with sandbox:
        say(f"Constant Contact sandbox on {sandbox.base_url} (loopback only; Ctrl-C stops it)")
        say(f"  API {sandbox.api_base_url}, token endpoint {sandbox.token_url}")
        say(f"  seeded list {SEEDED_LIST_ID}; read-only view: {sandbox.base_url}/sandbox/view")
        say(
            f'  faults: POST {sandbox.base_url}/sandbox/faults  (e.g. {{"next": [[503, null]], "drop_next": 2}}); '
            "counters: GET /sandbox/stats"
        )
        say("  device logins wait for you to open the verification URL that `login` prints")
        say("\nconfig.toml for it (point REMIXCRM_CONFIG at a copy):\n")
        say(seeded_config(sandbox, token_lifetime))
        try:
            (stop or threading.Event()).wait()
        except KeyboardInterrupt:
            say("sandbox stopped")
    return 0
