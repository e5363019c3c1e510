"""Networks: from `meshd network create|rm` to every node knowing it.

Three `meshd run` daemons on 127.0.0.1 (the ``local`` preset). Timed from just before
the CLI starts:

* ``create_cli_s``: `meshd network create NAME --subnet CIDR` on alpha returns (the
  record is signed, fsynced and handed to gossip);
* ``create_all_s``: every node's `GET /v1/networks` lists it (gossip; push-pull
  anti-entropy repairs a loss);
* ``rm_all_s``: after `meshd network rm NAME` on gamma, no node lists it;
* ``catchup_s``: beta was stopped while a network was created; from beta's restart
  being ready to beta listing it (anti-entropy alone: the gossip went while it was down).

The anchor in the same run is ``drain_all_s``: a drain record (the same carrier,
`meshd.shell.replica`) from `POST /v1/nodes/gamma/drain` on alpha to every node's
`peers` showing it.

Run: .venv/bin/python benchmarks/bench_networks.py [--runs 10]
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

from tests.integration.daemon import Daemon, Mesh, wait_for  # noqa: E402


def emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def names(d: Daemon) -> set[str]:
    return {n["name"] for n in d.api("GET", "/v1/networks")["networks"]}


def drained(d: Daemon) -> set[str]:
    return {p["name"] for p in d.api("GET", "/v1/peers") if p["draining"]}


def poll(what: str, cond: Any, timeout: float = 60) -> None:
    wait_for(what, cond, timeout)


def one_run(nodes: list[Daemon], i: int) -> dict[str, float]:
    alpha, _, gamma = nodes
    name = f"net{i}"
    t0 = time.monotonic()
    out = alpha.cli("network", "create", name, "--subnet", f"10.{i % 250}.0.0/24")
    cli_s = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    poll("create everywhere", lambda: all(name in names(d) for d in nodes))
    all_s = time.monotonic() - t0
    t0 = time.monotonic()
    gamma.cli("network", "rm", name, check=True)
    poll("rm everywhere", lambda: all(name not in names(d) for d in nodes))
    rm_s = time.monotonic() - t0
    t0 = time.monotonic()
    alpha.api("POST", "/v1/nodes/gamma/drain")
    poll("drain everywhere", lambda: all(drained(d) == {"gamma"} for d in nodes))
    drain_s = time.monotonic() - t0
    alpha.api("POST", "/v1/nodes/gamma/undrain")
    poll("undrain everywhere", lambda: all(not drained(d) for d in nodes))
    return {"create_cli_s": cli_s, "create_all_s": all_s, "rm_all_s": rm_s, "drain_all_s": drain_s}


def catchup(nodes: list[Daemon], i: int) -> float:
    alpha, beta, _ = nodes
    name = f"late{i}"
    beta.stop()
    alpha.cli("network", "create", name, "--subnet", f"10.251.{i % 250}.0/24", check=True)
    beta.start()
    t0 = time.monotonic()
    poll("beta catches up", lambda: name in names(beta))
    return time.monotonic() - t0


def summarise(doc: dict[str, Any], key: str, xs: list[float]) -> None:
    doc[f"{key}_median"] = round(statistics.median(xs), 3)
    doc[f"{key}_max"] = round(max(xs), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--catchups", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-networks-") as tmp:
        mesh = Mesh(Path(tmp))
        try:
            nodes = mesh.start_cluster(["alpha", "beta", "gamma"])
            results = [one_run(nodes, i) for i in range(args.runs)]
            doc: dict[str, Any] = {"figure": "networks", "daemons": 3, "runs": args.runs}
            for key in ("create_cli_s", "create_all_s", "rm_all_s", "drain_all_s"):
                summarise(doc, key, [r[key] for r in results])
            emit(doc)
            ups = [catchup(nodes, i) for i in range(args.catchups)]
            doc = {"figure": "networks_catchup", "daemons": 3, "runs": args.catchups}
            summarise(doc, "catchup_s", ups)
            emit(doc)
        finally:
            mesh.close()


if __name__ == "__main__":
    main()
