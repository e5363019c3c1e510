"""The transmit-limited broadcast queue: what to piggyback on the next datagram.

Theory of operation
-------------------
SWIM (§4.4) disseminates membership updates by piggybacking them on probe traffic,
each one a limited number of times, ``λ·log N`` (infection-style dissemination
reaches every member with high probability in that many rounds). memberlist's
``TransmitLimitedQueue`` makes that concrete and meshd follows it:

* every queued update carries how often it has been sent; :meth:`take` fills a
  datagram's byte budget with the least-sent updates first (fresh news travels
  first), newest first among equals, and retires an update after ``limit``
  transmissions (the caller passes ``retransmit_mult·ceil(log10(N+1))``);
* an update may carry a *key* (the member it is about); queueing a new update with
  the same key drops the old one, because only the newest claim about a member
  matters (memberlist's ``NamedBroadcast``);
* updates without a key (the general broadcast facility) may also carry a birth time
  and are dropped from the queue once older than a horizon, so they can never
  outlive the receivers' duplicate memory (:meth:`expire`);
* the queue is bounded (:meth:`prune` drops the most-sent first).

The queue stores update objects and their pre-computed encoded sizes; it knows nothing
of the wire. Everything is O(tiers + taken) per datagram, with tiers ≤ ``limit``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

from meshd.core.membership.codec import MAX_UPDATES, MIN_UPDATE_SIZE
from meshd.core.membership.messages import Update

_GONE = -1


class _Entry:
    __slots__ = ("born", "key", "order", "size", "transmits", "update")

    def __init__(
        self, key: Hashable | None, update: Update, size: int, order: int, born: float | None
    ) -> None:
        self.key = key
        self.update = update
        self.size = size
        self.transmits = 0
        self.order = order
        self.born = born


class BroadcastQueue:
    """Updates waiting to be piggybacked, each sent at most ``limit`` times."""

    def __init__(self) -> None:
        self._tiers: dict[int, dict[int, _Entry]] = {}
        self._by_key: dict[Hashable, _Entry] = {}
        self._aging: deque[_Entry] = deque()
        self._order = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def push(
        self, update: Update, size: int, key: Hashable | None = None, born: float | None = None
    ) -> None:
        """Queue ``update`` (``size`` bytes encoded), replacing any with the same key."""
        if key is not None:
            old = self._by_key.get(key)
            if old is not None:
                self._remove(old)
        self._order += 1
        entry = _Entry(key, update, size, self._order, born)
        self._tiers.setdefault(0, {})[entry.order] = entry
        if key is not None:
            self._by_key[key] = entry
        if born is not None:
            self._aging.append(entry)
        self._len += 1

    def _remove(self, entry: _Entry) -> None:
        tier = self._tiers[entry.transmits]
        del tier[entry.order]
        if not tier:
            del self._tiers[entry.transmits]
        if entry.key is not None and self._by_key.get(entry.key) is entry:
            del self._by_key[entry.key]
        entry.transmits = _GONE
        self._len -= 1

    def take(self, budget: int, limit: int) -> list[Update]:
        """Updates for one datagram with ``budget`` bytes of room, counting a transmit each."""
        if not self._len or budget < MIN_UPDATE_SIZE:
            return []
        taken: list[_Entry] = []
        room = budget
        for t in sorted(self._tiers):
            tier = self._tiers[t]
            for order in sorted(tier, reverse=True):
                entry = tier[order]
                if entry.size <= room:
                    taken.append(entry)
                    room -= entry.size
                    if room < MIN_UPDATE_SIZE or len(taken) == MAX_UPDATES:
                        break
            if room < MIN_UPDATE_SIZE or len(taken) == MAX_UPDATES:
                break
        out: list[Update] = []
        for entry in taken:
            out.append(entry.update)
            t = entry.transmits
            self._remove(entry)
            if t + 1 < limit:
                entry.transmits = t + 1
                self._tiers.setdefault(t + 1, {})[entry.order] = entry
                if entry.key is not None:
                    self._by_key[entry.key] = entry
                self._len += 1
        return out

    def expire(self, born_before: float) -> int:
        """Drop aging updates born before ``born_before``; returns how many were dropped."""
        dropped = 0
        while self._aging:
            head = self._aging[0]
            if head.transmits != _GONE and head.born is not None and head.born >= born_before:
                break
            self._aging.popleft()
            if head.transmits != _GONE:
                self._remove(head)
                dropped += 1
        return dropped

    def prune(self, max_retain: int) -> int:
        """Keep at most ``max_retain`` updates, dropping the most-sent (then oldest) first."""
        dropped = 0
        while self._len > max_retain:
            tier = self._tiers[max(self._tiers)]
            self._remove(next(iter(tier.values())))
            dropped += 1
        return dropped

    def transmits(self, key: Hashable) -> int | None:
        """How often the update queued under ``key`` was sent; None if none is queued."""
        entry = self._by_key.get(key)
        return None if entry is None else entry.transmits
