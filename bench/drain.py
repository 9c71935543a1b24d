"""How fast does the outbox drain, and what does a big backlog cost in memory?

    python bench/drain.py [--events 1000] [--skip-limited] [--rss-rows 100000]

(a) limited:   --events queued events against a sandbox that enforces 4 requests/s like
               Constant Contact, with the governor at its default 4/s. Goal: >= 3.8 events/s, 0 429s.
(b) unlimited: the same events against a sandbox with no limit and the governor raised,
               next to a plain requests.Session loop posting the same bodies in the same run.
               Goal: >= 0.8 of the plain loop's events/s.
(c) memory:    peak RSS of a process holding --rss-rows pending rows, over the same process idle.
               Goal: <= +30 MB.
The sandbox runs in its own process, as the real API does.
"""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time

import requests
from sandbox_config import use_sandbox_config

from remixcrm_plugin_ctct.sandbox import SEEDED_LIST_ID, SEEDED_TOKEN


def serve(conn) -> None:
    from remixcrm_plugin_ctct.sandbox import Sandbox

    sandbox = Sandbox().start()
    conn.send(sandbox.api_base_url)
    conn.recv()  # until the parent is done


def sandbox_process():
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=serve, args=(child,), daemon=True)
    proc.start()
    return proc, parent, parent.recv()


def faults(api_base_url: str, **settings) -> None:
    requests.post(api_base_url.removesuffix("/v3") + "/sandbox/faults", json=settings, timeout=5).raise_for_status()


def stats(api_base_url: str) -> dict:
    """The sandbox's own counters (not an API call: its rate limit does not apply)."""
    return requests.get(api_base_url.removesuffix("/v3") + "/sandbox/stats", timeout=5).json()


def drain(api_base_url: str, events: int, rate: float, prefix: str) -> float:
    """Queue ``events`` in a fresh outbox, then time the sender emptying it. Returns events/s."""
    from remixcrm_plugin_ctct import config, payload
    from remixcrm_plugin_ctct import runtime as dispatch
    from remixcrm_plugin_ctct.store import journal

    use_sandbox_config(api_base_url, requests_per_second=rate, daily_quota=1_000_000_000)
    dispatch.reset(timeout=0)
    rt = dispatch.runtime()
    for i in range(events):
        contact = payload.Contact(str(i), f"{prefix}{i}@example.com", {"first_name": "Drain", "last_name": str(i)})
        rt.journal.append(journal.encode(contact, "client_created", time.time()))
    rt.journal.fold_into(rt.outbox)
    assert config.load(config.config_path()).status == config.ACTIVE
    started = time.monotonic()
    rt.worker.wake()
    while not rt.worker.flush(5):  # flush waits on the sender; it returns once nothing due is left
        pass
    took = time.monotonic() - started
    dispatch.reset(timeout=5)
    return events / took


def plain_loop(api_base_url: str, events: int, prefix: str) -> float:
    session = requests.Session()
    headers = {"Authorization": f"Bearer {SEEDED_TOKEN}"}
    started = time.monotonic()
    for i in range(events):
        body = {
            "email_address": f"{prefix}{i}@example.com",
            "first_name": "Drain",
            "last_name": str(i),
            "list_memberships": [SEEDED_LIST_ID],
        }
        session.post(
            f"{api_base_url}/contacts/sign_up_form", json=body, headers=headers, timeout=(3.05, 10)
        ).raise_for_status()
    return events / (time.monotonic() - started)


RSS_CHILD = r"""
import json, os, resource, sys, tempfile, time
from pathlib import Path
rows = int(sys.argv[1])
work = Path(tempfile.mkdtemp())
from remixcrm_plugin_ctct.config import Raw, config_toml
(work / "config.toml").write_text(config_toml(access_token="t", token_expires_at=Raw("2099-01-01T00:00:00Z"),
                                              list_id="1d0c1bd5-7e5a-4d0e-9b64-5ad1c4b3f001",
                                              api_base_url="http://127.0.0.1:9/v3"))
os.environ["REMIXCRM_CONFIG"] = str(work / "config.toml")
os.environ["REMIXCRM_DATA_DIR"] = str(work / "data")
from remixcrm_plugin_ctct import runtime as dispatch
from remixcrm_plugin_ctct.store import outbox_admin
from remixcrm_plugin_ctct.delivery.send import QUOTA_KEY
from remixcrm_plugin_ctct.hookspecs import make_plugin_manager
pm = make_plugin_manager()
rt = dispatch.runtime()
rt.outbox.set_meta(QUOTA_KEY, repr(time.time() + 3600))  # paused: everything stays pending
pm.hook.on_client_created(client={"id": "warm", "email": "warm@example.com"})
rt.journal.fold_into(rt.outbox)
idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for i in range(rows):
    client = {"id": i, "email": f"rss{i}@example.com", "first_name": "Memory", "last_name": str(i)}
    pm.hook.on_client_created(client=client)
rt.journal.fold_into(rt.outbox)  # what the sender (or `status`) does with a backlog
pending = outbox_admin.summary(rt.outbox).counts.get("pending", 0)
rt.worker.close(0)
for _ in range(3):  # and what claiming from a big outbox costs
    row = rt.outbox.claim("bench")
    rt.outbox.release("bench")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"idle_kb": idle, "peak_kb": peak, "pending": pending}))
"""


def rss(rows: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, str(rows)], capture_output=True, text=True, timeout=900, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument(
        "--skip-limited", action="store_true", help="skip (a), which takes about 4 minutes for 1,000 events"
    )
    parser.add_argument("--rss-rows", type=int, default=100_000)
    args = parser.parse_args()
    met = True
    print(f"drain: {args.events:,} events; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")

    if not args.skip_limited:
        proc, pipe, url = sandbox_process()
        faults(url, rate_limit=4)
        rate = drain(url, args.events, 4.0, "limited")
        counters = stats(url)
        delivered = counters["members"]
        ok = rate >= 3.8 and counters["throttled"] == 0 and delivered == args.events
        met &= ok
        print(
            f"(a) sandbox enforcing 4 requests/s, governor 4/s: {rate:.2f} events/s, "
            f"{counters['throttled']} x 429 throttled, "
            f"{delivered} delivered; goal >= 3.8/s and 0 x 429: {'met' if ok else 'MISSED'}"
        )
        pipe.send("done")
        proc.terminate()

    proc, pipe, url = sandbox_process()
    plain = plain_loop(url, args.events, "plain")
    ours = drain(url, args.events, 100_000.0, "ours")
    ok = ours >= 0.8 * plain
    met &= ok
    print(
        f"(b) no limit, governor raised: outbox {ours:.0f} events/s vs plain requests.Session loop "
        f"{plain:.0f} events/s "
        f"= {ours / plain:.2f}; goal >= 0.8: {'met' if ok else 'MISSED'}"
    )
    pipe.send("done")
    proc.terminate()

    figures = rss(args.rss_rows)
    grown = (figures["peak_kb"] - figures["idle_kb"]) / 1024
    ok = grown <= 30 and figures["pending"] == args.rss_rows + 1
    met &= ok
    print(
        f"(c) {figures['pending']:,} pending rows: peak RSS {figures['peak_kb'] / 1024:.1f} MB, "
        f"idle {figures['idle_kb'] / 1024:.1f} MB, "
        f"+{grown:.1f} MB; goal <= +30 MB: {'met' if ok else 'MISSED'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
