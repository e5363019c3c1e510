"""Slow-connection flood against one daemon's TCP API; prints one JSON line per figure.

A daemon (``local`` preset) runs with a TLS handshake timeout of 1 s and a header
timeout of 2 s. The flood opens N connections without a certificate, a third each
idle, half a TLS handshake, and a header byte a second (tests/integration/flood.py).
Figures: how many the daemon held off (closed at accept, or closed by a timeout), the
time from the flood's start until the last was closed, the daemon's descriptors at
peak, and the latency of a local API call on the unix socket (what the CLI does)
during the flood, against the same call before it (the anchor).

    python benchmarks/bench_api_exposure.py [--connections 400]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshd.cli.client import DaemonClient
from tests.integration.daemon import Mesh
from tests.integration.flood import Flood

HANDSHAKE_S, HEADER_S = 1.0, 2.0


def emit(name: str, value: float, unit: str, **extra: object) -> None:
    print(
        json.dumps({"bench": "api_exposure", "name": name, "value": value, "unit": unit, **extra})
    )


def cli_latency_ms(client: DaemonClient) -> float:
    start = time.perf_counter()
    client.request("GET", "/v1/node")
    return (time.perf_counter() - start) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=400)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshd-bench-exposure-") as tmp:
        mesh = Mesh(Path(tmp))
        try:
            d = mesh.daemon("alpha")
            d.init()
            d.start(
                "--set",
                f"api.tls_handshake_timeout_s={HANDSHAKE_S}",
                "--set",
                f"api.header_timeout_s={HEADER_S}",
            )
            proc = psutil.Process(d.pid)
            client = DaemonClient(d.socket_path, timeout=10.0)
            idle = [cli_latency_ms(client) for _ in range(50)]
            fds_before = proc.num_fds()
            host, _, port = d.address.rpartition(":")
            flood = Flood(host, int(port))
            start = time.monotonic()
            flood.open(args.connections)
            peak = proc.num_fds()
            during: list[float] = []
            while flood.poll() and time.monotonic() - start < 30:
                during.append(cli_latency_ms(client))
                peak = max(peak, proc.num_fds())
                time.sleep(0.02)
            all_closed_s = time.monotonic() - start
            left = flood.still_open()
            flood.close()
        finally:
            mesh.close()
    emit("slow_connections_opened", args.connections, "connections")
    emit(
        "held_off",
        args.connections - left,
        "connections",
        refused_at_connect=flood.refused_at_connect,
    )
    emit(
        "time_to_close_all",
        round(all_closed_s, 2),
        "s",
        handshake_timeout_s=HANDSHAKE_S,
        header_timeout_s=HEADER_S,
    )
    emit("fds_before_flood", fds_before, "fds")
    emit("fds_at_peak", peak, "fds")
    emit("cli_latency_idle_p50", round(statistics.median(idle), 2), "ms")
    emit("cli_latency_flood_p50", round(statistics.median(during), 2), "ms", samples=len(during))
    emit("cli_latency_flood_max", round(max(during), 2), "ms")


if __name__ == "__main__":
    main()
