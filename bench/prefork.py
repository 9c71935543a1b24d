"""What the plugin costs a real prefork server, and how it sends from one.

    python bench/prefork.py [--workers 3] [--threads 2] [--requests 1000] [--seconds 20] [--rate 50]
                            [--drain 15] [--preload] [--sender thread|process|both] [--repeat 1]

gunicorn (sync workers) serves tests/prefork_app.py on loopback; ``--threads`` client threads
POST new clients to it, each request firing ``on_client_created``, paced at ``--rate`` requests/s
in all (0: as fast as they can), until ``--requests`` were made or ``--seconds`` passed. In the
same run, each on a fresh server and data dir: with the plugin sending to a sandbox that
enforces Constant Contact's 4 requests/s (its own process, as the real API is) — once per
``--sender`` mode (``sender = "thread"``: delivery in the host's process; ``"process"``: in one
sender process) — and with ``provider = "none"`` (the hook returns at once).
Printed: request p50/p99 for each and their ratio to ``provider = "none"``, the hook's own
p50/p99 inside the worker (the app's ``X-Hook-Us`` header) over every call *including each
worker's first* (a warm-up of 3 requests per worker comes first: its request latencies are
left out, its hook times are not) and the slowest first call, 429 ``throttled`` answers, and
the send rate (clients delivered per second, counted for ``--drain`` more seconds after the
load: at 4/s a 1,000-event backlog takes minutes, and the rate is what matters).
"""

import argparse
import os
import shutil
import signal
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


def run(provider: str, api_base_url: str, args, sender: str = "thread", round_: int = 0) -> dict:
    workdir = use_sandbox_config(api_base_url, sender=sender)  # sets REMIXCRM_CONFIG / REMIXCRM_DATA_DIR
    if provider != "constant_contact":
        (workdir / "config.toml").write_text(config_toml(provider))
    env = {**os.environ, "PREFORK_APP_LOG": "warning"}  # the plugin's warnings and errors into the server's log
    srv = Gunicorn(workdir / "run", env, "-w", str(args.workers), *(["--preload"] if args.preload else []))
    try:
        srv.start()
        srv.wait_workers(args.workers)
        before, window = stats(api_base_url), time.monotonic()
        first: dict[str, float] = {}  # each worker's first hook call (journal open, threads or process start)
        warm = []
        for i in range(3 * args.workers):  # warm up: first-request costs, counted in the hook figures
            _, headers = srv.post_client({"id": f"warm{i}", "email": f"warm{round_}-{sender}{provider}{i}@example.com"})
            first.setdefault(headers["x-pid"], float(headers["x-hook-us"]))
            warm.append(float(headers["x-hook-us"]))
        result = load(srv, args.threads, args.requests, args.seconds, args.rate, f"r{round_}{sender}{provider}-")
        result["hooks"] += warm
        result["first"] = sorted(first.values())
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
        sender_log = workdir / "data" / "constant_contact" / "sender.log"
        if sender_log.exists():
            errors += sender_log.read_text(errors="replace").count(" ERROR remixcrm_plugin_ctct")
        stop_sender_processes(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
    result["errors"] = errors
    return result


def stop_sender_processes(workdir: Path) -> None:
    """SIGTERM the sender process started for ``workdir`` (it would leave by itself when idle)."""
    mark = str(workdir).encode()
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes() if entry.isdigit() else b""
        except OSError:
            continue
        if mark in cmdline and b"remixcrm_plugin_ctct\x00worker" in cmdline:
            try:
                os.kill(int(entry), signal.SIGTERM)
            except ProcessLookupError:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s in all (0: unpaced)")
    parser.add_argument("--drain", type=float, default=15.0)
    parser.add_argument("--preload", action="store_true")
    parser.add_argument("--sender", choices=("thread", "process", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (the machine's noise shows as their spread)")
    args = parser.parse_args()
    senders = ("thread", "process") if args.sender == "both" else (args.sender,)
    print(
        f"prefork: gunicorn -w {args.workers}{' --preload' if args.preload else ''}, {args.threads} client threads, "
        f"up to {args.requests:,} requests at {args.rate or 'max'}/s or {args.seconds:.0f} s; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )

    proc, pipe, url = sandbox_process()
    rounds: list[dict[str, tuple[float, float, float]]] = []  # per round: mode -> (p50 ratio, p99 ratio, hook p99)
    failed = False
    try:
        faults(url, rate_limit=4)  # Constant Contact's limit
        for n in range(args.repeat):
            if args.repeat > 1:
                print(f"--- round {n + 1} of {args.repeat}")
            # the order turns each round (the machine's load drifts: no mode always goes first or last)
            order = [*senders, "none"]
            order = order[n % len(order) :] + order[: n % len(order)]
            found = {
                mode: run("none", url, args, round_=n)
                if mode == "none"
                else run("constant_contact", url, args, mode, round_=n)
                for mode in order
            }
            none = found.pop("none")
            ours = {sender: found[sender] for sender in senders}
            rounds.append(report(ours, none, args))
            failed = failed or any(r["failed"] for r in [*ours.values(), none])
            failed = failed or any(r["throttled"] for r in ours.values())
    finally:
        pipe.send("done")
        proc.terminate()
    if args.repeat > 1:
        print(f"--- median of {args.repeat} rounds [lowest – highest]")
        for sender in senders:
            p50s, p99s, hooks = zip(*(r[sender] for r in rounds), strict=True)
            print(
                f'sender = "{sender}": request latency ratio p50 x{statistics.median(p50s):.2f} '
                f"[{min(p50s):.2f} – {max(p50s):.2f}], p99 x{statistics.median(p99s):.2f} "
                f"[{min(p99s):.2f} – {max(p99s):.2f}]; hook p99 {statistics.median(hooks):.0f} µs "
                f"[{min(hooks):.0f} – {max(hooks):.0f}]"
            )
    return 1 if failed else 0


def report(ours: dict, none: dict, args) -> dict[str, tuple[float, float, float]]:
    rows = [(f'sender = "{sender}"', r) for sender, r in ours.items()] + [('provider = "none"', none)]
    for name, r in rows:
        lat = r["latencies"]
        print(
            f"{name:>20}: {len(lat):,} requests in {r['seconds']:.1f} s ({len(r['failed'])} failed); request "
            f"p50 {percentile(lat, 50) / 1000:.2f} ms, p99 {percentile(lat, 99) / 1000:.2f} ms; hook in the worker "
            f"(first calls included) p50 {percentile(r['hooks'], 50):.1f} µs, p99 {percentile(r['hooks'], 99):.1f} µs, "
            f"first calls {', '.join(f'{h:.0f}' for h in r['first'])} µs; {r['errors']} plugin ERROR lines in the logs"
        )
    found = {}
    for sender, r in ours.items():
        p50 = percentile(r["latencies"], 50) / percentile(none["latencies"], 50)
        p99 = percentile(r["latencies"], 99) / percentile(none["latencies"], 99)
        found[sender] = (p50, p99, percentile(r["hooks"], 99))
        print(
            f'sender = "{sender}": request latency with the plugin / without: p50 x{p50:.2f}, p99 x{p99:.2f}; '
            f"sandbox at 4 requests/s: {r['throttled']} x 429 throttled; {r['delivered']:,} delivered, "
            f"{r['send_rate']:.2f} events/s over load + {args.drain:.0f} s"
        )
    return found


if __name__ == "__main__":
    sys.exit(main())
