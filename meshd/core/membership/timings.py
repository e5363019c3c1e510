"""Timings and counts that follow from the config and the mesh's size (memberlist's rules)."""

from __future__ import annotations

import math

from meshd.config import MembershipConfig

# Beyond this many members push-pull slows down logarithmically (memberlist).
PUSH_PULL_SCALE_THRESHOLD = 32


def transmit_limit(cfg: MembershipConfig, live: int) -> int:
    """Transmissions per update: retransmit_mult * ceil(log10(N + 1))."""
    return cfg.retransmit_mult * math.ceil(math.log10(live + 1))


def push_pull_interval(cfg: MembershipConfig, live: int) -> float:
    base = cfg.push_pull_interval_s
    if live <= PUSH_PULL_SCALE_THRESHOLD:
        return base
    return base * (math.ceil(math.log2(live) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1)


def settle_push_pull_s(cfg: MembershipConfig) -> float:
    """How soon after joining a node exchanges full state once more (meshd's own rule):
    members that joined at about the same time as us spent their Alive's gossip before
    we could hear it, and the periodic push-pull may be a whole interval away."""
    return 4 * cfg.probe_interval_s


def gossip_dead_s(cfg: MembershipConfig) -> float:
    """How long the newly dead still get gossip (memberlist's GossipToTheDeadTime, which
    equals its push-pull interval on a LAN): a live one learns of its death and refutes."""
    return cfg.push_pull_interval_s


def dedup_s(cfg: MembershipConfig) -> float:
    """How long a broadcast id is remembered, and a queued broadcast kept: long enough
    for any copy to have died out (retransmits are spent within seconds)."""
    return 2 * cfg.push_pull_interval_s
