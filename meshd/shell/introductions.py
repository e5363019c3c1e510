"""Which nodes should get our certificate ahead of a compact membership datagram.

Membership datagrams name their author by node id only (to fit one frame). A node that
doesn't hold the author's certificate yet drops them and fetches the certificate over
TLS, which takes seconds when a whole chassis starts at once on busy cores; meanwhile
its acks to us, or ours to it, are lost, and a running member is suspected, then held
dead (seen in 64-node starts on busy cores, ``benchmarks/bench_serf.py``).

So until a node has acked or nacked a datagram of ours (it verified us), the mesh
shell precedes each datagram to it, at most once per ``every_s``, with an empty gossip
in the full signed form, which carries our certificate. Pure: time is passed in.
"""

from __future__ import annotations

from collections.abc import Hashable


class Introductions:
    def __init__(self, every_s: float = 1.0, memory: int = 4096) -> None:
        self._every_s = every_s
        self._memory = memory
        self._knows_us: set[Hashable] = set()
        self._sent_at: dict[Hashable, float] = {}

    def due(self, addr: Hashable, now: float) -> bool:
        """Whether to send our certificate to ``addr`` now (and note that we do)."""
        if addr in self._knows_us:
            return False
        if now - self._sent_at.get(addr, float("-inf")) < self._every_s:
            return False
        if len(self._sent_at) >= self._memory:
            self._sent_at = {a: t for a, t in self._sent_at.items() if now - t < self._every_s}
        self._sent_at[addr] = now
        return True

    def verified_by(self, addr: Hashable) -> None:
        """``addr`` acked or nacked one of ours: it holds our certificate."""
        self._knows_us.add(addr)
        self._sent_at.pop(addr, None)

    def forget(self, addr: Hashable) -> None:
        """``addr``'s node left or died: it may come back reinstalled, without us."""
        self._knows_us.discard(addr)
