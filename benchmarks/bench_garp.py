"""A reused address with a new MAC: time to the first ping reply, without and with
meshd's announcement of the guest's (IP, MAC) at attach (issue 13; root, QEMU).

The lab is tests/e2e/blades.py with ``guests=True`` (three blades, one L2 segment, a
probe namespace on it; the probe's ARP retries every 50 ms). Each run: workload A is
submitted with a fixed address X and the probe pings it until it answers (so the probe
holds X at A's MAC, REACHABLE); A is removed; workload B (another id, so another MAC)
is submitted with the same fixed X and the probe pings X from B's submit: the sample
is the time to the first reply (``ping_s``), and to B's ``MESHD-LEASE`` console line
(``lease_s``: the guest is up and holds X). Without an announcement the probe sends to
A's MAC until its entry ages out (REACHABLE 15-45 s, then DELAY/PROBE); with it the
entry takes B's MAC at B's attach.

Two labs in turn: ``before`` with ``[guests] announce_count = 0``, ``after`` with the
default (3 frames, 1 s apart). Guests use DHCP (``meshd.ip=dhcp``, busybox udhcpc:
they announce nothing themselves).

Usage: .venv/bin/python benchmarks/bench_garp.py [--runs 3]
Prints one JSON line per sample (``"sample": true``), then one per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from tests.e2e.blades import GUEST_BRIDGE, Chassis, chassis, workloads  # noqa: E402
from tests.e2e.guests import (  # noqa: E402
    build_guest,
    fields,
    meshd_networking_missing,
    pinger_result,
    start_pinger,
    wait_console,
)

TIMEOUT_S = 90.0
NETWORK = "garp"


def emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


def submit(lab: Chassis, k: int, name: str, ip: str, guest: dict[str, str]) -> tuple[str, float]:
    """Submit ``name`` at ``ip``, retried while X is still held by the removed one (its
    grant may last until ``[addresses] grant_ttl_s``, 120 s); the id and when it went in."""
    via = lab.blades[k % len(lab.blades)].daemon
    body = {
        "name": name, "cpus": 1, "memory": 128 * 1024 * 1024, "driver": "qemu",
        "kernel": guest["MESHD_GUEST_VMLINUX"], "initrd": guest["MESHD_GUEST_INITRD"],
        "ready_marker": guest["MESHD_GUEST_MARKER"], "boot_timeout_s": TIMEOUT_S,
        "cmdline": "meshd.ip=dhcp", "nics": [{"network": NETWORK, "ip": ip}],
    }  # fmt: skip
    deadline = time.monotonic() + 150
    while True:
        t0 = time.monotonic()
        try:
            return str(via.api("POST", "/v1/workloads", body)["workload"]), t0
        except Exception as exc:  # the address not yet released everywhere
            if time.monotonic() > deadline:
                raise AssertionError(f"cannot submit {name} at {ip}: {exc}") from exc
            time.sleep(0.5)


def console_of(lab: Chassis, wid: str) -> Path:
    via = lab.blades[0].daemon
    owner, deadline = "", time.monotonic() + TIMEOUT_S
    while not owner and time.monotonic() < deadline:
        owner = str(workloads(via).get(wid, {}).get("owner") or "")
        time.sleep(0.02)
    return lab.blade(owner).daemon.data_dir / "workloads" / wid / "console.log"


def remove(lab: Chassis, wid: str) -> None:
    lab.blades[0].daemon.api("DELETE", f"/v1/workloads/{wid}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(wid not in workloads(b.daemon) for b in lab.blades):
            return
        time.sleep(0.2)
    raise AssertionError(f"{wid} is still listed a minute after rm")


def neighbour(lab: Chassis, ip: str) -> str:
    out = subprocess.run(
        ["ip", "-n", lab.probe_ns, "neigh", "show", ip], capture_output=True, text=True, check=False
    ).stdout
    return out.strip()


def sample(lab: Chassis, mode: str, k: int, guest: dict[str, str]) -> dict[str, Any]:
    ip = f"{lab.guest_subnet}.{60 + k}"
    a, _ = submit(lab, k, f"garp-{mode}-a{k}", ip, guest)
    try:
        if pinger_result(start_pinger(lab.probe_ns, ip, TIMEOUT_S), TIMEOUT_S) is None:
            raise AssertionError(f"A at {ip} never answered ping")
    finally:
        remove(lab, a)
    held = neighbour(lab, ip)
    t_free = time.monotonic()
    b, t0 = submit(lab, k + 1, f"garp-{mode}-b{k}", ip, guest)
    pinger = start_pinger(lab.probe_ns, ip, TIMEOUT_S)
    try:
        line, t_lease = wait_console(console_of(lab, b), "MESHD-LEASE", TIMEOUT_S)
        t_ping = pinger_result(pinger, TIMEOUT_S)
        if fields(line).get("ip") != ip:
            raise AssertionError(f"B's lease is {line}, not {ip}")
        return {
            "ping_s": None if t_ping is None else round(t_ping - t0, 3),
            "lease_s": round(t_lease - t0, 3),
            "probe_held": held,
            "resubmit_wait_s": round(t0 - t_free, 3),  # X held after A's removal
        }
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
        remove(lab, b)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_garp: needs root (namespaces, taps, QEMU)", file=sys.stderr)
        return 2
    missing = meshd_networking_missing()
    if missing:
        emit({"figure": "garp", "skipped": missing})
        return 0
    guest = build_guest()
    results: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for mode, count in (("before", 0), ("after", 3)):
        base = Path(tempfile.mkdtemp(prefix="h13gb", dir="/tmp"))
        toml = f"\n[guests]\ncreate_bridges = false\nannounce_count = {count}\n"
        try:
            with chassis(
                base, ["b1", "b2", "b3"], guests=True, daemons=True,
                prefix="h13g", tag=mode[0], toml=toml,
            ) as lab:  # fmt: skip
                lab.blades[0].daemon.cli(
                    "network", "create", NETWORK, "--subnet", f"{lab.guest_subnet}.0/24",
                    "--bridge", GUEST_BRIDGE, check=True,
                )  # fmt: skip
                for k in range(args.runs):
                    got = sample(lab, mode, k, guest)
                    results[mode].append(got)
                    emit({"sample": True, "mode": mode, "run": k} | got)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    for mode, samples in results.items():
        pings = [s["ping_s"] for s in samples if s["ping_s"] is not None]
        emit({
            "figure": f"reused_address_first_reply_{mode}",
            "runs": len(samples),
            "answered": len(pings),
            "median_s": round(statistics.median(pings), 3) if pings else None,
            "min_s": min(pings, default=None),
            "max_s": max(pings, default=None),
            "lease_median_s": round(statistics.median(s["lease_s"] for s in samples), 3),
        })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
