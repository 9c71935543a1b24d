"""What does a backlog cost? API requests per delivered contact, and the time to drain it.

    python bench/backlog.py [--events 10000] [--rows 50000] [--budget 120] [--outage 5]
                            [--skip-events] [--skip-backfill]

(a) outage:   --events unknown-consent clients recorded through the real hooks (a plugin manager
              loading the installed entry point, as RemixCRM does) while the sandbox answers every
              API call 503, and --outage seconds more (the sender meets the outage and backs off);
              then the API comes back.
(b) backfill: a --rows-row CSV export (unknown consent) through `remixcrm-ctct backfill` in its own
              process, the CLI's code path from reading the file to the last delivery.
Goals for both: <= 0.01 API requests per delivered contact, drained in <= 60 s.

Requests are the sandbox's own count of API calls (``/sandbox/stats`` ``api_requests``), from the
moment the API is back (a) or the command starts (b), polls and lookups included. The sandbox
enforces Constant Contact's 4 requests/s and runs in its own process, as the real API does; the
plugin's governor is at its default 4/s with the daily quota raised out of the way (the figures
say how many days of the real 10,000/day quota the backlog costs). A drain that is not done
within --budget seconds is stopped and projected from its rate.
"""

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from drain import faults, sandbox_process, stats
from sandbox_config import use_sandbox_config

DAILY_QUOTA = 10_000  # Constant Contact's requests per day


def wait_for(url: str, target: int, baseline: int, budget: float, started: float, done=lambda: False) -> int:
    """Poll the sandbox's counters (not API calls) until ``target`` contacts arrived, ``done()``
    or the budget ran out; returns how many arrived."""
    while True:
        arrived = stats(url)["members"] - baseline
        if arrived >= target or done() or time.monotonic() - started >= budget:
            return arrived
        time.sleep(0.5)  # a bench's polling interval, not synchronisation


def report(label: str, count: int, arrived: int, requests: int, took: float, finished: bool) -> bool:
    per = requests / arrived if arrived else float("inf")
    drain = took if finished else (took * count / arrived if arrived else float("inf"))
    days = per * count / DAILY_QUOTA
    how = f"{drain:.1f} s"
    if not finished:
        how = f"not done in {took:.0f} s ({arrived:,} of {count:,}); projected {drain / 60:,.0f} min"
    ok_per, ok_time = per <= 0.01, finished and drain <= 60
    print(
        f"{label}: {arrived:,} contacts delivered with {requests:,} API requests = {per:.3f} requests/contact "
        f"(goal <= 0.01: {'met' if ok_per else 'MISSED'}); time to drain: {how} (goal <= 60 s: "
        f"{'met' if ok_time else 'MISSED'}); at {DAILY_QUOTA:,} requests/day the backlog costs {days:.2f} day(s) "
        "of quota"
    )
    return ok_per and ok_time


def outage(events: int, budget: float, down: float) -> bool:
    from remixcrm_plugin_ctct import runtime as dispatch
    from remixcrm_plugin_ctct.hookspecs import make_plugin_manager

    logging.getLogger("remixcrm_plugin_ctct").setLevel(logging.ERROR)  # a 503 per row is the point, not news
    proc, pipe, url = sandbox_process()
    try:
        faults(url, rate_limit=4, error_rate=1.0, error_status=503)  # down: every API call 503
        use_sandbox_config(url, daily_quota=1_000_000_000)
        dispatch.reset(timeout=0)
        pm = make_plugin_manager()
        pm.check_pending()
        started = time.monotonic()
        for i in range(events):
            client = {"id": i, "email": f"backlog{i}@example.com", "first_name": "Backlog", "last_name": str(i)}
            pm.hook.on_client_created(client=client)
        recorded = time.monotonic() - started
        time.sleep(down)  # the outage goes on a while: the sender meets it and backs off, as it would
        before = stats(url)
        print(
            f"(a) {events:,} unknown-consent clients recorded through the hooks in {recorded:.1f} s while the API "
            f"answered 503, which it did for {down:g} s more ({before['api_requests']:,} requests refused); "
            "the API is back now"
        )
        faults(url, error_rate=0.0)
        started = time.monotonic()
        dispatch.runtime().worker.wake()
        arrived = wait_for(url, events, before["members"], budget, started)
        took = time.monotonic() - started
        requests = stats(url)["api_requests"] - before["api_requests"]
        dispatch.reset(timeout=5)  # sends in flight end before the sandbox goes
        return report("(a) outage drained", events, arrived, requests, took, arrived >= events)
    finally:
        pipe.send("done")
        proc.terminate()


def backfill(rows: int, budget: float) -> bool:
    proc, pipe, url = sandbox_process()
    try:
        faults(url, rate_limit=4)
        workdir = use_sandbox_config(url, daily_quota=1_000_000_000)
        export = Path(workdir) / "clients.csv"
        with open(export, "w", encoding="utf-8") as f:
            f.write("id,email,first_name,last_name,phone,company,job_title,email_opt_in\n")
            for i in range(rows):
                f.write(f"{i},backfill{i}@example.com,Backfill,{i},,,,\n")
        before = stats(url)
        command = [sys.executable, "-m", "remixcrm_plugin_ctct", "backfill", str(export), "--timeout", str(budget)]
        started = time.monotonic()
        run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ)
        assert run.stdout is not None
        out = run.stdout.read()
        _, status, usage = os.wait4(run.pid, 0)  # this child's own peak RSS (not the sandbox's)
        took, code = time.monotonic() - started, os.waitstatus_to_exitcode(status)
        peak_mb = usage.ru_maxrss / 1024
        after = stats(url)
        arrived, requests = after["members"] - before["members"], after["api_requests"] - before["api_requests"]
        lines = out.strip().splitlines()
        print(
            f"(b) `remixcrm-ctct backfill` of {rows:,} rows ({export.stat().st_size / 1e6:.1f} MB) exited "
            f"{code} after {took:.1f} s, peak RSS {peak_mb:.0f} MB; it said:"
        )
        for line in [*lines[:1], *[x for x in lines if x.startswith(("recorded", "backfill rows"))], *lines[-1:]]:
            print(f"      {line}")
        return report("(b) backfill drained", rows, arrived, requests, took, arrived >= rows)
    finally:
        pipe.send("done")
        proc.terminate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds to let each drain run (then projected)")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the API stays down after the hooks")
    parser.add_argument("--skip-events", action="store_true")
    parser.add_argument("--skip-backfill", action="store_true")
    args = parser.parse_args()
    print(f"backlog: Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; sandbox at 4 requests/s")
    met = True
    if not args.skip_events:
        met &= outage(args.events, args.budget, args.outage)
    if not args.skip_backfill:
        met &= backfill(args.rows, args.budget)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
