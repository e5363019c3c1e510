"""Building the placement model's values in tests, in the shapes tests think in."""

from __future__ import annotations

from typing import Any

from meshd.core.auction.model import Placement, Resources, Workload
from meshd.core.spec import WorkloadSpec

RES1 = Resources(1.0, 1 << 20, 0)


def spec(
    name: str,
    resources: Resources = RES1,
    tenant: str | None = None,
    driver: str = "fake",
    nodes: frozenset[str] = frozenset(),
    avoid: frozenset[str] = frozenset(),
    **fields: Any,
) -> WorkloadSpec:
    return WorkloadSpec(
        name=name,
        cpus=resources.cpus,
        memory=resources.memory,
        disk=resources.disk,
        tenant=tenant,
        driver=driver,  # type: ignore[arg-type]
        nodes=nodes,
        avoid=avoid,
        **fields,
    )


def workload(
    wid: str,
    name: str | None = None,
    tenant: str | None = None,
    resources: Resources = RES1,
    driver: str = "fake",
    nodes: frozenset[str] = frozenset(),
    avoid: frozenset[str] = frozenset(),
    **fields: Any,
) -> Workload:
    return Workload(wid, spec(name or wid, resources, tenant, driver, nodes, avoid, **fields))


def placement(
    wid: str,
    name: str,
    owner: str,
    generation: int,
    round_id: str,
    originator: str,
    at: float,
    resources: Resources = RES1,
    tenant: str | None = None,
    removed: bool = False,
) -> Placement:
    """A placement in the order its fields are usually read: id, name, owner, generation."""
    w = workload(wid, name, tenant, resources)
    return Placement(w, owner, generation, round_id, originator, at, removed)
