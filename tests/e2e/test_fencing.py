"""Fencing end to end: blades in network namespaces, their BMCs on the sushy-tools
emulator (root; see tests/e2e/blades.py for the lab and its power switch).

Proves:
* the lab itself: every blade reaches its own BMC (`meshd bmc check`), Debian's
  `fence_redfish` reads the same state, a cut isolates one blade from its peers only,
  and an emulator power-off really ends everything on that blade;
* cut one blade's link: the majority fences it exactly once (one Reset POST for its
  system, none for the others), the emulator and `fence_redfish --action status` report
  it Off, the survivors show it `fenced`, and its process workloads run on survivors at
  a new generation; powered back on and restarted, it rejoins and runs none of its
  stale copies (each workload runs exactly once in the whole chassis);
* a blade cut off from its peers that still reaches every BMC fences no one, even
  left running (its power switch unwired) long after the majority fenced it;
* the same fence with the emulator's stock random 1-11 s power delay;
* two blades and a witness (`meshd run --witness`): kill a blade, the other fences it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import netns
from tests.e2e.blades import (
    Blade,
    Chassis,
    chassis,
    peer_states,
    running_in,
    submit_sleepers,
    workloads,
)

try:
    from tests.integration.daemon import MESHD, Daemon, wait_for
except ImportError:  # pragma: no cover
    from daemon import MESHD, Daemon, wait_for  # type: ignore[no-redef]


def _no_fence_command() -> str | None:
    proc = subprocess.run(
        [*MESHD, "fence", "status", "--help"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return "this meshd has no `meshd fence` command (the fencing shell is not in yet)"
    return None


reason = netns.available()
if reason is None and shutil.which("fence_redfish") is None:
    reason = "fence_redfish is not installed (bootstrap/setup.sh --test installs fence-agents)"
pytestmark = [pytest.mark.skipif(reason is not None, reason=reason or ""), pytest.mark.slow]
_no_fence = _no_fence_command() if reason is None else None
needs_fencing = pytest.mark.skipif(_no_fence is not None, reason=_no_fence or "")

FENCE_TIMEOUT_S = 30.0  # lease 20 s bounds one attempt; a takeover adds ~1 s
WORKLOADS = 6


@pytest.fixture
def base() -> Iterator[Path]:
    """A short base directory: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="fe", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- reading the mesh -------------------------------------------------------------------


def fence_nodes(d: Daemon) -> dict[str, dict[str, Any]]:
    out = d.cli("fence", "status", "--json")
    if out.returncode != 0:
        return {}
    return {n["node"]: n for n in json.loads(out.stdout)["nodes"]}


def events(d: Daemon, prefix: str) -> list[dict[str, Any]]:
    try:
        rows = d.api("GET", "/v1/events?limit=1000")
    except Exception:
        return []
    return [e for e in rows if str(e["kind"]).startswith(prefix)]


def fenced_by_majority(lab: Chassis, victim: Blade, survivors: list[Blade]) -> None:
    def done() -> bool:
        return all(fence_nodes(s.daemon).get(victim.name, {}).get("state") == "fenced"
                   for s in survivors)  # fmt: skip

    wait_for(f"{victim.name} fenced in every survivor's view", done, FENCE_TIMEOUT_S)


def assert_off_once(lab: Chassis, victim: Blade, others: list[Blade]) -> None:
    """One ForceOff for the victim (after a pause for stragglers), none for the rest,
    and both the emulator and fence_redfish say Off."""
    time.sleep(3.0)  # a second coordinator would post within takeover_s
    assert lab.resets(victim.name) == 1, lab.emulator.requests() if lab.emulator else None
    for o in others:
        assert lab.resets(o.name) == 0, f"{o.name} was powered off"
    assert lab.emulator is not None
    assert lab.watch is not None and lab.watch.power()[victim.name] == "Off"
    code, out = lab.fence_redfish(victim.name, "status")
    assert "Status: OFF" in out, (code, out)


