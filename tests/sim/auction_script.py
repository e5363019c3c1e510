"""Auction scenario scripts: the directives and commands auction scenarios add.

:func:`extension` is the :func:`~tests.sim.harness.run_scenario` hook; scripts live in
``scenarios/auction/`` next to their golden traces. The trace shows the auction channel
only (sends, durable records, decisions, starts and stops), not membership.

Directives:  ``capacity NODES cpus=N mem=SIZE [disk=SIZE]`` | ``membership on`` |
             ``witness NODES``
Commands:    ``submit NODE WID [cpus=] [mem=] [disk=] [tenant=] [nodes=a,b] [avoid=a,b]``
             ``telemetry NODE [load=X] [mem=SIZE] [disk=SIZE]`` | ``telemetry NODE auto``
             ``on NODE EVENT: COMMAND ...`` (one-shot, right after that step)
             ``crash NODE on EVENT [after|mid|torn]`` (see :meth:`Fleet.arm`)
             ``check placed WID on NODE [gen G]`` | ``check unplaced WID``
             ``check outcome WID decided|failed [TEXT...]`` | ``check converged``
             ``check committed NODE CPUS`` | ``check holds NODE COUNT``
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshd.config import Config
from meshd.core.auction import Capacity, Telemetry
from meshd.units import parse_size
from tests.sim.auction import AUCTION, DEFAULT_CAPACITY, auction_sim, workload
from tests.sim.harness import Simulation

DIRECTIVES = ("capacity", "membership", "witness")


def _kv(words: list[str]) -> dict[str, str]:
    return dict(w.split("=", 1) for w in words)


def _names_of(sim: Simulation, word: str) -> list[str]:
    return list(sim.nodes) if word == "all" else [n for n in word.split(",") if n]


def extension(
    sc: Any, cfg: Config
) -> tuple[Simulation, dict[str, Callable[[list[str]], list[str]]]]:
    """The :func:`~tests.sim.harness.run_scenario` hook for auction scenarios."""
    membership = any(d == "membership" and args == ["on"] for d, args in sc.extras)
    sim, fleet = auction_sim(sc.seed, sc.nodes, cfg, sc.link, membership=membership, start=False)
    sim.trace_channels = {AUCTION}
    for d, args in sc.extras:
        if d == "capacity":
            kv = _kv(args[1:])
            cap = Capacity(
                float(kv["cpus"]), parse_size(kv["mem"]), parse_size(kv.get("disk", "100GiB"))
            )
            for name in _names_of(sim, args[0]):
                fleet.capacities[name] = cap
        elif d == "witness":
            fleet.witnesses.update(_names_of(sim, args[0]))

    def submit(args: list[str]) -> list[str]:
        kv = _kv(args[2:])
        w = workload(
            args[1],
            float(kv.get("cpus", "1")),
            parse_size(kv.get("mem", "1GiB")),
            parse_size(kv.get("disk", "0")),
            kv.get("tenant"),
            frozenset(n for n in kv.get("nodes", "").split(",") if n),
            frozenset(n for n in kv.get("avoid", "").split(",") if n),
        )
        fleet.submit(args[0], w)
        return []

    def telemetry(args: list[str]) -> list[str]:
        sim._cmd("telemetry " + " ".join(args))
        if args[1:] == ["auto"]:
            fleet.set_telemetry(args[0], None)
            return []
        kv = _kv(args[1:])
        cap = fleet.capacities.get(args[0], DEFAULT_CAPACITY)
        t = Telemetry(
            float(kv.get("load", "0")),
            parse_size(kv.get("mem", str(cap.memory))),
            parse_size(kv.get("disk", str(cap.disk))),
        )
        fleet.set_telemetry(args[0], t)
        return []

    def run(words: list[str]) -> None:
        verb, args = words[0], words[1:]
        if verb in table:
            table[verb](args)
        elif verb in ("crash", "restart", "start"):
            for name in _names_of(sim, args[0]):
                getattr(sim, verb)(name)
        elif verb == "heal":
            sim.heal()
        else:
            raise ValueError(f"unknown triggered command {verb!r}")

    def on(args: list[str]) -> list[str]:
        node, event = args[0], args[1].rstrip(":")
        action = args[2:]
        fleet.arm(node, event, lambda: run(action))
        return []

    def crash(args: list[str]) -> list[str]:
        if len(args) >= 3 and args[1] == "on":
            fleet.arm(args[0], args[2], None, args[3] if len(args) > 3 else "after")
        else:
            for name in _names_of(sim, args[0]):
                sim.crash(name)
        return []

    def check(args: list[str]) -> list[str]:
        what = args[0]
        live = sim.running()
        if what == "converged":
            return fleet.final_problems()
        if what in ("placed", "unplaced"):
            wid = args[1]
            want = None if what == "unplaced" else args[3]
            gen = int(args[5]) if len(args) > 5 else None
            bad = []
            for n in live:
                p = fleet.core(n).placements().get(wid)
                got = None if p is None else p.owner
                if got != want or (gen is not None and p is not None and p.generation != gen):
                    bad.append(f"{n} sees {wid} on {got} gen {p.generation if p else None}")
            return bad
        if what == "outcome":
            wid, kind, text = args[1], args[2], " ".join(args[3:])
            mine = [o for o in fleet.outcomes.values() if o.workload == wid]
            if not mine:
                return [f"no outcome for {wid}"]
            o = mine[-1]
            if kind == "decided" and o.placement is None:
                return [f"{wid} not decided: {o.reason}"]
            if kind == "failed" and (o.reason is None or text not in o.reason):
                return [f"{wid} did not fail with {text!r}: {o.reason or o.placement}"]
            return []
        if what == "committed":
            got = fleet.core(args[1]).ledger().committed.cpus
            return [] if abs(got - float(args[2])) < 1e-9 else [f"{args[1]} committed {got} cpus"]
        if what == "holds":
            got = len(fleet.core(args[1]).ledger().holds)
            return [] if got == int(args[2]) else [f"{args[1]} holds {got}"]
        raise ValueError(f"unknown check {what!r}")

    table: dict[str, Callable[[list[str]], list[str]]] = {
        "submit": submit,
        "telemetry": telemetry,
        "on": on,
        "crash": crash,
        "check": check,
    }
    return sim, table
