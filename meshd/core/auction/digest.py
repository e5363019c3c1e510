"""A summary of the placement view, so anti-entropy sends only what differs.

The view is cut into buckets by workload id, and a bucket's sum is the XOR of one
64-bit hash per placement in it, over the fields that tell two versions apart (id,
generation, owner, tombstone), so it is kept current in O(1) as the view changes.
Two nodes whose sums agree hold the same view (short of a 2^-64 collision per
bucket); where they differ, they exchange that bucket's placements only.

How many buckets: the sender of a digest picks a power of two from :data:`MIN_BUCKETS`
to :data:`FINE`, about one per :data:`PER_BUCKET` placements it knows, and the
receiver compares at the same count. Under load a few confirmations are always in
flight, so a few buckets always differ at the moment of an exchange; small buckets
keep that cheap however large the view. Bucket ``i`` of ``n`` holds the workloads
whose CRC-32 is ``i`` modulo ``n``, so the counts nest. A view of up to ~1,000
placements is summarised in 32 buckets, one datagram; a larger one's digest travels
over the reliable channel.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence
from hashlib import blake2b

from meshd.core.auction.model import Placement

MIN_BUCKETS = 32
FINE = 4096
PER_BUCKET = 32  # placements per bucket a digest aims at
COUNTS = frozenset(MIN_BUCKETS << k for k in range((FINE // MIN_BUCKETS).bit_length()))


def fine_bucket(workload_id: str) -> int:
    return zlib.crc32(workload_id.encode()) % FINE


def entry_hash(p: Placement) -> int:
    key = f"{p.workload_id}\0{p.generation}\0{p.owner}\0{int(p.removed)}".encode()
    return int.from_bytes(blake2b(key, digest_size=8).digest(), "big")


def bucket_count(placements: int) -> int:
    """The digest size for a view of ``placements``: a power of two in :data:`COUNTS`."""
    n = MIN_BUCKETS
    while n < FINE and n * PER_BUCKET < placements:
        n *= 2
    return n


class ViewDigest:
    """Per-bucket XOR sums of a placement view, updated as placements replace others.

    The sums are kept at every count in :data:`COUNTS` (8,160 in all): a change costs
    a few XORs, and a digest is a copy, not a fold of 4,096 sums.
    """

    def __init__(self, placements: Iterable[Placement] = ()) -> None:
        self._levels = {n: [0] * n for n in sorted(COUNTS)}
        self._size = 0
        # The workload ids in each fine bucket (a view only grows: removals are
        # tombstones), so a bucket's placements are found without walking the view.
        self._fine: list[dict[str, None]] = [{} for _ in range(FINE)]
        for p in placements:
            self.replace(None, p)

    def replace(self, old: Placement | None, new: Placement) -> None:
        b = fine_bucket(new.workload_id)
        delta = entry_hash(new)
        if old is None:
            self._size += 1
            self._fine[b][new.workload_id] = None
        else:
            delta ^= entry_hash(old)
        for n, sums in self._levels.items():
            sums[b % n] ^= delta

    def sums(self, count: int | None = None) -> tuple[int, ...]:
        """Sums at ``count`` buckets (by default the count this view's size calls for)."""
        n = bucket_count(self._size) if count is None else count
        level = self._levels.get(n)
        if level is None:
            raise ValueError(f"a digest has a power of two of {MIN_BUCKETS}..{FINE} buckets")
        return tuple(level)

    def members(self, buckets: Iterable[int], count: int) -> Iterator[str]:
        """The workload ids in ``buckets`` of ``count`` (a count in :data:`COUNTS`), bucket
        by bucket: a fine bucket ``f`` lies in bucket ``f % count``."""
        for b in sorted(buckets):
            for f in range(b, FINE, count):
                yield from self._fine[f]

    def differing(self, theirs: Sequence[int]) -> frozenset[int]:
        """Buckets (of ``len(theirs)``) whose sums differ from ``theirs``."""
        pairs = enumerate(zip(self.sums(len(theirs)), theirs, strict=True))
        return frozenset(i for i, (a, b) in pairs if a != b)
