"""The main job's lab (``bash bootstrap/demo.sh`` as root): the whole run and each step.

Runs the lab ``--runs`` times (default 2), each brought up by ``bootstrap/demo.sh`` and
taken down by ``bootstrap/demo.sh down``, in a directory and under a namespace prefix of
its own (``/tmp/blab<pid>``, ``blab<pid>-``) so a lab someone left up is not touched.
Prints one JSON line per step of each run (``bench``, ``run``, ``step``, ``s``: the
step's duration, ``at_s``: seconds since demo.sh started, install included; the step
``total`` is the whole run to the guest back on a survivor), then one line per step
with the median over the runs, and the time ``down`` took.

Install is what setup.sh, sushy-venv.sh and guest-image.sh took: on a machine where
they already ran, a second or so; on a fresh Debian machine it includes apt-get.

Run (root): .venv/bin/python benchmarks/bench_lab.py [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_lab: the lab needs root (namespaces, bridges, QEMU)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["MESHD_LAB_DIR"] = f"/tmp/blab{os.getpid()}"
    env["MESHD_LAB_PREFIX"] = f"blab{os.getpid()}-"
    demo = ["bash", str(ROOT / "bootstrap/demo.sh")]
    steps: dict[str, list[float]] = {}
    downs: list[float] = []
    for run in range(1, args.runs + 1):
        try:
            up = subprocess.run(demo, env=env, capture_output=True, text=True, check=False)
            if up.returncode != 0:
                print(up.stdout[-3000:] + up.stderr[-2000:], file=sys.stderr)
                print(f"bench_lab: run {run} failed (exit {up.returncode})", file=sys.stderr)
                return 1
            timings = Path(env["MESHD_LAB_DIR"], "timings.jsonl").read_text().splitlines()
            for line in timings:
                row = json.loads(line)
                steps.setdefault(row["step"], []).append(row["s"])
                print(json.dumps({"bench": "lab", "run": run, **row}), flush=True)
        finally:
            start = time.monotonic()
            subprocess.run([*demo, "down"], env=env, capture_output=True, check=False)
            downs.append(time.monotonic() - start)
    for step, values in steps.items():
        row = {"bench": "lab", "step": step, "median_s": round(statistics.median(values), 2)}
        print(json.dumps(row | {"runs": len(values), "max_s": max(values)}), flush=True)
    down = {"bench": "lab", "step": "down", "median_s": round(statistics.median(downs), 2)}
    print(json.dumps(down | {"runs": len(downs)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
