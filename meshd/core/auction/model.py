"""The placement data model: what is placed, where, and what each node has promised.

Everything here is a frozen value. Sizes are bytes, CPUs a float (a VM may ask for
half a core), times the shell's wall-clock seconds (``time.time()``: absolute
deadlines such as a hold's expiry are persisted and must mean the same after a
restart, which a monotonic clock does not).

* :class:`Workload` is what is placed (an id and its :class:`~meshd.core.spec.WorkloadSpec`);
  :class:`Placement` is the mesh-wide answer (who runs it, at which *generation*,
  with the spec); every node keeps the same view.
* :class:`Hold` is a bidder's short reservation made with a positive bid;
  :class:`Allocation` is the winner's durable commitment. A node's :class:`Ledger`
  is its committed allocations plus its unexpired holds, against its capacity.
* :class:`RoundRecord` is the originator's history of one round, every bid included
  (what ``meshd auctions`` shows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshd.core.spec import WorkloadSpec

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4
# Slack for comparing sums of float CPU counts (0.1 + 0.2 > 0.3 in binary).
CPU_EPSILON = 1e-9


class InvariantBreach(RuntimeError):
    """A ledger committed beyond its limit: impossible by construction, so stop loudly."""


def human_bytes(n: int) -> str:
    """``2147483648`` → ``"2 GiB"``, ``1610612736`` → ``"1.5 GiB"`` (one decimal, trimmed)."""
    for unit, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= factor:
            text = f"{n / factor:.1f}".removesuffix(".0")
            return f"{text} {unit}"
    return f"{n} B"


def human_cpus(c: float) -> str:
    text = f"{c:.2f}".rstrip("0").rstrip(".")
    return f"{text} cpu" if text == "1" else f"{text} cpus"


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of CPU (cores, fractional), memory and disk (bytes)."""

    cpus: float
    memory: int
    disk: int

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.memory + other.memory, self.disk + other.disk)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpus - other.cpus, self.memory - other.memory, self.disk - other.disk)

    def within(self, limit: Resources) -> bool:
        """Every dimension at most ``limit``'s."""
        return (
            self.cpus <= limit.cpus + CPU_EPSILON
            and self.memory <= limit.memory
            and self.disk <= limit.disk
        )

    def describe(self) -> str:
        """``"4 cpus, 2 GiB memory, 10 GiB disk"`` (zero disk is left out)."""
        parts = [human_cpus(self.cpus), f"{human_bytes(self.memory)} memory"]
        if self.disk:
            parts.append(f"{human_bytes(self.disk)} disk")
        return ", ".join(parts)


NOTHING = Resources(0.0, 0, 0)


