"""Daemon costs an operator sees: idle memory, start-up to ready, and enrolment time.

Prints one JSON line per figure:

* ``python_startup_ms``: ``python -c pass``, the anchor: no Python program starts faster
  on this machine, so ``startup_to_ready_ms`` minus it is meshd's own start-up
  (imports, identity and store, binding, TLS set-up).
* ``startup_to_ready_ms``: from spawning ``meshd run`` to the first 200 from
  ``GET /v1/health`` on the unix socket (what scripts and the test harness wait for).
* ``daemon_idle_rss_mib``: resident memory of ``meshd run`` once ready and idle ~2 s.
* ``enrol_ms``: ``meshd init --join`` end to end (process start, key, CSR, CA fetch,
  enrolment against a running seed, writing the identity and store).

Every daemon is a real process on 127.0.0.1 port 0 in a temporary directory; all are
stopped by pid and the directory removed, whatever happens.

Usage: .venv/bin/python benchmarks/bench_daemon.py [--starts 10] [--enrols 5] [--rss 3]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil

from meshd.cli.client import DaemonClient
from meshd.errors import ApiError, DaemonError

MESHD = (sys.executable, "-m", "meshd")
READY_TIMEOUT_S = 30.0
IDLE_S = 2.0


def summary(figure: str, samples: Sequence[float], unit: str) -> dict[str, object]:
    ordered = sorted(samples)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
    return {
        "bench": "daemon",
        "figure": figure,
        "p50": round(statistics.median(ordered), 2),
        "p90": round(p90, 2),
        "min": round(ordered[0], 2),
        "unit": unit,
        "n": len(ordered),
    }


def emit(doc: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def run_cli(*args: str | Path) -> str:
    proc = subprocess.run(
        [*MESHD, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"meshd {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


def timed_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def compile_bytecode() -> int:
    """Write meshd's bytecode, as an installed package has it, and say how many modules.

    A daemon started where ``PYTHONDONTWRITEBYTECODE`` is set (as on CI machines and in
    this sandbox) and no ``.pyc`` exists compiles every module from source at each
    start (~100 ms of CPU here), which a ``pip install`` never leaves it to do.
    ``bootstrap/setup.sh`` compiles them too; this makes a benchmark independent of it.
    """
    package = Path(__file__).resolve().parent.parent / "meshd"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)
    return sum(1 for _ in package.rglob("*.py"))


def wait_ready(data_dir: Path, proc: subprocess.Popen[bytes]) -> None:
    """Poll ``GET /v1/health`` on the node's socket until it answers 200."""
    sock = data_dir / "meshd.sock"
    client = DaemonClient(sock, timeout=2.0)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"meshd run exited {proc.returncode}; see {data_dir}/meshd.log")
        if time.monotonic() > deadline:
            raise SystemExit(f"meshd run not ready in {READY_TIMEOUT_S}s; see {data_dir}")
        if sock.exists():
            with contextlib.suppress(DaemonError, ApiError):
                client.request("GET", "/v1/health")
                return
        time.sleep(0.002)


@contextlib.contextmanager
def daemon(data_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """Run ``meshd run``; yield the process and its spawn-to-ready time in ms."""
    with (data_dir / "meshd.log").open("ab") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*MESHD, "run", "--data-dir", str(data_dir), "--preset", "local"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        try:
            wait_ready(data_dir, proc)
            ready_ms = (time.perf_counter() - start) * 1000.0
            yield proc, ready_ms
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=10, help="daemon starts to time")
    parser.add_argument("--rss", type=int, default=3, help="starts measured idle for RSS")
    parser.add_argument("--enrols", type=int, default=5, help="`init --join` runs to time")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        base = Path(tmp)
        seed = base / "seed"
        run_cli("init", "--name", "seed", "--domain", "bench.example", "--listen",
                "127.0.0.1:0", "--data-dir", seed)  # fmt: skip

        def python_pass() -> None:
            subprocess.run([sys.executable, "-c", "pass"], check=True)

        python_pass()  # warm the page cache like the daemon's first start below
        emit(summary("python_startup_ms", [timed_ms(python_pass) for _ in range(10)], "ms"))

        with daemon(seed):
            pass  # warm-up start: first-run costs (bytecode, page cache) are not startup
        ready, rss = [], []
        for i in range(max(args.starts, args.rss)):
            with daemon(seed) as (proc, ready_ms):
                ready.append(ready_ms)
                if i < args.rss:
                    time.sleep(IDLE_S)
                    rss.append(psutil.Process(proc.pid).memory_info().rss / 2**20)
        emit(summary("startup_to_ready_ms", ready[: args.starts], "ms"))
        emit(summary("daemon_idle_rss_mib", rss, "MiB"))

        with daemon(seed):
            client = DaemonClient(seed / "meshd.sock")
            enrol = []
            for i in range(args.enrols):
                token = client.request("POST", "/v1/tokens", {})["token"]
                argv = ("init", "--name", f"joiner{i}", "--join", token, "--listen",
                        "127.0.0.1:0", "--data-dir", base / f"joiner{i}")  # fmt: skip
                enrol.append(timed_ms(functools.partial(run_cli, *argv)))
        emit(summary("enrol_ms", enrol, "ms"))


if __name__ == "__main__":
    main()