# -- the lab works (runs without the fencing shell) --------------------------------------


def test_blades_reach_their_bmcs_and_a_cut_isolates_one(base: Path) -> None:
    with chassis(base, ["b1", "b2", "b3"], tag="l") as lab:
        assert lab.emulator is not None
        for b in lab.blades:
            out = b.daemon.cli("bmc", "check", "--json")
            assert out.returncode == 0, out.stderr
            check = json.loads(out.stdout)
            assert check["power_state"] == "On" and check["reachable"]
            assert check["system"].endswith(lab.emulator.uuid(b.name))
            assert lab.fence_redfish(b.name, "status") == (0, "Status: ON\n")

        b1, b2, b3 = lab.blades
        assert lab.watch is not None
        # A cut: b3 and its peers lose each other, and b3 still reaches its BMC. (With
        # fencing, the majority may power b3 off meanwhile: keep it running to look.)
        lab.watch.unwired.add("b3")
        b3.cut()
        wait_for(
            "b1 and b2 to stop seeing b3 alive, and b3 them",
            lambda: (
                peer_states(b1.daemon).get("b3") != "alive"
                and peer_states(b2.daemon).get("b3") != "alive"
                and "alive" not in {peer_states(b3.daemon).get(n) for n in ("b1", "b2")}
            ),
            15,
        )
        assert peer_states(b1.daemon).get("b2") == "alive"
        out = b3.daemon.cli("bmc", "check", "--json")
        assert json.loads(out.stdout)["reachable"] is True, out

        # The power switch: Off (from an outside client, if the mesh has not already
        # fenced b3) ends everything on the blade.
        lab.watch.unwired.discard("b3")
        assert b3.daemon.running and b3.pids()
        code, out = lab.fence_redfish("b3", "off")
        assert code == 0, out
        wait_for("b3's namespace to be empty", lambda: not b3.pids(), 10)
        assert not b3.daemon.running
        assert b1.daemon.running and b2.daemon.running


# -- fencing --------------------------------------------------------------------------------


