"""Store commit throughput: single-row transactions per second, durable and not.

Prints one JSON line per figure. The anchors run the same single-row transaction on a
bare apsw connection with the same pragmas, so the gap to them is the Store's own
overhead (transaction bookkeeping, JSON encoding, error translation) and the rest is
SQLite and the disk (fdatasync per durable commit).

Usage: .venv/bin/python benchmarks/bench_store.py [--seconds 1.5] [--dir PATH]
The directory must be on the disk you care about: on tmpfs, fsync is free.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import apsw

from meshd.adapters.store import Store


def rate(step: Callable[[int], None], seconds: float) -> float:
    """Transactions per second of ``step`` over about ``seconds`` of wall time."""
    for i in range(20):  # warm the page cache and statement cache
        step(-i)
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):  # amortise the clock read
            n += 1
            step(n)
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def bench_store(path: Path, durable: bool, seconds: float) -> float:
    with Store.open(path) as store:

        def step(i: int) -> None:
            with store.transaction(durable=durable):
                store.append_event(time.time(), "bench", "subject", {"i": i})

        return rate(step, seconds)


def bench_raw(path: Path, synchronous: str, seconds: float) -> float:
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(5000)
    conn.pragma("journal_mode", "wal")
    conn.pragma("synchronous", synchronous)
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, ts REAL, data TEXT)")

    def step(i: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (ts, data) VALUES (?, ?)", (time.time(), f'{{"i":{i}}}'))
        conn.execute("COMMIT")

    try:
        return rate(step, seconds)
    finally:
        conn.close()


def emit(figure: str, value: float) -> None:
    line = {"bench": "store", "figure": figure, "value": round(value, 1), "unit": "tx/s"}
    print(json.dumps(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="wall time per figure")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=args.dir) as tmp:
        root = Path(tmp)
        emit("durable_tx_per_s", bench_store(root / "durable.db", True, args.seconds))
        emit("nondurable_tx_per_s", bench_store(root / "nondurable.db", False, args.seconds))
        emit("anchor_apsw_wal_full_tx_per_s", bench_raw(root / "full.db", "FULL", args.seconds))
        emit("anchor_apsw_wal_normal_tx_per_s", bench_raw(root / "nrm.db", "NORMAL", args.seconds))


if __name__ == "__main__":
    main()
