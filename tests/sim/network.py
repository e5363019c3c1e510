"""The simulated network: seeded loss, delay, duplication, reordering and partitions.

A datagram is lost with probability ``loss``, else delivered after a delay drawn
uniformly from ``delay`` (so datagrams reorder whenever their delays cross), and with
probability ``duplicate`` delivered a second time with its own delay; with probability
``copy`` an eavesdropper on the LAN also sends a copy of it to some other node
(:meth:`Network.strays`: the datagram's signature is still its author's). A *reliable*
send (the shell's TCP/TLS channel) is never lost or duplicated but takes
``reliable_factor`` times as long (connection set-up), and like everything else it is
blocked by partitions and cuts.

Faults: :meth:`Network.partition` splits nodes into groups that can't talk to each
other (nodes not named form one more group); :meth:`Network.cut` blocks one direction
of one link; :meth:`Network.set_link` overrides the model of one direction of one
link. A partition or cut is checked when a message is sent *and* when it would be
delivered, so a partition also swallows what is in flight.

All randomness comes from the one ``random.Random`` given, in a fixed order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class LinkModel:
    """How one direction of a link (or every link) behaves."""

    loss: float = 0.0
    delay: tuple[float, float] = (0.0002, 0.002)  # seconds, uniform: a switched LAN
    duplicate: float = 0.0
    copy: float = 0.0  # a copy of the datagram also reaches another node (an attacker)
    reliable_factor: float = 3.0


class Network:
    def __init__(self, rng: random.Random, model: LinkModel | None = None) -> None:
        self.rng = rng
        self.model = model or LinkModel()
        self._links: dict[tuple[str, str], LinkModel] = {}
        self._group: dict[str, int] = {}
        self._cut: set[tuple[str, str]] = set()
        self.sent = 0
        self.lost = 0
        self.blocked_count = 0

    # -- faults ----------------------------------------------------------------------

    def set_link(self, src: str, dst: str, model: LinkModel | None, both: bool = True) -> None:
        """Override (or with None, restore) the model of ``src -> dst`` (and back)."""
        for key in ((src, dst), (dst, src)) if both else ((src, dst),):
            if model is None:
                self._links.pop(key, None)
            else:
                self._links[key] = model

    def partition(self, *groups: list[str] | tuple[str, ...] | set[str]) -> None:
        """Nodes in different groups can't talk; nodes not listed are one more group."""
        self._group = {}
        for i, group in enumerate(groups, start=1):
            for name in group:
                self._group[name] = i

    def cut(self, src: str, dst: str, both: bool = False) -> None:
        self._cut.add((src, dst))
        if both:
            self._cut.add((dst, src))

    def uncut(self, src: str, dst: str, both: bool = False) -> None:
        """Undo :meth:`cut` of one link (other cuts and partitions stay)."""
        self._cut.discard((src, dst))
        if both:
            self._cut.discard((dst, src))

    def heal(self) -> None:
        """Remove every partition and cut (link models stay)."""
        self._group = {}
        self._cut.clear()

    @property
    def partitioned(self) -> bool:
        return bool(self._group or self._cut)

    def blocked(self, src: str, dst: str) -> bool:
        g = self._group
        if g and g.get(src, 0) != g.get(dst, 0):
            return True
        return bool(self._cut) and (src, dst) in self._cut

    # -- sending ---------------------------------------------------------------------

    def delays(self, src: str, dst: str, reliable: bool) -> list[float]:
        """The delays after which copies of one message arrive (empty: lost/blocked)."""
        self.sent += 1
        if self.blocked(src, dst):
            self.blocked_count += 1
            return []
        m = self._links.get((src, dst), self.model) if self._links else self.model
        rng = self.rng
        lo, hi = m.delay
        if reliable:
            return [m.reliable_factor * (lo + (hi - lo) * rng.random())]
        if m.loss and rng.random() < m.loss:
            self.lost += 1
            return []
        out = [lo + (hi - lo) * rng.random()]
        if m.duplicate and rng.random() < m.duplicate:
            out.append(lo + (hi - lo) * rng.random())
        return out

    def strays(self, src: str, dst: str, names: list[str]) -> list[tuple[str, float]]:
        """Copies of a datagram for ``dst`` that an eavesdropper sends to other nodes."""
        m = self._links.get((src, dst), self.model) if self._links else self.model
        if not m.copy or self.rng.random() >= m.copy:
            return []
        others = [x for x in names if x not in (src, dst) and not self.blocked(src, x)]
        if not others:
            return []
        lo, hi = m.delay
        return [(self.rng.choice(others), lo + (hi - lo) * self.rng.random())]
