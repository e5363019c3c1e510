"""Maintenance drain: from `meshd node drain` to every workload running elsewhere.

Three `meshd run` daemons on 127.0.0.1 (the ``local`` preset), N `process` workloads
(``sleep``) all on beta. Then, timed from just before the CLI starts:

* ``cli_s``: `meshd node drain beta --json` (run on gamma, a process of its own, as an
  operator would) returns: nothing is placed on beta any more;
* ``running_s``: every workload is `running` at its new owner (generation + 1), as
  gamma's view reports it (the owners' state gossip);
* ``gone_s``: beta's driver has no live process left (its copies stopped, SIGTERM).

Each run puts the workloads back on beta first (drain alpha and gamma, undrain them),
so every timed drain moves all N. The anchor in the same run is ``submit_s``: N fresh
submissions through alpha's socket, one after another, until all run (the same
auctions and starts, without a drain). Nomad's `node drain` and Proxmox HA's
maintenance mode can't run here; Nomad's default drain deadline is 1 h, the time a
job may take to migrate, not a measurement.

Run: .venv/bin/python benchmarks/bench_drain.py [--n 5,20] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshd.adapters.drivers.procfs import find_by_env  # noqa: E402
from tests.integration.daemon import Daemon, Mesh, wait_for  # noqa: E402

CAPACITY = ("--cpus", "64", "--memory", "64GiB", "--disk", "100GiB")


def emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def processes(d: Daemon) -> int:
    root = str(d.data_dir)
    return len([p for p, v in find_by_env("MESHD_ROOT", root) if v.startswith(root)])


def states(d: Daemon) -> dict[str, tuple[str, str, int]]:
    return {
        w["workload"]: (w["owner"], w["state"], w["generation"])
        for w in d.api("GET", "/v1/workloads")
    }


def drained(d: Daemon) -> set[str]:
    return {p["name"] for p in d.api("GET", "/v1/peers") if p["draining"]}


def set_drain(nodes: list[Daemon], names: list[str], draining: bool) -> None:
    verb = "drain" if draining else "undrain"
    for name in names:
        nodes[0].api("POST", f"/v1/nodes/{name}/{verb}")
    want = set(names) if draining else set()
    wait_for(f"{verb} {names} known everywhere", lambda: all(drained(d) == want for d in nodes), 30)


def all_on(d: Daemon, wids: set[str], owners: set[str]) -> bool:
    s = states(d)
    return all(s[w][0] in owners and s[w][1] == "running" for w in wids)


def one_drain(nodes: list[Daemon], wids: set[str]) -> dict[str, float]:
    alpha, beta, gamma = nodes
    # Everything back on beta, then nobody drained.
    set_drain(nodes, ["alpha", "gamma"], True)
    wait_for("all on beta", lambda: all_on(gamma, wids, {"beta"}), 120)
    set_drain(nodes, ["alpha", "gamma"], False)
    wait_for("only beta's processes", lambda: processes(alpha) + processes(gamma) == 0, 60)
    t0 = time.monotonic()
    out = gamma.cli("node", "drain", "beta", "--json", "--timeout", "120s", timeout=180)
    cli_s = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"drain failed: {out.stderr}")
    wait_for("all running elsewhere", lambda: all_on(gamma, wids, {"alpha", "gamma"}), 120)
    running_s = time.monotonic() - t0
    wait_for("beta's processes gone", lambda: processes(beta) == 0, 120)
    gone_s = time.monotonic() - t0
    set_drain(nodes, ["beta"], False)
    return {"cli_s": cli_s, "running_s": running_s, "gone_s": gone_s}


def bench(n: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        mesh = Mesh(Path(tmp))
        try:
            nodes = mesh.start_cluster(["alpha", "beta", "gamma"], *CAPACITY)
            alpha, _, gamma = nodes
            t0 = time.monotonic()
            wids = set()
            for i in range(n):
                body = {"name": f"job{i}", "cpus": 0.5, "memory": 16 << 20, "command": "sleep 3600"}
                wids.add(alpha.api("POST", "/v1/workloads", body)["workload"])
            wait_for("all running", lambda: all_on(gamma, wids, {"alpha", "beta", "gamma"}), 120)
            submit_s = time.monotonic() - t0
            results = [one_drain(nodes, wids) for _ in range(runs)]
            doc: dict[str, Any] = {"figure": "drain", "daemons": 3, "workloads": n, "runs": runs}
            for key in ("cli_s", "running_s", "gone_s"):
                xs = [r[key] for r in results]
                doc[f"{key}_median"] = round(statistics.median(xs), 3)
                doc[f"{key}_max"] = round(max(xs), 3)
            doc["submit_s"] = round(submit_s, 3)
            emit(doc)
        finally:
            mesh.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="5,20", help="workload counts, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    for n in (int(x) for x in args.n.split(",")):
        bench(n, args.runs)


if __name__ == "__main__":
    main()
