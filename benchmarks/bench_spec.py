"""What the one workload model costs on the hot path.

Prints one JSON line per figure (microseconds per operation, median of rounds):

- ``submit_parse_us``: ``meshd.core.spec.parse_submission`` of a typical VM submission (a
  qemu guest with an image, cloud-init user-data, two services, labels): what the API
  does per ``POST /v1/workloads``.
- ``submit_parse_stdlib_us`` (anchor): ``json.loads`` of the same bytes and nothing
  else, the floor any hand-written checker built on the standard library starts from.
- ``confirm_encode_us`` / ``confirm_decode_us``: an auction ``Confirm`` whose placement
  carries that spec, through the codec (every node decodes each confirmation once).
- ``confirm_bytes``: its size; ``confirm_small_bytes`` the same for the benchmark's
  minimal workload (name and resources only), which is what ``bench_placement`` sends.

Usage: .venv/bin/python benchmarks/bench_spec.py [--n 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from meshd.core import spec
from meshd.core.auction import codec
from meshd.core.auction.messages import Confirm
from meshd.core.auction.model import Placement, Workload

SUBMISSION = json.dumps(
    {
        "name": "web-01",
        "cpus": 2,
        "memory": 2 << 30,
        "disk": 10 << 30,
        "driver": "qemu",
        "image": "/var/lib/meshd/images/debian-12.qcow2",
        "user_data": "#cloud-config\nhostname: web-01\npackages: [nginx]\n",
        "services": [{"name": "http", "port": 80}, {"name": "https", "port": 443}],
        "labels": {"rack": "a"},
        "requires": ["kvm"],
        "idempotency_key": "web-01-2026-12-02",
    }
).encode()


def timed(fn: Callable[[], object], n: int, rounds: int) -> float:
    results = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        results.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(results)


def emit(figure: str, value: float, unit: str, n: int, rounds: int) -> None:
    doc = {"bench": "spec", "figure": figure, "value": round(value, 2), "unit": unit}
    print(json.dumps({**doc, "n": n, "rounds": rounds}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    n, rounds = args.n, args.rounds

    emit(
        "submit_parse_us",
        timed(lambda: spec.parse_submission(SUBMISSION), n, rounds),
        "us",
        n,
        rounds,
    )
    emit(
        "submit_parse_stdlib_us", timed(lambda: json.loads(SUBMISSION), n, rounds), "us", n, rounds
    )

    w = Workload("6f1c2b0e-4a8d-4c55-9d38-5d1c7b8f9a01", spec.parse_submission(SUBMISSION).spec())
    confirm = Confirm(Placement(w, "beta", 3, "alpha-00000000abcd", "alpha", 1.7e9))
    body = codec.encode(confirm)
    emit("confirm_encode_us", timed(lambda: codec.encode(confirm), n, rounds), "us", n, rounds)
    emit("confirm_decode_us", timed(lambda: codec.decode(body), n, rounds), "us", n, rounds)
    emit("confirm_bytes", len(body), "bytes", 1, 1)
    small = Workload(w.id, spec.WorkloadSpec(name="w00001", cpus=1, memory=256 << 20))
    small_body = codec.encode(Confirm(Placement(small, "beta", 1, "alpha-1", "alpha", 1.7e9)))
    emit("confirm_small_bytes", len(small_body), "bytes", 1, 1)


if __name__ == "__main__":
    main()
