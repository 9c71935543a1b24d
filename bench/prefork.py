"""What the plugin costs a real prefork server, and how it sends from one.

    python bench/prefork.py [--workers 3] [--threads 2] [--requests 1000] [--seconds 20] [--rate 50]
                            [--drain 15] [--preload] [--sender thread|process|both] [--repeat 1]
                            [--sequential]

gunicorn (sync workers) serves tests/prefork_app.py on loopback; ``--threads`` client threads
POST new clients to it, each request firing ``on_client_created``, paced at ``--rate`` requests/s
per server (0: as fast as they can), until ``--requests`` were made or ``--seconds`` passed.
One server per mode, each with its own data dir: the plugin with ``sender = "thread"``
(delivery in the host's processes), with ``sender = "process"`` (one sender process), each
sending to its own sandbox that enforces Constant Contact's 4 requests/s (its own process, as
the real API is), and ``provider = "none"`` (the hook returns at once).

By default the servers run side by side and every tick of the load sends one request to each,
in an order that turns: the machine's noise (other work on its 2 CPUs) then falls on all modes
alike, and the ratios compare like with like. The CPU a mode spends outside the request (the
sender process, sender threads) slows the others a little too. ``--sequential``: one server
after the other instead (the noise of each moment falls on one mode).

Printed: request p50/p99 for each mode and their ratio to ``provider = "none"``, the hook's own
p50/p99 inside the worker (the app's ``X-Hook-Us`` header) over every call *including each
worker's first* (a warm-up of 3 requests per worker comes first: its request latencies are left
out, its hook times are not) and the slowest first calls, 429 ``throttled`` answers, and the
send rate (clients delivered per second, counted for ``--drain`` more seconds after the load: at
4/s a 1,000-event backlog takes minutes, and the rate is what matters). ``--repeat``: rounds,
then the median and the spread of the ratios.
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

NONE = "none"


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1] if len(values) > 1 else values[0]


class Mode:
    """One server: the plugin in one ``sender`` mode (or ``provider = "none"``), its data dir,
    its sandbox, and what its requests measured."""

    def __init__(self, name: str, api_base_url: str | None, args, round_: int):
        self.name, self.api, self.round = name, api_base_url, round_
        self.workdir = use_sandbox_config(
            api_base_url or "http://127.0.0.1:9/v3", sender=name if api_base_url else "thread"
        )
        if name == NONE:
            (self.workdir / "config.toml").write_text(config_toml(NONE))
        env = {**os.environ, "PREFORK_APP_LOG": "warning"}  # the plugin's warnings and errors into the server's log
        self.srv = Gunicorn(
            self.workdir / "run", env, "-w", str(args.workers), *(["--preload"] if args.preload else [])
        )
        self.latencies: list[float] = []
        self.hooks: list[float] = []
        self.first: dict[str, float] = {}  # each worker's first hook call (journal open, threads or process start)
        self.failed: list[int] = []
        self.lock = threading.Lock()
        self.result: dict = {}
        self.cpu_start = (0.0, 0.0)

    def start(self, workers: int) -> None:
        self.srv.start()
        self.srv.wait_workers(workers)
        self.before, self.window = (stats(self.api) if self.api else None), time.monotonic()

    def cpu(self) -> tuple[float, float]:
        """CPU seconds used so far by the server's workers, and by its sender process (if any)."""
        workers = sum(cpu_seconds(pid) for pid in self.srv.workers())
        return workers, sum(cpu_seconds(pid) for pid in sender_processes(self.workdir))

    def post(self, i: int, measured: bool = True) -> None:
        prefix = f"r{self.round}{self.name}-" if measured else f"warm{self.round}{self.name}-"
        record = {
            "id": f"{prefix}{i}",
            "email": f"{prefix}{i}@example.com",
            "first_name": "Prefork",
            "last_name": str(i),
        }
        started = time.perf_counter()
        status, headers = self.srv.post_client(record)
        took = (time.perf_counter() - started) * 1e6
        with self.lock:
            if status != 200:
                self.failed.append(status)
                return
            hook = float(headers["x-hook-us"])
            self.first.setdefault(headers["x-pid"], hook)
            self.hooks.append(hook)
            if measured:
                self.latencies.append(took)

    def finish(self) -> None:
        workers, sender = self.cpu()
        self.result["cpu"] = (workers - self.cpu_start[0], sender - self.cpu_start[1])
        if self.api:
            after = stats(self.api)
            delivered = after["members"] - self.before["members"]
            self.result |= {
                "delivered": delivered,
                "send_rate": delivered / (time.monotonic() - self.window),
                "throttled": after["throttled"] - self.before["throttled"],
            }

    def stop(self) -> None:
        self.srv.stop()
        errors = self.srv.log().count(" ERROR remixcrm_plugin_ctct")
        sender_log = self.workdir / "data" / "constant_contact" / "sender.log"
        if sender_log.exists():
            errors += sender_log.read_text(errors="replace").count(" ERROR remixcrm_plugin_ctct")
        self.result["errors"] = errors
        stop_sender_processes(self.workdir)
        shutil.rmtree(self.workdir, ignore_errors=True)