def total(items: Any) -> Resources:
    """Sum of ``.resources`` over ``items`` (recomputed, so float error never drifts)."""
    cpus, memory, disk = 0.0, 0, 0
    for x in items:
        r = x.resources
        cpus += r.cpus
        memory += r.memory
        disk += r.disk
    return Resources(cpus, memory, disk)


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a node offers: declared in the config, or measured by the shell."""

    cpus: float
    memory: int
    disk: int

    def as_resources(self) -> Resources:
        return Resources(self.cpus, self.memory, self.disk)


@dataclass(frozen=True, slots=True)
class Telemetry:
    """A live snapshot the shell measures with psutil and passes in."""

    load_per_core: float  # 1-minute load average / logical CPUs
    mem_available: int  # bytes (psutil's "available")
    disk_free: int  # bytes free under the data dir


@dataclass(frozen=True, slots=True)
class Constraints:
    """Static constraints the originator applies when choosing candidates."""

    nodes: frozenset[str] = frozenset()  # allowed nodes; empty means any
    avoid: frozenset[str] = frozenset()  # never these

    def allows(self, name: str) -> bool:
        return (not self.nodes or name in self.nodes) and name not in self.avoid


@dataclass(frozen=True)
class Workload:
    """What is placed: an id the mesh gave it, and its spec (:mod:`meshd.core.spec`).

    ``resources`` and ``constraints`` are read from the spec once, here: the core reads
    them on every bid and award.
    """

    id: str
    spec: WorkloadSpec
    resources: Resources = field(init=False, repr=False, compare=False)
    constraints: Constraints = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        s = self.spec
        object.__setattr__(self, "resources", Resources(float(s.cpus), s.memory, s.disk))
        object.__setattr__(self, "constraints", Constraints(s.nodes, s.avoid))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tenant(self) -> str | None:
        return self.spec.tenant

    @property
    def driver(self) -> str:
        return self.spec.driver


@dataclass(frozen=True, slots=True)
class Placement:
    """The mesh-wide record that ``owner`` runs ``workload`` at ``generation``.

    Highest generation wins; two placements of one generation must name one owner.
    ``originator`` is the node that ran the round (or, when the winner had to confirm
    it itself, the originator it accepted from). The placement carries the workload's
    whole spec, so every node that holds the view knows what every workload is, and a
    survivor can place a dead node's workloads again, unchanged, at the next generation.
    """

    workload: Workload
    owner: str
    generation: int
    round: str
    originator: str
    decided_at: float
    # A tombstone: the workload was removed at this generation (``meshd workload rm``).
    # It wins over every older generation like any placement, so it reaches every node
    # by confirmation and anti-entropy, and the owner releases the allocation.
    removed: bool = False

    @property
    def workload_id(self) -> str:
        return self.workload.id

    @property
    def name(self) -> str:
        return self.workload.spec.name

    @property
    def tenant(self) -> str | None:
        return self.workload.spec.tenant

    @property
    def resources(self) -> Resources:
        return self.workload.resources

    @property
    def spec(self) -> WorkloadSpec:
        return self.workload.spec


@dataclass(frozen=True, slots=True)
class Hold:
    """A bidder's reservation for one round, released at the round's end or expiry."""

    round_id: str
    workload_id: str
    resources: Resources
    tenant: str | None
    originator: str
    expires_at: float


@dataclass(frozen=True)
class Allocation:
    """The winner's durable commitment; ``confirmed`` once the placement is known."""

    workload: Workload
    round_id: str
    generation: int
    originator: str
    committed_at: float
    confirmed: bool = False

    @property
    def resources(self) -> Resources:
        return self.workload.resources

    @property
    def tenant(self) -> str | None:
        return self.workload.tenant


@dataclass(frozen=True, slots=True)
class Ledger:
    """What this node has promised: committed allocations and unexpired holds."""

    capacity: Capacity
    limit: Resources  # capacity x overcommit
    committed: Resources
    held: Resources
    allocations: Mapping[str, Allocation]  # by workload id
    holds: Mapping[str, Hold]  # by round id

    @property
    def free(self) -> Resources:
        return self.limit - self.committed - self.held


@dataclass(frozen=True, slots=True)
class BidRecord:
    """One bid as the originator received it (or as the bidder made it)."""

    bidder: str
    score: int
    reason: str
    tenant_count: int
    mem_free: int
    workloads: int
    at: float
    busy: bool = False


@dataclass(frozen=True, slots=True)
class AwardRecord:
    """One award attempt: ``outcome`` is pending, accepted, refused or silent."""

    node: str
    generation: int
    outcome: str = "pending"
    reason: str = ""


# RoundRecord.state values.
COLLECTING = "collecting"
AWARDING = "awarding"
# Bids ranked; the award waits for the workload's NIC addresses (submit(pending=True)).
CLOSED = "closed"
WAITING = "waiting"  # closed without a winner; the auction continues with a new round
DECIDED = "decided"
FAILED = "failed"
ABANDONED = "abandoned"  # the originator restarted in the middle of it
FINAL_STATES = frozenset({WAITING, DECIDED, FAILED, ABANDONED})


@dataclass(frozen=True)
class RoundRecord:
    """One round as its originator saw it: candidates, every bid, every award.

    It keeps the whole workload, so an originator that restarted mid-round can still
    confirm an award it had made (the placement carries the spec).
    """

    round_id: str
    auction_id: str  # the id ``submit`` returned; rounds of one auction share it
    seq: int
    workload: Workload
    originator: str
    started_at: float
    candidates: tuple[str, ...]
    bids: tuple[BidRecord, ...] = ()
    awards: tuple[AwardRecord, ...] = ()
    state: str = COLLECTING
    winner: str | None = None
    generation: int | None = None
    reason: str = ""
    closed_at: float | None = None

    @property
    def workload_id(self) -> str:
        return self.workload.id

    @property
    def workload_name(self) -> str:
        return self.workload.spec.name

    @property
    def tenant(self) -> str | None:
        return self.workload.spec.tenant

    @property
    def resources(self) -> Resources:
        return self.workload.resources
