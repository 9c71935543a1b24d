"""What the suppression mirror costs: requests to seed and to catch up, and the local lookups.

    python bench/mirror.py [--suppressed 10000] [--lookup 50000]

(a) seed:     --suppressed unsubscribed/deleted contacts in the sandbox (plus as many active
              ones); requests and time for the first refresh. Goal: one request per 500.
(b) catch-up: one opt-out after the seed, then a refresh: requests (goal: 2).
(c) lookup:   one ``suppressed()`` call with --lookup emails (mixed case) against a table of
              --lookup rows, and the ``record()`` of those rows. Goal: well under a second.
The sandbox runs in this process (its HTTP server thread), on the loopback.
"""

import argparse
import tempfile
import time
from pathlib import Path

from remixcrm_plugin_ctct.ctct.client import CtctClient
from remixcrm_plugin_ctct.delivery.mirror import Mirror
from remixcrm_plugin_ctct.sandbox import SEEDED_TOKEN, Sandbox
from remixcrm_plugin_ctct.store.interfaces import Suppression
from remixcrm_plugin_ctct.store.outbox import Outbox
from remixcrm_plugin_ctct.store.suppressions import SqliteSuppressions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--suppressed", type=int, default=10_000)
    parser.add_argument("--lookup", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Sandbox() as sb:
        now = time.time()
        with sb.api.lock:
            for n in range(2 * args.suppressed):
                sb.api.contacts[f"u{n}@example.com"] = {
                    "contact_id": f"c{n}",
                    "email_address": f"u{n}@example.com",
                    "list_memberships": [],
                    "permission_to_send": "unsubscribed" if n % 2 else "implicit",
                    "created": now - 86400,
                    "updated": now - 86400,
                    "opt_out": now - 86400,
                }
        client = CtctClient(sb.api_base_url, SEEDED_TOKEN)
        outbox = Outbox(Path(tmp) / "seed")
        mirror = Mirror(SqliteSuppressions(outbox))
        started = time.perf_counter()
        mirror.refresh(lambda request: request(client))
        seconds = time.perf_counter() - started
        print(f"(a) seed of {args.suppressed} suppressed: {mirror.requests} requests, {seconds:.2f} s")
        sb.api.unsubscribe("u0@example.com")
        before = mirror.requests
        mirror.refresh(lambda request: request(client), now=time.time() + 3600)
        print(f"(b) catch-up after one opt-out: {mirror.requests - before} requests")
        outbox.close()

        store = SqliteSuppressions(Outbox(Path(tmp) / "lookup"))
        entries = [Suppression(f"s{n}@example.com", "unsubscribed", 1.0, "Contact", None) for n in range(args.lookup)]
        started = time.perf_counter()
        store.record(entries)
        recorded = time.perf_counter() - started
        emails = [f"S{n}@Example.com" for n in range(0, 2 * args.lookup, 2)]  # half of them suppressed
        started = time.perf_counter()
        found = store.suppressed(emails)
        looked = time.perf_counter() - started
        print(f"(c) record {args.lookup}: {recorded:.2f} s; suppressed() of {len(emails)}: {looked:.3f} s")
        print(f"    ({len(found)} suppressed among them)")
        store.outbox.close()


if __name__ == "__main__":
    main()