def load(modes: list[Mode], threads: int, requests: int, seconds: float, rate: float) -> float:
    """``threads`` clients; tick i at start + i/``rate`` posts one new client to every mode, in an
    order that turns with i. Until ``requests`` ticks were made or ``seconds`` passed."""
    lock = threading.Lock()
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
            turn = i % len(modes)
            for mode in modes[turn:] + modes[:turn]:
                mode.post(i)

    pool = [threading.Thread(target=client_loop) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.monotonic() - begin


def one_round(groups: list[list[str]], urls: dict[str, str], args, round_: int) -> dict[str, Mode]:
    """Each group of modes runs side by side (one group of all modes, or one group per mode)."""
    done: dict[str, Mode] = {}
    for group in groups:
        modes = [Mode(name, urls.get(name), args, round_) for name in group]
        try:
            for mode in modes:
                mode.start(args.workers)
            for i in range(3 * args.workers):  # warm up: first-request costs, counted in the hook figures
                for mode in modes:
                    mode.post(i, measured=False)
            for mode in modes:
                mode.cpu_start = mode.cpu()
            took = load(modes, args.threads, args.requests, args.seconds, args.rate)
            for mode in modes:
                mode.result["seconds"] = took
            if any(m.api for m in modes):
                time.sleep(args.drain)  # a measuring window for the send rate, not synchronisation
            for mode in modes:
                mode.finish()
        finally:
            for mode in modes:
                mode.stop()
        done.update({m.name: m for m in modes})
    return done


def report(modes: dict[str, Mode], senders: list[str], args) -> dict[str, tuple[float, float, float]]:
    none = modes[NONE]
    for name in [*senders, NONE]:
        m = modes[name]
        title = f'sender = "{name}"' if name != NONE else 'provider = "none"'
        first = sorted(m.first.values(), reverse=True)[:3]
        print(
            f"{title:>20}: {len(m.latencies):,} requests in {m.result['seconds']:.1f} s ({len(m.failed)} failed); "
            f"request p50 {percentile(m.latencies, 50) / 1000:.2f} ms, "
            f"p99 {percentile(m.latencies, 99) / 1000:.2f} ms; "
            f"hook in the worker (first calls included) p50 {percentile(m.hooks, 50):.1f} µs, "
            f"p99 {percentile(m.hooks, 99):.1f} µs, slowest first calls {', '.join(f'{h:.0f}' for h in first)} µs; "
            f"{m.result['errors']} plugin ERROR lines in the logs; CPU per request: workers "
            f"{m.result['cpu'][0] / len(m.latencies) * 1000:.2f} ms, sender process "
            f"{m.result['cpu'][1] / len(m.latencies) * 1000:.2f} ms"
        )
    found = {}
    for name in senders:
        m = modes[name]
        p50 = percentile(m.latencies, 50) / percentile(none.latencies, 50)
        p99 = percentile(m.latencies, 99) / percentile(none.latencies, 99)
        found[name] = (p50, p99, percentile(m.hooks, 99))
        print(
            f'sender = "{name}": request latency with the plugin / without: p50 x{p50:.2f}, p99 x{p99:.2f}; '
            f"sandbox at 4 requests/s: {m.result['throttled']} x 429 throttled; {m.result['delivered']:,} delivered, "
            f"{m.result['send_rate']:.2f} events/s over load + {args.drain:.0f} s"
        )
    return found


def sender_processes(workdir: Path) -> list[int]:
    """The sender processes started for ``workdir`` (their command line names its data dir)."""
    mark, found = str(workdir).encode(), []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes() if entry.isdigit() else b""
        except OSError:
            continue
        if mark in cmdline and b"remixcrm_plugin_ctct\x00worker" in cmdline:
            found.append(int(entry))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads), from /proc; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_sender_processes(workdir: Path) -> None:
    """SIGTERM the sender process started for ``workdir`` (it would leave by itself when idle)."""
    for pid in sender_processes(workdir):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s per server (0: unpaced)")
    parser.add_argument("--drain", type=float, default=15.0)
    parser.add_argument("--preload", action="store_true")
    parser.add_argument("--sender", choices=("thread", "process", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (the machine's noise shows as their spread)")
    parser.add_argument("--sequential", action="store_true", help="one server after the other, not side by side")
    args = parser.parse_args()
    senders = ["thread", "process"] if args.sender == "both" else [args.sender]
    print(
        f"prefork: gunicorn -w {args.workers}{' --preload' if args.preload else ''} per mode, "
        f"{'one after the other' if args.sequential else 'side by side'}, {args.threads} client threads, "
        f"up to {args.requests:,} requests per mode at {args.rate or 'max'}/s or {args.seconds:.0f} s; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    sandboxes = {name: sandbox_process() for name in senders}  # one per data dir: each has its own 4/s
    rounds: list[dict[str, tuple[float, float, float]]] = []
    failed = False
    try:
        urls = {}
        for name, (_, _, url) in sandboxes.items():
            faults(url, rate_limit=4)  # Constant Contact's limit
            urls[name] = url
        for n in range(args.repeat):
            if args.repeat > 1:
                print(f"--- round {n + 1} of {args.repeat}")
            order = [*senders, NONE]
            order = order[n % len(order) :] + order[: n % len(order)]  # no mode always first or last
            groups = [[name] for name in order] if args.sequential else [order]
            modes = one_round(groups, urls, args, n)
            rounds.append(report(modes, senders, args))
            failed = failed or any(m.failed for m in modes.values())
            failed = failed or any(modes[name].result["throttled"] for name in senders)
    finally:
        for proc, pipe, _ in sandboxes.values():
            pipe.send("done")
            proc.terminate()
    if args.repeat > 1:
        print(f"--- median of {args.repeat} rounds [lowest – highest]")
        for name in senders:
            p50s, p99s, hooks = zip(*(r[name] for r in rounds), strict=True)
            print(
                f'sender = "{name}": request latency ratio p50 x{statistics.median(p50s):.2f} '
                f"[{min(p50s):.2f} – {max(p50s):.2f}], p99 x{statistics.median(p99s):.2f} "
                f"[{min(p99s):.2f} – {max(p99s):.2f}]; hook p99 {statistics.median(hooks):.0f} µs "
                f"[{min(hooks):.0f} – {max(hooks):.0f}]"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