@needs_fencing
def test_a_cut_blade_is_fenced_once_its_workloads_move_and_it_rejoins_clean(
    base: Path,
) -> None:
    with chassis(base, ["b1", "b2", "b3"], tag="c") as lab:
        marks = submit_sleepers(lab.blades[0].daemon, WORKLOADS)
        everywhere = [b.daemon for b in lab.blades]
        wait_for(
            "every sleeper running in every view",
            lambda: all(
                all(w["state"] == "running" for w in workloads(d).values())
                and set(workloads(d)) >= set(marks)
                for d in everywhere
            ),
            30,
        )
        before = workloads(lab.blades[0].daemon)
        owned: dict[str, list[str]] = {}
        for wid in marks:
            owned.setdefault(before[wid]["owner"], []).append(wid)
        victim = lab.blade(max(owned, key=lambda n: len(owned[n])))
        survivors = [b for b in lab.blades if b is not victim]
        moved = owned[victim.name]
        for wid in moved:
            assert running_in(victim, marks[wid]) == 1

        victim.cut()
        fenced_by_majority(lab, victim, survivors)
        assert_off_once(lab, victim, survivors)
        assert not victim.daemon.running  # powered off: the daemon went with the power
        for s in survivors:
            assert peer_states(s.daemon).get(victim.name) == "fenced"
            kinds = [e["kind"] for e in events(s.daemon, "fence.")]
            assert "fence.failed" not in kinds, kinds

        def replaced() -> bool:
            for s in survivors:
                view = workloads(s.daemon)
                for wid in moved:
                    w = view.get(wid, {})
                    if w.get("owner") in (None, victim.name) or w["state"] != "running":
                        return False
                    if w["generation"] <= before[wid]["generation"]:
                        return False
            return True

        wait_for("the victim's workloads running on survivors at a new generation", replaced, 30)
        for wid, arg in marks.items():
            assert sum(running_in(s, arg) for s in survivors) == 1, wid

        # Powered back on: it learns its workloads moved, runs none of them, rejoins.
        victim.heal()
        code, out = lab.fence_redfish(victim.name, "on")
        assert code == 0, out
        victim.boot()
        lab.wait_alive([b.name for b in lab.blades], 30)
        wait_for(
            "the restarted blade to see its old workloads on survivors",
            lambda: all(workloads(victim.daemon)[wid]["owner"] != victim.name for wid in moved),
            15,
        )
        time.sleep(2.0)  # a stale copy would have been started by now
        for wid, arg in marks.items():
            assert running_in(victim, arg) == 0, f"stale copy of {wid} runs on {victim.name}"
            views = {b.name: workloads(b.daemon).get(wid) for b in lab.blades}
            assert sum(running_in(b, arg) for b in lab.blades) == 1, (wid, views)

        def states() -> dict[str, tuple[str, int, str]]:
            view = workloads(victim.daemon)
            return {w: (view[w]["owner"], view[w]["generation"], view[w]["state"]) for w in marks}

        try:
            wait_for(
                "the restarted blade to see every workload running",
                lambda: all(st == "running" for _, _, st in states().values()),
                15,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {victim.name} sees {states()}") from None
        assert lab.resets(victim.name) == 2  # the ForceOff, and our own power-on


@needs_fencing
def test_a_blade_cut_from_its_peers_fences_no_one(base: Path) -> None:
    with chassis(base, ["b1", "b2", "b3"], tag="m") as lab:
        b1, b2, b3 = lab.blades
        assert lab.watch is not None
        # b3 keeps running even once the majority powers it off: the longest chance to
        # act as a minority that can reach every BMC.
        lab.watch.unwired.add("b3")
        b3.cut()
        fenced_by_majority(lab, b3, [b1, b2])
        time.sleep(10.0)  # well past b3's own suspicion, dead and check timeouts
        assert b3.daemon.running
        assert lab.resets("b1") == 0 and lab.resets("b2") == 0
        assert lab.resets("b3") == 1
        mine = fence_nodes(b3.daemon)
        for name in ("b1", "b2"):
            assert mine.get(name, {}).get("state") not in {"fencing", "fenced"}, mine
        assert not [e for e in events(b3.daemon, "fence.") if e["kind"] == "fence.off"]
        for peer in ("b1", "b2"):
            assert peer_states(b3.daemon).get(peer) not in {"fencing", "fenced"}


@needs_fencing
def test_fencing_with_the_stock_random_power_delay(base: Path) -> None:
    with chassis(base, ["b1", "b2", "b3"], delay_s=None, tag="r") as lab:
        b1, b2, b3 = lab.blades
        b3.cut()
        fenced_by_majority(lab, b3, [b1, b2])
        assert_off_once(lab, b3, [b1, b2])
        # The coordinator waited for the emulator's delay: it recorded Off only once the
        # system had changed, never at the ForceOff.
        assert lab.watch is not None
        applied = lab.watch.applies_at.get("b3")
        assert applied is not None, "the power watch never saw the pending ForceOff"
        offs = [e for s in (b1, b2) for e in events(s.daemon, "fence.off") if e["subject"] == "b3"]
        assert len(offs) == 1, offs
        asked = [e for s in (b1, b2) for e in events(s.daemon, "fence.powering-off")]
        assert offs[0]["ts"] >= applied, (offs[0]["ts"], applied)
        print(f"ForceOff to verified Off: {offs[0]['ts'] - asked[0]['ts']:.2f}s")


@needs_fencing
def test_two_blades_and_a_witness_fence_a_dead_blade(base: Path) -> None:
    with chassis(base, ["b1", "b2", "w"], witness="w", tag="w") as lab:
        b1, b2, w = lab.blades
        assert w.daemon.cli("status", "--json").returncode == 0
        b2.daemon.kill()  # the blade's OS died; its BMC still says On
        fenced_by_majority(lab, b2, [b1, w])
        assert_off_once(lab, b2, [b1])
