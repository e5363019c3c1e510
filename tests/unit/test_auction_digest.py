"""The view digest: order-free, kept current per change, exact about what differs,
and sized to the view."""

from __future__ import annotations

import random

import pytest

from meshd.core.auction.digest import (
    COUNTS,
    FINE,
    MIN_BUCKETS,
    ViewDigest,
    bucket_count,
    fine_bucket,
)
from meshd.core.auction.model import Placement, Resources
from tests.factories import placement

RES = Resources(1, 1, 0)


def _p(wid: str, owner: str = "n1", gen: int = 1, removed: bool = False) -> Placement:
    return placement(wid, wid, owner, gen, "r", "n0", 0.0, RES, None, removed)


def test_same_placements_in_any_order_give_the_same_sums() -> None:
    ps = [_p(f"w{i}") for i in range(100)]
    shuffled = ps[:]
    random.Random(3).shuffle(shuffled)
    assert ViewDigest(ps).sums() == ViewDigest(shuffled).sums()
    assert len(ViewDigest(ps).sums()) == MIN_BUCKETS


def test_replace_keeps_the_sums_equal_to_a_fresh_digest() -> None:
    view = {f"w{i}": _p(f"w{i}") for i in range(50)}
    dg = ViewDigest(view.values())
    rng = random.Random(7)
    for step in range(500):
        wid = f"w{rng.randrange(80)}"
        old = view.get(wid)
        new = _p(wid, f"n{rng.randrange(5)}", (old.generation + 1) if old else 1, step % 9 == 0)
        dg.replace(old, new)
        view[wid] = new
        for n in (32, 256):
            assert dg.sums(n) == ViewDigest(view.values()).sums(n)


def test_differing_names_exactly_the_changed_buckets_at_any_count() -> None:
    ps = [_p(f"w{i}") for i in range(100)]
    a, b = ViewDigest(ps), ViewDigest(ps)
    assert a.differing(b.sums()) == frozenset()
    b.replace(ps[5], _p("w5", "n2", 2))
    b.replace(None, _p("new"))
    for n in (32, 1024, FINE):
        want = {fine_bucket("w5") % n, fine_bucket("new") % n}
        assert a.differing(b.sums(n)) == want
    # A tombstone differs from the live placement of the same generation.
    c = ViewDigest(ps)
    c.replace(ps[9], _p("w9", removed=True))
    assert a.differing(c.sums()) == {fine_bucket("w9") % MIN_BUCKETS}


def test_members_are_the_views_workloads_in_those_buckets_at_any_count() -> None:
    rng = random.Random(11)
    view: dict[str, Placement] = {}
    dg = ViewDigest()
    for step in range(3000):
        wid = f"w{rng.randrange(2500)}"
        old = view.get(wid)
        new = _p(wid, "n1", (old.generation + 1) if old else 1, step % 7 == 0)
        dg.replace(old, new)  # (a new generation of a known workload adds no member)
        view[wid] = new
    for count in sorted(COUNTS):
        buckets = frozenset(rng.sample(range(count), min(count, 5)))
        got = list(dg.members(buckets, count))
        assert len(got) == len(set(got))
        assert set(got) == {w for w in view if fine_bucket(w) % count in buckets}
    assert list(ViewDigest(view.values()).members(range(MIN_BUCKETS), MIN_BUCKETS)) != []


def test_the_bucket_count_grows_with_the_view() -> None:
    assert bucket_count(0) == bucket_count(1024) == 32
    assert bucket_count(1025) == 64
    assert bucket_count(14_000) == 512
    assert bucket_count(10**9) == FINE
    assert {32, 64, 128, 256, 512, 1024, 2048, 4096} == COUNTS
    big = ViewDigest(_p(f"w{i}") for i in range(2000))
    assert len(big.sums()) == 64


def test_a_digest_of_a_size_that_is_not_a_count_is_refused() -> None:
    with pytest.raises(ValueError, match="power of two"):
        ViewDigest().differing((0,) * 3)
