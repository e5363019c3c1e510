"""Replay memory: each (sender, nonce) accepted once inside a time window.

Theory of operation
-------------------
A message carries its author's timestamp and a random nonce. The receiver accepts it
once if its stamp lies within ``window_s`` of the receiver's clock, and drops it when it
is stale, too far in the future, or already seen. Memory is kept **per sender** (a
source address for sealed datagrams, an author's node id for signed messages) and
bounded two ways, so one sender can't evict another's:

* per sender, at most ``capacity`` nonces: past that the sender's oldest nonce is
  forgotten and *its* floor rises to that nonce's stamp, so anything that sender stamped
  at or before the floor is refused as stale rather than risk accepting a replay we no
  longer remember. A flooder raises only its own floor.
* at most ``senders`` senders: past that the sender heard from least recently is
  forgotten whole, and the moment it happened becomes the floor of every sender we hold
  no memory of. A sender we forgot loses only what it stamped before that moment (what
  was in flight then), never what it sends next.

A message stamped more than ``window_s`` ahead of our clock is dropped before it
touches any memory, so a sender with a clock (or an intent) in the future can't move
any floor. Pure: ``now`` is passed in.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Hashable

from meshd.errors import ReplayError


class _Memory:
    __slots__ = ("floor", "heap", "seen")

    def __init__(self, floor: float) -> None:
        self.seen: set[bytes] = set()
        self.heap: list[tuple[float, bytes]] = []
        self.floor = floor


class ReplayGuard:
    def __init__(self, window_s: float, capacity: int, senders: int = 1024) -> None:
        if window_s <= 0 or capacity <= 0 or senders <= 0:
            raise ValueError("replay window, capacity and sender count must be positive")
        self._window = window_s
        self._capacity = capacity
        self._senders = senders
        self._memory: OrderedDict[Hashable, _Memory] = OrderedDict()
        self._forgotten_floor = float("-inf")

    def check(self, sender: Hashable, nonce: bytes, ts: float, now: float) -> None:
        """Accept ``nonce`` from ``sender`` stamped ``ts`` at ``now`` once, or raise."""
        if ts < now - self._window:
            raise ReplayError(f"message is stale ({now - ts:.1f}s old)")
        if ts > now + self._window:
            raise ReplayError(f"message is {ts - now:.1f}s in the future; check the clocks")
        mem = self._memory.get(sender)
        if mem is None:
            if ts <= self._forgotten_floor:
                raise ReplayError("message is older than the replay memory")
            mem = self._memory[sender] = _Memory(self._forgotten_floor)
            if len(self._memory) > self._senders:
                self._memory.popitem(last=False)
                self._forgotten_floor = max(self._forgotten_floor, now)
        else:
            self._memory.move_to_end(sender)
        if ts <= mem.floor:
            raise ReplayError("message is older than the replay memory")
        if nonce in mem.seen:
            raise ReplayError("message was already seen (replay)")
        mem.seen.add(nonce)
        heapq.heappush(mem.heap, (ts, nonce))
        horizon = now - self._window
        heap = mem.heap
        while heap and (heap[0][0] < horizon or len(heap) > self._capacity):
            old_ts, old_nonce = heapq.heappop(heap)
            mem.seen.discard(old_nonce)
            # Raise the floor for every forgotten nonce, stale ones too: the stale check
            # alone would let a forgotten nonce back in if the wall clock steps backwards.
            mem.floor = max(mem.floor, old_ts)

    def floor(self, sender: Hashable) -> float:
        """What ``sender`` must stamp above to be accepted (its memory's floor)."""
        mem = self._memory.get(sender)
        return self._forgotten_floor if mem is None else mem.floor

    def __len__(self) -> int:
        return sum(len(m.seen) for m in self._memory.values())

    def senders(self) -> int:
        return len(self._memory)
