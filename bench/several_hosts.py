"""Several hosts on one PostgreSQL store: do they share one rate limit, one token chain?

    REMIXCRM_TEST_POSTGRES=postgresql://postgres@127.0.0.1:5432/postgres python bench/several_hosts.py [--events 1000]

3 hosts (processes with their own data dirs, one state_url in a fresh schema) each accept a third
of --events through the hook, against the sandbox enforcing 4 requests/s with rotating refresh
tokens and an expired access token. Prints the combined events/s from the first hook to the last
delivery (goal >= 3.8 at 4 req/s), the 429 count (goal 0), the token calls (goal 1), and the
hook p50/p99 per host with PostgreSQL next to the same hosts on SQLite (goal: the same, as the
hook only writes the journal). The schema is dropped at the end.
"""

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from remixcrm_plugin_ctct.config import config_toml
from remixcrm_plugin_ctct.sandbox import SANDBOX_CLIENT_ID, SEEDED_LIST_ID, Sandbox

HOST = r"""
import json, sys, time
from remixcrm_plugin_ctct import flush
from remixcrm_plugin_ctct.hookspecs import make_plugin_manager
pm = make_plugin_manager()
name, count, deliver = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
print("ready", flush=True)
sys.stdin.readline()
took = []
for i in range(count):
    start = time.perf_counter()
    pm.hook.on_client_created(client={"id": f"{name}-{i}", "email": f"{name}.{i}@example.com", "first_name": name})
    took.append(time.perf_counter() - start)
    if i % 50 == 49:
        time.sleep(0.01)  # hooks arrive in bursts, as requests do
took.sort()
print(json.dumps({"p50": took[len(took) // 2] * 1e6, "p99": took[int(len(took) * 0.99)] * 1e6}), flush=True)
if deliver:
    print("flushed" if flush(3600) else "timeout", flush=True)
"""


def run_hosts(config: Path, base: Path, per_host: int, url: str | None, deliver: bool) -> list[dict]:
    import json

    procs = []
    for n in range(3):
        env = {**os.environ, "REMIXCRM_CONFIG": str(config), "REMIXCRM_DATA_DIR": str(base / f"host-{n}")}
        env.pop("REMIXCRM_CTCT_STATE_URL", None)
        if url:
            env["REMIXCRM_CTCT_STATE_URL"] = url
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", HOST, f"h{n}", str(per_host), "1" if deliver else "0"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    hooks = [json.loads(p.stdout.readline()) for p in procs]
    if deliver:
        for p in procs:
            assert p.stdout.readline().strip() == "flushed"
    for p in procs:
        p.kill()
        p.wait()
    return hooks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()
    url = os.environ.get("REMIXCRM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
    schema = "bench_" + secrets.token_hex(4)
    per_host = args.events // 3
    with tempfile.TemporaryDirectory() as tmp, Sandbox(access_token=None, rotating=True) as sandbox:
        base = Path(tmp)
        sandbox.faults.rate_limit = 4
        pair = sandbox.authz.seed(expired=True)
        keys = dict(
            list_id=SEEDED_LIST_ID,
            access_token=pair["access_token"],
            refresh_token=pair["refresh_token"],
            client_id=SANDBOX_CLIENT_ID,
            api_base_url=sandbox.api_base_url,
            token_url=sandbox.token_url,
            consent_guard=False,
        )
        config = base / "config.toml"
        config.write_text(config_toml("constant_contact", **keys, state_schema=schema))
        started = time.time()
        pg_hooks = run_hosts(config, base / "pg", per_host, url, deliver=True)
        ends = [c["end"] for c in sandbox.calls]
        span = max(ends) - min(c["start"] for c in sandbox.calls) if ends else float("nan")
        delivered = len(sandbox.members())
        # the same hosts on SQLite, hooks only (each host would pace itself alone: nothing to compare)
        offline = {**keys, "api_base_url": "http://127.0.0.1:9/v3", "token_url": "http://127.0.0.1:9/token"}
        (base / "sqlite.toml").write_text(config_toml("constant_contact", **offline))
        sqlite_hooks = run_hosts(base / "sqlite.toml", base / "sqlite", per_host, None, deliver=False)
        print(f"{3 * per_host} events, 3 hosts, sandbox at 4 requests/s, rotating refresh tokens, expired access token")
        print(f"delivered {delivered} in {time.time() - started:.1f} s: {delivered / span:.2f} events/s (goal >= 3.8)")
        print(f"429 throttled: {sandbox.faults.throttled} (goal 0); token calls: {sandbox.authz.token_calls} (goal 1)")
        print(f"invalid_grant: {sandbox.authz.invalid_grants} (goal 0)")
        for name, hooks in (("PostgreSQL", pg_hooks), ("SQLite", sqlite_hooks)):
            p50 = statistics.median(h["p50"] for h in hooks)
            p99 = max(h["p99"] for h in hooks)
            print(f"hook with {name:<10}: p50 {p50:.1f} µs, worst host's p99 {p99:.1f} µs")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
