"""Fencing for real: three daemons, each with a BMC on the sushy-tools emulator.

A blade dies (its daemon and its workload killed, as a power loss would): the two
survivors vote, one powers it off through its BMC (the emulator reports Off, after
exactly one ForceOff), every survivor shows it ``fenced``, and its workload runs again
on a survivor at the next generation. The BMC endpoints reached the coordinator
through the mesh (each node shared its own); the password shows in no log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

try:
    from tests.integration.daemon import Daemon, Mesh, meshd, wait_for
    from tests.integration.sushy import Emulator, emulators
except ImportError:  # tests/integration is not a package, so pytest put it on sys.path
    from daemon import Daemon, Mesh, meshd, wait_for  # type: ignore[no-redef,import-not-found]
    from sushy import Emulator, emulators  # type: ignore[no-redef,import-not-found]

__all__ = ["emulators"]  # the fixture, used by name

Make = Callable[..., Emulator]
NAMES = ["alpha", "beta", "gamma"]
CAPACITY = ("--cpus", "4", "--memory", "2GiB", "--disk", "10GiB")
TICKER = "sh -c 'while true; do echo tick; sleep 0.2; done'"


def peers(d: Daemon) -> dict[str, str]:
    return {p["name"]: p["state"] for p in d.api("GET", "/v1/peers")}


def placement(d: Daemon, wid: str) -> dict[str, object]:
    return {r["workload"]: r for r in d.api("GET", "/v1/workloads")}.get(wid, {})


def set_bmc(d: Daemon, emu: Emulator, pw: Path) -> None:
    out = d.cli(
        "bmc", "set", "--url", emu.url, "--user", emu.user, "--password-file", pw,
        "--system", f"blade-{d.name}", "--ca-file", str(emu.ca_file),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def force_offs(emu: Emulator) -> list[tuple[str, str, int]]:
    return [r for r in emu.requests() if r[0] == "POST" and r[1].endswith("ComputerSystem.Reset")]


def test_the_majority_fences_a_dead_blade_once_and_runs_its_workload_elsewhere(
    mesh_factory: Mesh, emulators: Make, tmp_path: Path
) -> None:
    emu = emulators({f"blade-{n}": "On" for n in NAMES})
    pw = tmp_path / "bmc.pw"
    pw.write_text(emu.password)
    pw.chmod(0o600)
    nodes = mesh_factory.start_cluster(NAMES, *CAPACITY)
    for d in nodes:
        set_bmc(d, emu, pw)
    # Every node holds every other one's endpoint (shared over mTLS), 0600.
    shared = [
        d.data_dir / "identity" / "bmc-peers" / f"{o.name}.json"
        for d in nodes
        for o in nodes
        if o is not d
    ]
    wait_for("every BMC shared with every member", lambda: all(p.exists() for p in shared), 20)
    assert all(p.stat().st_mode & 0o077 == 0 for p in shared)

    out = meshd(
        "submit", "--name", "ticker", "--cpus", "1", "--memory", "64MiB",
        "--command", TICKER, "--json", data_dir=nodes[0].data_dir, check=True,
    )  # fmt: skip
    decision = json.loads(out.stdout)
    wid, owner, gen = decision["workload"], decision["owner"], decision["generation"]
    victim = next(d for d in nodes if d.name == owner)
    survivors = [d for d in nodes if d is not victim]
    try:
        wait_for("running", lambda: placement(victim, wid).get("state") == "running")
        pid = int(str(placement(victim, wid)["detail"]).rsplit(" ", 1)[1])

        # The blade loses power: its daemon and its workload are gone at once.
        victim.kill()
        os.kill(pid, signal.SIGKILL)

        wait_for(
            "the victim fenced on every survivor",
            lambda: all(peers(d).get(victim.name) == "fenced" for d in survivors),
            30,
        )
        assert emu.power(f"blade-{victim.name}") == "Off"
        assert len(force_offs(emu)) == 1, force_offs(emu)
        for d in survivors:
            assert emu.power(f"blade-{d.name}") == "On"
        status = survivors[0].api("GET", "/v1/fence")
        (row,) = [r for r in status["nodes"] if r["node"] == victim.name]
        assert row["state"] == "fenced" and len(row["votes"]) >= 2
        assert "verified" in row["evidence"]

        def moved() -> bool:
            rows = [placement(d, wid) for d in survivors]
            return all(
                r.get("generation") == gen + 1
                and r.get("owner") != victim.name
                and r.get("state") == "running"
                for r in rows
            )

        wait_for("the workload running on a survivor at the next generation", moved, 30)
        for d in survivors:
            assert emu.password not in d.log_path.read_text(errors="replace")
        text = meshd("fence", "status", data_dir=survivors[0].data_dir, check=True).stdout
        assert victim.name in text and "fenced" in text
    finally:  # workloads outlive their daemons: remove the moved copy by its own pid
        for row in (placement(d, wid) for d in survivors):
            detail = str(row.get("detail", ""))
            if row.get("state") == "running" and detail.rsplit(" ", 1)[-1].isdigit():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(detail.rsplit(" ", 1)[1]), signal.SIGKILL)
