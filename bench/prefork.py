"""What the plugin costs a real prefork server, and how it sends from one.

    python bench/prefork.py [--workers 3] [--threads 2] [--requests 1000] [--seconds 20] [--rate 50]
                            [--drain 15] [--preload]

gunicorn (sync workers) serves tests/prefork_app.py on loopback; ``--threads`` client threads
POST new clients to it, each request firing ``on_client_created``, paced at ``--rate`` requests/s
in all (0: as fast as they can), until ``--requests`` were made or ``--seconds`` passed. Twice in
the same run, each on a fresh server and data dir: with the plugin sending to a sandbox that
enforces Constant Contact's 4 requests/s (its own process, as the real API is), and with
``provider = "none"`` (the hook returns at once).
Printed: request p50/p99 for both and their ratio, the hook's own p50/p99 inside the worker
(the app's ``X-Hook-Us`` header), 429 ``throttled`` answers, and the send rate (clients
delivered per second, counted for ``--drain`` more seconds after the load: at 4/s a
1,000-event backlog takes minutes, and the rate is what matters).
"""

import argparse
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # prefork_server and the app live with the tests

from drain import faults, sandbox_process, stats  # noqa: E402
from prefork_server import Gunicorn  # noqa: E402
from sandbox_config import use_sandbox_config  # noqa: E402

from remixcrm_plugin_ctct.config import config_toml  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1] if len(values) > 1 else values[0]


def load(srv: Gunicorn, threads: int, requests: int, seconds: float, rate: float, prefix: str) -> dict:
    """``threads`` clients posting new clients (request i at start + i/``rate``) until ``requests``
    were made or ``seconds`` passed."""
    lock, latencies, hooks, failed = threading.Lock(), [], [], []
    issued = iter(range(requests))
    begin = time.monotonic()
    deadline = begin + seconds

    def client_loop():
        while time.monotonic() < deadline:
            with lock:
                i = next(issued, None)
            if i is None:
                return
            if rate:
                time.sleep(max(0.0, begin + i / rate - time.monotonic()))  # pacing the load
            record = {
                "id": f"{prefix}{i}",
                "email": f"{prefix}{i}@example.com",
                "first_name": "Prefork",
                "last_name": str(i),
            }
            started = time.perf_counter()
            status, headers = srv.post_client(record)
            took = (time.perf_counter() - started) * 1e6
            with lock:
                if status != 200:
                    failed.append(status)
                else:
                    latencies.append(took)
                    hooks.append(float(headers["x-hook-us"]))

    pool = [threading.Thread(target=client_loop) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {"latencies": latencies, "hooks": hooks, "failed": failed, "seconds": time.monotonic() - begin}


def run(provider: str, api_base_url: str, args) -> dict:
    workdir = use_sandbox_config(api_base_url)  # sets REMIXCRM_CONFIG / REMIXCRM_DATA_DIR for the server
    if provider != "constant_contact":
        (workdir / "config.toml").write_text(config_toml(provider))
    env = {**os.environ, "PREFORK_APP_LOG": "warning"}  # the plugin's warnings and errors into the server's log
    srv = Gunicorn(workdir / "run", env, "-w", str(args.workers), *(["--preload"] if args.preload else []))
    try:
        srv.start()
        srv.wait_workers(args.workers)
        before, window = stats(api_base_url), time.monotonic()
        for i in range(3 * args.workers):  # warm up: first-request costs (journal open, threads start)
            srv.post_client({"id": f"warm{i}", "email": f"warm-{provider}{i}@example.com"})
        result = load(srv, args.threads, args.requests, args.seconds, args.rate, f"{provider}-")
        if provider == "constant_contact":
            # delivered per second over the whole window (load plus drain), from the sandbox's own count
            time.sleep(args.drain)  # a measuring window, not synchronisation
            after = stats(api_base_url)
            result["delivered"] = after["members"] - before["members"]
            result["send_rate"] = result["delivered"] / (time.monotonic() - window)
            result["throttled"] = after["throttled"] - before["throttled"]
    finally:
        srv.stop()
        errors = srv.log().count(" ERROR remixcrm_plugin_ctct")
        shutil.rmtree(workdir, ignore_errors=True)
    result["errors"] = errors
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s in all (0: unpaced)")
    parser.add_argument("--drain", type=float, default=15.0)
    parser.add_argument("--preload", action="store_true")
    args = parser.parse_args()
    print(
        f"prefork: gunicorn -w {args.workers}{' --preload' if args.preload else ''}, {args.threads} client threads, "
        f"up to {args.requests:,} requests at {args.rate or 'max'}/s or {args.seconds:.0f} s; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )

    proc, pipe, url = sandbox_process()
    try:
        faults(url, rate_limit=4)  # Constant Contact's limit
        ours = run("constant_contact", url, args)
        none = run("none", url, args)
    finally:
        pipe.send("done")
        proc.terminate()

    for name, r in (("ctct (this plugin)", ours), ('provider = "none"', none)):
        lat = r["latencies"]
        print(
            f"{name:>20}: {len(lat):,} requests in {r['seconds']:.1f} s ({len(r['failed'])} failed); request "
            f"p50 {percentile(lat, 50) / 1000:.2f} ms, p99 {percentile(lat, 99) / 1000:.2f} ms; hook in the worker "
            f"p50 {percentile(r['hooks'], 50):.1f} µs, p99 {percentile(r['hooks'], 99):.1f} µs; "
            f"{r['errors']} plugin ERROR lines in the server log"
        )
    p50 = percentile(ours["latencies"], 50) / percentile(none["latencies"], 50)
    p99 = percentile(ours["latencies"], 99) / percentile(none["latencies"], 99)
    print(f"request latency with the plugin / without: p50 x{p50:.2f}, p99 x{p99:.2f}")
    print(
        f"sandbox at 4 requests/s: {ours['throttled']} x 429 throttled; {ours['delivered']:,} delivered, "
        f"{ours['send_rate']:.2f} events/s over load + {args.drain:.0f} s"
    )
    return 0 if not ours["failed"] and not none["failed"] and ours["throttled"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
