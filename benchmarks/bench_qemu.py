"""QEMU driver: boot to the guest's ready marker, bare and through the driver; idle RSS.

Prints one JSON line per figure:
* ``bare_boot_s``: the driver's own QEMU command line (qemu_args.argv, same kernel,
  initramfs, accelerator, microvm options) run directly, from exec to the ready marker
  in the console file: the anchor;
* ``driver_boot_s``: ``QemuDriver.create`` + ``start`` to the marker (start returns
  when the marker is seen); ``overhead_ratio`` is driver/bare of the medians.
  The two are interleaved run by run, so a neighbour's load hits both alike;
  ``loadavg_1m`` says how busy the machine was;
* ``idle_rss_mib``: the QEMU process's RSS (and PSS) with an idle 128 MiB guest, 2 s
  after the marker.

The guest is bootstrap/guest-image.sh's (built and cached on first use). Needs root
and qemu-system-x86; without them it prints a ``skipped`` line. Every QEMU started is
killed by its pid; every file is removed.

Usage: .venv/bin/python benchmarks/bench_qemu.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from meshd.adapters.drivers import qemu_host as host
from meshd.adapters.drivers.qemu import QemuDriver
from meshd.adapters.drivers.qemu_args import argv, choose_accel, plan_for, read_tsc_khz
from meshd.core.spec import WorkloadSpec

REPO = Path(__file__).resolve().parents[1]
MARKER = "MESHD-GUEST-READY"
MIB = 1024 * 1024
BOOT_TIMEOUT_S = 60.0


def emit(figure: str, **fields: object) -> None:
    print(json.dumps({"bench": "qemu", "figure": figure, **fields}), flush=True)


def guest() -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(REPO / "bootstrap/guest-image.sh")],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def spec(g: dict[str, str], wid: str) -> WorkloadSpec:
    return WorkloadSpec(
        name=wid,
        driver="qemu",
        cpus=1.0,
        memory=128 * MIB,
        kernel=g["MESHD_GUEST_VMLINUX"],
        initrd=g["MESHD_GUEST_INITRD"],
        ready_marker=MARKER,
        boot_timeout_s=BOOT_TIMEOUT_S,
    )


def kill_pidfile(pidfile: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGKILL)
        while (st := host.proc_stat(pid)) is not None and st[0] not in "ZX":
            time.sleep(0.005)


def bare_boot(g: dict[str, str], wdir: Path) -> float:
    """Exec of the driver's command line to the marker on the console."""
    wdir.mkdir(parents=True)
    accel = choose_accel()
    wid = wdir.name
    plan = plan_for(
        wid, spec(g, wid), wdir, "qemu-system-x86_64", accel.name, read_tsc_khz(), None,
        has_disk=False, has_seed=False,
    )  # fmt: skip
    needle = MARKER.encode()
    t0 = time.perf_counter()
    try:
        subprocess.run(argv(plan), check=True, capture_output=True, timeout=30)
        offset, seen = 0, b""
        while True:
            data, offset = host.read_from(plan.console, offset)
            seen = seen[-len(needle) :] + data
            if needle in seen:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > BOOT_TIMEOUT_S:
                raise RuntimeError("bare QEMU never printed the marker")
            time.sleep(0.005)
    finally:
        kill_pidfile(plan.pidfile)
        shutil.rmtree(wdir, ignore_errors=True)


async def driver_boot(g: dict[str, str], root: Path, wid: str, rss: dict[str, float]) -> float:
    """create + start to the marker through a fresh driver; fills ``rss`` if empty."""
    d = QemuDriver(root, lambda wid, st: None)
    try:
        t0 = time.perf_counter()
        await d.create(wid, spec(g, wid))
        st = await d.start(wid)
        took = time.perf_counter() - t0
        if st.state != "running":
            raise RuntimeError(st.detail)
        if not rss and st.pid:
            await asyncio.sleep(2.0)
            mem = psutil.Process(st.pid).memory_full_info()
            rss.update(rss=mem.rss / MIB, pss=mem.pss / MIB)
        return took
    finally:
        for w in await d.list():
            await d.destroy(w)
        await d.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("qemu-system-x86_64"):
        emit("driver_boot_s", skipped="needs root and qemu-system-x86 (bootstrap/setup.sh --test)")
        return
    g = guest()
    accel = choose_accel().name
    with tempfile.TemporaryDirectory(prefix="meshd-bench-qemu-") as tmp:
        bare: list[float] = []
        drv: list[float] = []
        rss: dict[str, float] = {}
        for i in range(args.runs):  # interleaved: a neighbour's load hits both alike
            bare.append(bare_boot(g, Path(tmp) / f"bare{i}"))
            drv.append(asyncio.run(driver_boot(g, Path(tmp) / "wl", f"bench-{i}", rss)))
    for figure, vals in (("bare_boot_s", bare), ("driver_boot_s", drv)):
        emit(
            figure,
            p50=round(statistics.median(vals), 3),
            min=round(min(vals), 3),
            max=round(max(vals), 3),
            unit="s",
            n=len(vals),
            accel=accel,
            machine="microvm",
            memory_mib=128,
            loadavg_1m=round(os.getloadavg()[0], 2),
        )
    emit(
        "overhead_ratio",
        value=round(statistics.median(drv) / statistics.median(bare), 3),
        unit="driver/bare",
        extra_s=round(statistics.median(drv) - statistics.median(bare), 3),
    )
    emit(
        "idle_rss_mib",
        rss=round(rss.get("rss", 0.0), 1),
        pss=round(rss.get("pss", 0.0), 1),
        unit="MiB",
        guest_memory_mib=128,
        accel=accel,
        after_ready_s=2.0,
    )


if __name__ == "__main__":
    main()
