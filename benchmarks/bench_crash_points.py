"""The kill-point matrix: kill -9 of meshd at every driver failpoint, restart, count.

For each driver (process; qemu when qemu-system-x86_64 and the cached guest from
bootstrap/guest-image.sh are here) and each failpoint it declares, a fresh one-node
mesh is killed at that point and restarted (tests/faults/kill.py). Prints one JSON
line per cell (lost, double, untracked: goal 0 each; reconcile_s: restart to settled)
and one summary line per driver.

``firecracker`` rows are driver-level and use a stand-in (``"level": "driver"``,
``"stand_in"`` says which): a child process running only the driver is killed at the
point and a fresh driver reconciles (tests/faults/driver_kill.py); the Firecracker it
spawns, adopts and kills is tests/unit/firecracker_fake.py run as a program, because
this host has no firecracker binary and no hardware KVM. Their reconcile_s has no
daemon start-up in it, unlike the meshd-level rows.

Usage: .venv/bin/python benchmarks/bench_crash_points.py [--drivers process,qemu,firecracker]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUEST: dict[str, str] = {}  # the cached guest's files (bootstrap/guest-image.sh)
sys.path.insert(0, str(REPO))

from tests.faults.driver_kill import run_driver_point  # noqa: E402
from tests.faults.kill import STUBBORN, Outcome, kill_copies, points, run_point  # noqa: E402
from tests.integration.daemon import Mesh  # noqa: E402


def guest_args() -> tuple[str, ...] | None:
    if shutil.which("qemu-system-x86_64") is None:
        return None
    proc = subprocess.run(
        ["bash", str(REPO / "bootstrap/guest-image.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        return None
    g = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    GUEST.update(g)
    return ("--kernel", g["MESHD_GUEST_VMLINUX"], "--initrd", g["MESHD_GUEST_INITRD"],
            "--memory", "128MiB")  # fmt: skip


STAND_IN = (
    "tests/unit/firecracker_fake.py as the firecracker binary (none here, /dev/kvm is kvm_pvm)"
)


def firecracker_cells() -> list[Outcome]:
    cells = []
    for point in points("firecracker"):
        # Short: the API socket path must fit in sun_path (107 bytes).
        with tempfile.TemporaryDirectory(prefix="fck-", dir="/tmp") as tmp:
            try:
                out = asyncio.run(run_driver_point("firecracker", point, Path(tmp)))
            finally:
                kill_copies("firecracker", Path(tmp))
        cells.append(out)
        row = {"figure": "crash_point", **out.json(), "level": "driver", "stand_in": STAND_IN}
        print(json.dumps(row), flush=True)
    return cells


def summary(driver: str, cells: list[Outcome], **extra: str) -> None:
    print(
        json.dumps(
            {
                "figure": "crash_matrix",
                "driver": driver,
                "points": len(cells),
                "killed": sum(c.killed for c in cells),
                "lost": sum(c.lost for c in cells),
                "double": sum(c.double for c in cells),
                "untracked": sum(c.untracked for c in cells),
                "reconcile_s_median": round(statistics.median(c.reconcile_s for c in cells), 3),
                "reconcile_s_max": round(max(c.reconcile_s for c in cells), 3),
                **extra,
            }
        ),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drivers", default="process,qemu,firecracker")
    args = ap.parse_args()
    for driver in args.drivers.split(","):
        if driver == "firecracker":
            summary(driver, firecracker_cells(), level="driver", stand_in=STAND_IN)
            continue
        submit: tuple[str, ...] | None = ("--command", STUBBORN)
        if driver == "qemu":
            submit = guest_args()
        if submit is None:
            print(json.dumps({"driver": driver, "skipped": "qemu or its guest is not here"}))
            continue
        cells = []
        for point in points(driver):
            with tempfile.TemporaryDirectory(prefix="meshd-crash-") as tmp:
                mesh = Mesh(Path(tmp))
                args = submit
                if point.endswith("after_overlay") and GUEST:  # only an image passes it
                    args = (
                        "--image",
                        GUEST["MESHD_GUEST_DISK"],
                        "--disk",
                        "1GiB",
                        "--memory",
                        "128MiB",
                    )
                try:
                    out = run_point(mesh, driver, point, args)
                finally:
                    mesh.close()
            cells.append(out)
            print(json.dumps({"figure": "crash_point", **out.json()}), flush=True)
        summary(driver, cells)


if __name__ == "__main__":
    main()
