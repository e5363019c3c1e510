"""A bidder's score for one request: 1..1000, or -1 with a sentence that says why.

Theory of operation
-------------------
A node answers a :class:`~meshd.core.auction.messages.BidRequest` from two sources of
truth (DESIGN.md §6, step 2):

* its **ledger**: what it has committed plus what it holds for open rounds, against
  its **limit** = capacity x overcommit per dimension (``cpu_overcommit``,
  ``memory_overcommit``, ``disk_overcommit``; capacity declared in the config or
  measured by the shell). This is the hard rule: a node never bids positive for a
  request that would take committed + held + asked beyond the limit, in any
  dimension. That is what keeps concurrent rounds from overcommitting it.
* its **telemetry** (psutil, passed in by the shell): memory really available and
  disk really free may be lower than the ledger thinks (other processes, a guest
  using its memory), which refuses the bid; live load lowers the score, and refuses
  only past ``auction.max_load_per_core`` (4 by default: far above a normally busy
  host's 1-3, where Aether's 2.0 refused whole racks of busy but healthy blades).

Refusals are checked in this order, first match wins: cpu, memory, disk (each
against min(ledger headroom, telemetry) where telemetry applies), then load::

    not enough cpu: 2.5 cpus free of 4 asked
    not enough memory: 1.5 GiB free of 2 GiB asked
    not enough disk: 3 GiB free of 10 GiB asked (the host reports 3 GiB free)
    overloaded: load 4.3 per core (limit 4, auction.max_load_per_core)

A refusal that only the holds of concurrent rounds cause (the request fits what is
committed, not what is also held) is marked ``busy``: those holds resolve within an
award timeout, so the originator retries rather than failing the client.

The score (when everything fits) is a *balanced best fit*: prefer the node that this
workload leaves fullest, judged by its least-used dimension, damped by live load::

    u_d   = (committed_d + held_d + asked_d) / limit_d     for d in cpu, mem, disk
    fit   = 0.9 * min(u_cpu, u_mem) + 0.1 * u_disk
    busy  = min(1, load_per_core / max_load_per_core)      (0 without telemetry)
    score = 1 + floor(999 * fit * (1 - 0.5 * busy))        → 1..1000

Best fit (rather than spreading) keeps whole blades free for large workloads. Taking
the *least*-used of CPU and memory (rather than their sum, the usual "most allocated"
score) prefers placements that fill both together and avoids stranding a blade with
idle CPUs and no memory left, or the reverse — the two-dimensional fragmentation that
makes plain best fit refuse early (cf. the alignment score of Tetris, Grandl et al.,
SIGCOMM 2014). In ``benchmarks/bench_placement_quality.py`` this packs a 1,000-blade
mesh further before its first refusal than a centralized best-fit-decreasing placer.
Disk rarely binds; it only nudges. Spreading still happens among equal scores: the
tie-break prefers fewer workloads of the same tenant, then more free memory
(:mod:`.ranking`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from meshd.config import AuctionConfig
from meshd.core.auction.model import (
    CPU_EPSILON,
    Capacity,
    Resources,
    Telemetry,
    human_bytes,
    human_cpus,
)

SCORE_MIN = 1
SCORE_MAX = 1000
NO_BID = -1
_DISK_WEIGHT = 0.1


@dataclass(frozen=True, slots=True)
class Overcommit:
    """How far each dimension may be promised beyond the capacity (1.0: not at all)."""

    cpu: float = 1.0
    memory: float = 1.0
    disk: float = 1.0
    # The host load per core past which a node refuses to bid; below it load only
    # lowers the score (``auction.max_load_per_core``).
    max_load: float = 4.0

    @classmethod
    def from_config(cls, cfg: AuctionConfig) -> Overcommit:
        return cls(
            cfg.cpu_overcommit, cfg.memory_overcommit, cfg.disk_overcommit, cfg.max_load_per_core
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    score: int  # 1..1000, or -1
    reason: str  # why -1; empty otherwise
    mem_free: int  # memory this node has free for new work (ledger and telemetry)
    busy: bool = False  # -1 only because of holds of concurrent rounds


def limit(capacity: Capacity, oc: Overcommit) -> Resources:
    return Resources(
        capacity.cpus * oc.cpu,
        math.floor(capacity.memory * oc.memory),
        math.floor(capacity.disk * oc.disk),
    )


def _shortfall(
    ask: Resources, free: Resources, telemetry: Telemetry | None
) -> tuple[str, bool] | None:
    """The first dimension ``ask`` does not fit (sentence, telemetry-bound), or None."""
    if ask.cpus > free.cpus + CPU_EPSILON:
        return (
            f"not enough cpu: {human_cpus(max(0.0, free.cpus))} free of {ask.cpus:g} asked",
            False,
        )
    for what, asked, ledger_free, measured in (
        ("memory", ask.memory, free.memory, telemetry.mem_available if telemetry else None),
        ("disk", ask.disk, free.disk, telemetry.disk_free if telemetry else None),
    ):
        avail = ledger_free if measured is None else min(ledger_free, measured)
        if asked > avail:
            have, want = human_bytes(max(0, avail)), human_bytes(asked)
            text = f"not enough {what}: {have} free of {want} asked"
            bound = measured is not None and measured < ledger_free
            if bound:
                word = "available" if what == "memory" else "free"
                text += f" (the host reports {human_bytes(max(0, measured or 0))} {word})"
            return text, bound
    return None


def evaluate(
    ask: Resources,
    capacity: Capacity,
    oc: Overcommit,
    committed: Resources,
    held: Resources,
    telemetry: Telemetry | None,
) -> Verdict:
    """Score ``ask`` on a node with this capacity, ledger and telemetry (pure)."""
    lim = limit(capacity, oc)
    free = lim - committed - held
    mem_free = free.memory if telemetry is None else min(free.memory, telemetry.mem_available)
    mem_free = max(0, mem_free)
    short = _shortfall(ask, free, telemetry)
    if short is not None:
        text, measured = short
        busy = not measured and _shortfall(ask, lim - committed, telemetry) is None
        if busy:
            text += " (the rest is held by concurrent rounds)"
        return Verdict(NO_BID, text, mem_free, busy)
    if telemetry is not None and telemetry.load_per_core > oc.max_load:
        return Verdict(
            NO_BID,
            f"overloaded: load {telemetry.load_per_core:.2g} per core "
            f"(limit {oc.max_load:g}, auction.max_load_per_core)",
            mem_free,
        )
    used = committed + held + ask
    u_cpu = _ratio(used.cpus, lim.cpus)
    u_mem = _ratio(used.memory, lim.memory)
    u_disk = _ratio(used.disk, lim.disk)
    fit = (1 - _DISK_WEIGHT) * min(u_cpu, u_mem) + _DISK_WEIGHT * u_disk
    load = 0.0 if telemetry is None else min(1.0, max(0.0, telemetry.load_per_core / oc.max_load))
    s = fit * (1.0 - 0.5 * load)
    score = min(SCORE_MAX, max(SCORE_MIN, SCORE_MIN + math.floor((SCORE_MAX - 1) * s)))
    return Verdict(score, "", mem_free)


def _ratio(used: float, lim: float) -> float:
    if lim <= 0:
        return 1.0
    return min(1.0, max(0.0, used / lim))
