"""Scrape-time gauges of what this node offers, has promised, runs and has fenced.

Read from the shells when Prometheus scrapes ``/metrics``; nothing is sampled in the
background. Base units as Prometheus names them (``_bytes``; CPUs are cores), checked by
``promtool check metrics`` in tests/integration/test_metrics.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from meshd.metrics import Registry
from meshd.shell.fencing import FencingShell
from meshd.shell.placement import PlacementShell
from meshd.shell.workloads import WorkloadRunner

Series = Iterable[tuple[Mapping[str, str], float]]
FENCE_STATES = ("fencing", "fenced", "fence-failed")


def register(
    m: Registry,
    placement: PlacementShell,
    runner: WorkloadRunner,
    fencing: FencingShell | None,
) -> None:
    def capacity() -> Series:
        c = placement.capacity
        yield {"resource": "cpus"}, c.cpus
        yield {"resource": "memory_bytes"}, float(c.memory)
        yield {"resource": "disk_bytes"}, float(c.disk)

    def promised(kind: str) -> Series:
        ledger = placement.core.ledger()
        r = ledger.committed if kind == "committed" else ledger.held
        yield {"resource": "cpus"}, r.cpus
        yield {"resource": "memory_bytes"}, float(r.memory)
        yield {"resource": "disk_bytes"}, float(r.disk)

    def workloads(local: bool) -> Series:
        me = placement.ctx.ident.name
        counts: Counter[str] = Counter()
        for p in placement.core.placements().values():
            if p.removed or (local and p.owner != me):
                continue
            counts[runner.state_of(p.workload_id, p.generation)[0]] += 1
        for state, n in sorted(counts.items()):
            yield {"state": state}, float(n)

    def fences() -> Series:
        counts = Counter(
            str(e["state"]) for e in (fencing.core.status() if fencing is not None else ())
        )
        for state in FENCE_STATES:
            yield {"state": state}, float(counts.get(state, 0))

    m.gauge("meshd_capacity", "What this node offers, by resource", collect=capacity)
    m.gauge(
        "meshd_allocated",
        "Resources committed to workloads placed here, by resource",
        collect=lambda: promised("committed"),
    )
    m.gauge(
        "meshd_held",
        "Resources held for bids still open, by resource",
        collect=lambda: promised("held"),
    )
    m.gauge(
        "meshd_workloads",
        "Workloads in this node's view of the mesh, by state",
        collect=lambda: workloads(False),
    )
    m.gauge(
        "meshd_local_workloads",
        "Workloads this node owns, by state",
        collect=lambda: workloads(True),
    )
    m.gauge("meshd_fence_episodes", "Members with a fence episode, by state", collect=fences)
