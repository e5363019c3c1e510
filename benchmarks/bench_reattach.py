"""Reattach after a restart: how long a fresh process driver takes to adopt N workloads.

One driver instance starts N ``sleep 300`` workloads and is discarded (its watches
dropped, the processes left running, as when meshd exits). A new instance then
reattaches every one of them: per workload it reads the pidfile and process.json,
checks /proc/<pid>/stat (state, start time), opens a pidfd and registers it with the
loop. The anchor is the floor of that work: reading /proc/<pid>/stat of the same N
processes, nothing else. Every process is killed by its process group at the end.

Prints one JSON line per figure (the goal in the brief: all 20 in < 1 s).
Usage: .venv/bin/python benchmarks/bench_reattach.py [--workloads 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from meshd.adapters.drivers.base import WorkloadState
from meshd.adapters.drivers.process import ProcessDriver, read_stat
from meshd.core.spec import WorkloadSpec


def ignore(wid: str, status: object) -> None:
    pass


async def bench(root: Path, n: int, rounds: int) -> None:
    first = ProcessDriver(root, ignore)
    pids: list[int] = []
    try:
        for i in range(n):
            wid = f"w{i:03d}"
            spec = WorkloadSpec(name=wid, cpus=0.1, memory=1 << 20, command="sleep 300")
            await first.create(wid, spec)
            st = await first.start(wid)
            assert st.pid is not None
            pids.append(st.pid)
        first.detach()
        wids = await first.list()
        times, floors = [], []
        for _ in range(rounds):
            driver = ProcessDriver(root, ignore)
            t0 = time.perf_counter()
            for wid in wids:
                st = await driver.reattach(wid)
                assert st.state is WorkloadState.RUNNING, st
            times.append((time.perf_counter() - t0) * 1000)
            driver.detach()
            t0 = time.perf_counter()
            for pid in pids:
                assert read_stat(pid) is not None
            floors.append((time.perf_counter() - t0) * 1000)
        base = {"bench": "reattach", "driver": "process", "workloads": n, "rounds": rounds}
        print(json.dumps(base | {"ms": round(statistics.median(times), 3)}))
        print(
            json.dumps(
                base | {"anchor": "proc_stat_read", "ms": round(statistics.median(floors), 3)}
            )
        )
    finally:
        kill_all(pids)


def kill_all(pids: list[int]) -> None:
    """SIGKILL each workload's process group, then reap it (they are our children)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-reattach-") as tmp:
        asyncio.run(bench(Path(tmp) / "workloads", args.workloads, args.rounds))


if __name__ == "__main__":
    main()
