"""What a node can run, what a workload needs, and which need a node fails.

Theory of operation
-------------------
DESIGN.md §6 step 1 filters candidates by *static* constraints at the originator
(``--node``, ``avoid``: names every node knows). Everything else a workload needs is
known only to the candidate itself, so the candidate judges it when it bids: a node
that can't meet a requirement answers -1 and names the requirement, and the round's
refusal (:func:`meshd.core.auction.rounds.explain`) lists those reasons, so an operator
reads "no node has driver:qemu" rather than a VM that fails at start.

A node's capabilities are strings, measured by the shell at start-up (see
``meshd.capability_probe``): ``driver:NAME`` for each driver that really works here,
``kvm`` (a usable /dev/kvm) or ``tcg``, ``arch:MACHINE``, ``bridge:NAME`` when the
QEMU driver's bridge exists here, ``network:NAME`` for each mesh network it can attach
(its bridge exists or it may create it: ``meshd.shell.guests``, followed at runtime, so a
workload with NICs on another is refused with "lacks network:NAME"); plus the labels
its operator set (``rack=a``). A
workload's requirements are its ``requires`` set, ``driver:<its driver>``, and
``network:<net>`` per NIC (:meth:`meshd.core.spec.WorkloadSpec.requirements`), the labels
it asks for, and its anti-affinity: the names of workloads it must not share a node
with, judged against what the candidate has committed and holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshd.core.spec import WorkloadSpec


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a workload needs of the node that runs it (carried in every BidRequest)."""

    needs: frozenset[str] = frozenset()
    labels: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs
    anti_affinity: frozenset[str] = frozenset()  # workload names

    @classmethod
    def of(cls, spec: WorkloadSpec) -> Requirements:
        return cls(spec.requirements(), tuple(sorted(spec.labels.items())), spec.anti_affinity)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What this node offers (measured by the shell) and the labels its operator set."""

    offers: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)

    def unmet(self, req: Requirements, neighbours: Iterable[str] = ()) -> str | None:
        """Why this node can't take a workload with ``req``, in a few words; or None.

        ``neighbours`` are the names of the workloads this node runs or holds.
        """
        missing = sorted(req.needs - self.offers)
        if missing:
            return f"lacks {', '.join(missing)}"
        wrong = [f"{k}={v}" for k, v in req.labels if self.labels.get(k) != v]
        if wrong:
            return f"lacks label {', '.join(wrong)}"
        if req.anti_affinity:
            near = sorted(req.anti_affinity.intersection(neighbours))
            if near:
                return f"runs {', '.join(near)} (anti-affinity)"
        return None


NO_REQUIREMENTS = Requirements()

# The simulator's and the unit tests' nodes: they run the fake driver and nothing else.
SIMULATED = Capabilities(frozenset({"driver:fake"}))
