"""Eight RemixCRM worker processes meet one expired access token and a rotating refresh token.

The sandbox rotates like Constant Contact (each refresh expires every earlier refresh token), so
a second refresh with the old token would be an invalid_grant and a lost login. Every process
must deliver, with exactly one token-endpoint call between them.
"""

import os
import subprocess
import sys

from conftest import RAW

from remixcrm_plugin_ctct.sandbox import SANDBOX_CLIENT_ID, Sandbox

WORKER = r"""
import sys
from remixcrm_plugin_ctct import flush
from remixcrm_plugin_ctct.hookspecs import make_plugin_manager
pm = make_plugin_manager()
n = sys.argv[1]
print("ready", flush=True)
sys.stdin.readline()  # every process is loaded; go at the same moment
for i in range(5):
    pm.hook.on_client_created(client={"id": f"{n}-{i}", "email": f"p{n}c{i}@example.com", "first_name": f"P{n}"})
print("flushed" if flush(60) else "timeout", flush=True)
"""


def test_eight_processes_refresh_once_and_deliver_everything(write_config, isolated):
    with Sandbox(access_token=None, rotating=True) as sandbox:
        pair = sandbox.authz.seed(expired=True)
        path = write_config(
            access_token=pair["access_token"],
            refresh_token=pair["refresh_token"],
            token_expires_at=RAW("2000-01-01T00:00:00Z"),
            client_id=SANDBOX_CLIENT_ID,
            client_secret=None,
            token_url=sandbox.token_url,
            api_base_url=sandbox.api_base_url,
        )
        env = {**os.environ, "REMIXCRM_CONFIG": str(path), "REMIXCRM_DATA_DIR": str(isolated / "data")}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(n)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for n in range(8)
        ]
        try:
            for p in procs:
                assert p.stdout.readline().strip() == "ready"
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            results = [p.communicate(timeout=120) for p in procs]
        finally:
            for p in procs:
                p.kill()
        for (out, err), p in zip(results, procs):
            assert p.returncode == 0 and out.strip() == "flushed", err
        assert len(sandbox.members()) == 8 * 5
        assert sandbox.authz.token_calls == 1
        assert sandbox.authz.invalid_grants == 0
