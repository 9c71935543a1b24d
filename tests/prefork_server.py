"""Start, drive and stop a real gunicorn serving tests/prefork_app.py on a loopback port.

Shared by tests/test_prefork.py and bench/prefork.py. Every wait here is bounded by a deadline;
``stop`` leaves no process behind (SIGTERM, then SIGKILL of the master and of its workers, by pid).
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent  # where prefork_app.py lives


def free_port() -> int:
    """A loopback port nobody listens on (gunicorn cannot bind port 0 and tell us which it got)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)  # polling interval, not synchronisation


def children(pid: int) -> set[int]:
    """The live child processes of ``pid``, from /proc (no psutil)."""
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return found


class Gunicorn:
    """``Gunicorn(workdir, env, "-w", "3", "--preload").start()``: the server, its master pid,
    its log (stderr) and a tiny HTTP client for the app."""

    def __init__(self, workdir: Path, env: dict, *args: str, app: str = "prefork_app:app"):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.args = [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--pythonpath",
            str(HERE),
            "--log-level",
            "info",
            *args,
            app,
        ]
        self.env = {**env, "XDG_RUNTIME_DIR": str(self.workdir)}  # gunicorn >= 25.1 puts its control socket there
        self.log_path = self.workdir / f"gunicorn-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    # --- life cycle ---
    def start(self, timeout: float = 15.0) -> "Gunicorn":
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.workdir,
            )
        if not wait_until(lambda: "Listening at" in self.log() or self.proc.poll() is not None, timeout):
            raise AssertionError(f"gunicorn did not listen within {timeout} s:\n{self.log()}")
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers(self) -> set[int]:
        return children(self.pid)

    def wait_workers(self, count: int, timeout: float = 15.0) -> set[int]:
        if not wait_until(lambda: len(self.workers()) >= count, timeout):
            raise AssertionError(
                f"gunicorn has {len(self.workers())} workers, not {count}, after {timeout} s:\n{self.log()}"
            )
        return self.workers()

    def terminate(self, timeout: float) -> float | None:
        """SIGTERM the master (a graceful stop); seconds until it exited, None if it did not in ``timeout``."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return time.monotonic() - started

    def stop(self) -> None:
        """Always safe to call: a graceful stop first; if the master does not exit, SIGKILL it and
        the workers it has at that moment (by pid, read from /proc just before)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.terminate(15.0) is None:
            workers = self.workers()
            self.proc.kill()
            for pid in workers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- the app ---
    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 15.0) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()

    def post_client(self, client: dict, timeout: float = 15.0) -> tuple[int, dict]:
        """Fire the hook for ``client`` in whichever worker accepts; (status, headers): ``x-pid``,
        ``x-hook-us``."""
        return self.request("POST", "/client", json.dumps(client).encode(), timeout)
