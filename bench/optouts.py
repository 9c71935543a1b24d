"""What opt-outs back to RemixCRM cost: the hook's answer time, and the requests of a poll.

    python bench/optouts.py [--opt-outs 10000] [--calls 2000]

(a) the hook ``email_marketing_opt_outs(since)`` through a real plugin manager, with --opt-outs
    opt-outs in the mirror: the scheduler's usual call (since = the newest recorded_at: nothing
    new) p50/p99, and the first call (since = None: every one) once. Goal: the usual call well
    under a millisecond (it runs in the host's thread).
(b) one poll of an idle mirror (nothing changed) and one after 3 people unsubscribed, against
    the sandbox over HTTP: requests (goal: 2 each) and time.
The sandbox runs in this process (its HTTP server thread), on the loopback.
"""

import argparse
import shutil
import statistics
import time

from sandbox_config import use_sandbox_config

from remixcrm_plugin_ctct import runtime
from remixcrm_plugin_ctct.hookspecs import make_plugin_manager
from remixcrm_plugin_ctct.sandbox import Sandbox
from remixcrm_plugin_ctct.store.interfaces import Suppression


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--opt-outs", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with Sandbox() as sb:
        workdir = use_sandbox_config(sb.api_base_url)
        rt = runtime.runtime()
        rt.mirror.store.record(
            Suppression(f"p{n}@example.com", "unsubscribed", 1.7e9 + n, "Contact", None) for n in range(args.opt_outs)
        )
        for n in range(3):
            sb.api.seed_contact(f"p{n}@example.com")
        assert rt.optouts.run(time.time())  # the seed: from now on, polls are catch-ups
        pm = make_plugin_manager()
        started = time.perf_counter()
        everything = [e for a in pm.hook.email_marketing_opt_outs(since=None) for e in a]
        first = time.perf_counter() - started
        newest = everything[-1]["recorded_at"]
        times = []
        for _ in range(args.calls):
            started = time.perf_counter_ns()
            pm.hook.email_marketing_opt_outs(since=newest)
            times.append((time.perf_counter_ns() - started) / 1000)
        times.sort()
        p99 = times[int(len(times) * 0.99) - 1]
        print(
            f"(a) hook, {args.opt_outs} opt-outs in the mirror: nothing new p50 {statistics.median(times):.0f} µs, "
            f"p99 {p99:.0f} µs; since=None ({len(everything)} entries) {first * 1000:.0f} ms"
        )
        for label, unsubscribe in (("idle", 0), ("3 unsubscribed", 3)):
            for n in range(unsubscribe):
                sb.api.unsubscribe(f"p{n}@example.com")
            before, started = sb.faults.requests, time.perf_counter()
            rt.optouts.run(time.time(), force=True)
            took = time.perf_counter() - started
            print(f"(b) poll, {label}: {sb.faults.requests - before} requests, {took * 1000:.0f} ms")
        runtime.reset()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
