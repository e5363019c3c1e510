"""Fencing one system through Redfish: ForceOff to a verified Off, beside fence_redfish.

Against the real sushy-tools 2.2.0 emulator (tests/integration/sushy.py: fake driver,
TLS with a test CA, bcrypt Basic auth, the power delay fixed at 0 s), each run sets the
system On, then times:

* ``meshd_force_off``: :meth:`RedfishClient.force_off` from the call to the verified
  Off (service root, the system by name with its 307 to the UUID path, the POST to
  the Reset target, PowerState reads until Off);
* ``fence_redfish_off`` / ``fence_redfish_status``: Debian's fence_redfish
  (fence-agents) run as a process with ``-o off`` / ``-o status``, timed the same way
  (its process start is part of what a Pacemaker fence costs: LAB-NOTES' anchor);
* ``meshd_power_state``: :meth:`RedfishClient.power_state`, the in-process read.

Prints one JSON line per figure (seconds: p50, p90, max over N runs).

Usage: .venv/bin/python benchmarks/bench_redfish.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meshd.adapters.redfish import RedfishClient  # noqa: E402
from meshd.config import local  # noqa: E402
from meshd.core.bmc import BmcEndpoint  # noqa: E402
from tests.integration.sushy import Emulator  # noqa: E402


def emit(figure: str, **fields: object) -> None:
    print(json.dumps({"bench": "redfish", "figure": figure, **fields}), flush=True)


def summary(values: list[float]) -> dict[str, object]:
    ordered = sorted(values)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))], 4)

    return {"n": len(ordered), "p50_s": pct(0.5), "p90_s": pct(0.9), "max_s": round(ordered[-1], 4)}


def power_on(emu: Emulator, name: str) -> None:
    emu.reset(name, "On")
    end = time.monotonic() + 10
    while emu.power(name) != "On":
        if time.monotonic() > end:
            raise RuntimeError("the emulator did not power the system on")
        time.sleep(0.01)


def timed(runs: int, setup: Callable[[], None], act: Callable[[], bool]) -> list[float]:
    out = []
    for _ in range(runs):
        setup()
        start = time.perf_counter()
        ok = act()
        elapsed = time.perf_counter() - start
        if not ok:
            raise RuntimeError("a run did not reach its result")
        out.append(elapsed)
    return out


def fence_redfish(emu: Emulator, name: str, action: str) -> Callable[[], bool]:
    agent = shutil.which("fence_redfish")
    assert agent is not None
    argv = [
        agent, "--ip", "127.0.0.1", "--ipport", str(emu.port), "--ssl", "--ssl-secure",
        "--username", emu.user, "--password", emu.password,
        "--systems-uri", f"/redfish/v1/Systems/{emu.uuid(name)}", "--action", action,
    ]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "REQUESTS_CA_BUNDLE": str(emu.ca_file)}

    def act() -> bool:
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=60, check=False
        )
        return proc.returncode in (0, 2)

    return act


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    cfg = local().bmc
    client = RedfishClient(cfg)
    with tempfile.TemporaryDirectory(prefix="bench-redfish-") as tmp:
        emu = Emulator(Path(tmp), {"blade1": "On"}, delay_s=0)
        try:
            emu.start()
            ep = BmcEndpoint(emu.url, emu.user, emu.password, "blade1", str(emu.ca_file))

            def ours() -> bool:
                outcome = asyncio.run(client.force_off(ep, time.monotonic() + cfg.deadline_s))
                return outcome.result == "verified_off" and outcome.posted

            def read() -> bool:
                reading = asyncio.run(client.power_state(ep, time.monotonic() + cfg.deadline_s))
                return reading.power_state == "On"

            on = lambda: power_on(emu, "blade1")  # noqa: E731
            emit("meshd_force_off", **summary(timed(args.runs, on, ours)), delay_s=0)
            emit("meshd_power_state", **summary(timed(args.runs, on, read)))
            if shutil.which("fence_redfish") is None:
                emit("fence_redfish_off", skipped="fence_redfish is not installed (fence-agents)")
            else:
                off = fence_redfish(emu, "blade1", "off")
                status = fence_redfish(emu, "blade1", "status")
                emit("fence_redfish_off", **summary(timed(args.runs, on, off)), delay_s=0)
                emit("fence_redfish_status", **summary(timed(args.runs, on, status)))
        finally:
            emu.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
