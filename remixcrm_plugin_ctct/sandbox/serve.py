"""``remixcrm-ctct sandbox``: run the stand-in on a loopback port until Ctrl-C, and print a
config that points the plugin at it (a fresh token pair from its authorization server)."""

import datetime as dt
import threading

from .authz import SANDBOX_CLIENT_ID
from .contacts import SEEDED_LIST_ID
from .server import Sandbox


def run(say, port: int = 8910, token_lifetime: float = 86400, long_lived: bool = False, rate_limit: float | None = 4,
        daily_quota: int | None = 10_000, error_rate: float = 0.0, latency: float = 0.0, stop: threading.Event | None = None) -> int:
    sandbox = Sandbox(access_token=None, port=port, access_lifetime=token_lifetime, rotating=not long_lived,
                      auto_approve_device=False)
    sandbox.faults.configure({"rate_limit": rate_limit, "daily_quota": daily_quota, "error_rate": error_rate, "latency": latency})
    pair = sandbox.authz.seed()
    expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=token_lifetime)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with sandbox:
        say(f"Constant Contact sandbox on {sandbox.base_url} (loopback only; Ctrl-C stops it)")
        say(f"  API {sandbox.api_base_url}, token endpoint {sandbox.token_url}")
        say(f"  seeded list {SEEDED_LIST_ID}; read-only view: {sandbox.base_url}/sandbox/view")
        say(f"  faults: POST {sandbox.base_url}/sandbox/faults  (e.g. {{\"next\": [[503, null]], \"drop_next\": 2}}); counters: GET /sandbox/stats")
        say("  device logins wait for you to open the verification URL that `login` prints")
        say("\nconfig.toml for it (point REMIXCRM_CONFIG at a copy):\n")
        say("[email_marketing]\nprovider = \"constant_contact\"\n\n[email_marketing.constant_contact]")
        say(f'access_token = "{pair["access_token"]}"\nrefresh_token = "{pair["refresh_token"]}"\ntoken_expires_at = {expires}')
        say(f'client_id = "{SANDBOX_CLIENT_ID}"\nlist_id = "{SEEDED_LIST_ID}"')
        say(f'api_base_url = "{sandbox.api_base_url}"\ntoken_url = "{sandbox.token_url}"\n')
        try:
            (stop or threading.Event()).wait()
        except KeyboardInterrupt:
            say("sandbox stopped")
    return 0
