"""The kill-point matrix: kill -9 of meshd at every driver failpoint, restart, count.

For each driver (process; qemu when qemu-system-x86_64 and the cached guest from
bootstrap/guest-image.sh are here) and each failpoint it declares, a fresh one-node
mesh is killed at that point and restarted (tests/faults/kill.py). Prints one JSON
line per cell (lost, double, untracked: goal 0 each; reconcile_s: restart to settled)
and one summary line per driver.

Usage: .venv/bin/python benchmarks/bench_crash_points.py [--drivers process,qemu]
"""

from __future__ import annotations

import argparse
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

from tests.faults.kill import STUBBORN, points, run_point  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drivers", default="process,qemu")
    args = ap.parse_args()
    for driver in args.drivers.split(","):
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
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
