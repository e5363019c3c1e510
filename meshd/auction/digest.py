"""A summary of the placement view, so anti-entropy sends only what differs.

The view is cut into :data:`BUCKETS` buckets by workload id. A bucket's sum is the
XOR of one 64-bit hash per placement in it, over the fields that tell two versions
apart (id, generation, owner, tombstone), so it is kept up to date in O(1) as the
view changes. Two nodes whose sums agree hold the same view (short of a 2^-64
collision per bucket); where they differ, they exchange that bucket's placements
only. At rest an exchange is one datagram each way instead of the whole view.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from hashlib import blake2b

from meshd.auction.model import Placement

BUCKETS = 32


def bucket_of(workload_id: str) -> int:
    return zlib.crc32(workload_id.encode()) % BUCKETS


def entry_hash(p: Placement) -> int:
    key = f"{p.workload_id}\0{p.generation}\0{p.owner}\0{int(p.removed)}".encode()
    return int.from_bytes(blake2b(key, digest_size=8).digest(), "big")


class ViewDigest:
    """Per-bucket XOR sums of a placement view, updated as placements replace others."""

    def __init__(self, placements: Iterable[Placement] = ()) -> None:
        self._sums = [0] * BUCKETS
        for p in placements:
            self._sums[bucket_of(p.workload_id)] ^= entry_hash(p)

    def replace(self, old: Placement | None, new: Placement) -> None:
        b = bucket_of(new.workload_id)
        if old is not None:
            self._sums[b] ^= entry_hash(old)
        self._sums[b] ^= entry_hash(new)

    def sums(self) -> tuple[int, ...]:
        return tuple(self._sums)

    def differing(self, theirs: Sequence[int]) -> frozenset[int]:
        """Buckets whose sums differ from ``theirs`` (all of them if its size is wrong)."""
        if len(theirs) != BUCKETS:
            return frozenset(range(BUCKETS))
        pairs = enumerate(zip(self._sums, theirs, strict=True))
        return frozenset(i for i, (a, b) in pairs if a != b)
