"""Does delivery survive token expiry without a human? A soak against the sandbox.

The sandbox issues access tokens that live ``--lifetime`` seconds (60 by default) and rotates
refresh tokens like Constant Contact. A separate host process loads the plugin through its
entry point and creates a client every ``--every`` seconds for ``--minutes`` minutes.

    python bench/token_soak.py [--minutes 5] [--every 3] [--lifetime 60]

Goal: every client delivered, zero invalid_grant, nobody asked to log in.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from remixcrm_plugin_ctct.sandbox import Sandbox
from remixcrm_plugin_ctct.sandbox.serve import seeded_config

HOST = r"""
import logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
from remixcrm_plugin_ctct import flush
from remixcrm_plugin_ctct.hookspecs import make_plugin_manager
pm = make_plugin_manager()
count, every = int(sys.argv[1]), float(sys.argv[2])
start = time.monotonic()
for n in range(count):
    time.sleep(max(0.0, start + n * every - time.monotonic()))  # the host's pace, not synchronisation
    pm.hook.on_client_created(client={"id": n, "email": f"soak{n}@example.com", "first_name": "Soak"})
print("flushed" if flush(60) else "timeout", flush=True)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--every", type=float, default=3, help="seconds between clients")
    parser.add_argument("--lifetime", type=float, default=60, help="access-token lifetime in seconds")
    args = parser.parse_args()
    count = int(args.minutes * 60 / args.every)

    with (
        tempfile.TemporaryDirectory() as tmp,
        Sandbox(access_token=None, access_lifetime=args.lifetime, rotating=True) as sandbox,
    ):
        config = Path(tmp, "config.toml")
        config.write_text(seeded_config(sandbox, args.lifetime))
        env = {**os.environ, "REMIXCRM_CONFIG": str(config), "REMIXCRM_DATA_DIR": str(Path(tmp, "data"))}
        started = time.monotonic()
        host = subprocess.run(
            [sys.executable, "-c", HOST, str(count), str(args.every)], env=env, capture_output=True, text=True
        )
        took = time.monotonic() - started
        delivered = len(sandbox.members())
        needs_login = host.stderr.count("needs re-authorisation")
        print(
            f"token_soak: {count} clients, one every {args.every:g} s for {took / 60:.1f} min, "
            f"access tokens living {args.lifetime:g} s"
        )
        print(f"  delivered            {delivered} of {count}")
        print(f"  token refreshes      {sandbox.authz.token_calls}")
        print(f"  invalid_grant        {sandbox.authz.invalid_grants}")
        print(f"  401s answered        {sandbox.unauthorized}")
        print(f"  asked for a login    {needs_login}")
        print(f"  host exit            {host.returncode} ({host.stdout.strip()})")
        ok = delivered == count and sandbox.authz.invalid_grants == 0 and needs_login == 0 and host.returncode == 0
        print("goal (all delivered, no invalid_grant, no login asked): " + ("met" if ok else "MISSED"))
        if not ok:
            sys.stderr.write(host.stderr[-4000:])
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
