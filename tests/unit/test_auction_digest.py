"""The view digest: order-free, kept current per change, and exact about what differs."""

from __future__ import annotations

import random

from meshd.auction.digest import BUCKETS, ViewDigest, bucket_of
from meshd.auction.model import Placement, Resources

RES = Resources(1, 1, 0)


def _p(wid: str, owner: str = "n1", gen: int = 1, removed: bool = False) -> Placement:
    return Placement(wid, wid, owner, gen, "r", "n0", 0.0, RES, None, removed)


def test_same_placements_in_any_order_give_the_same_sums() -> None:
    ps = [_p(f"w{i}") for i in range(100)]
    shuffled = ps[:]
    random.Random(3).shuffle(shuffled)
    assert ViewDigest(ps).sums() == ViewDigest(shuffled).sums()
    assert len(ViewDigest(ps).sums()) == BUCKETS


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
        assert dg.sums() == ViewDigest(view.values()).sums()


def test_differing_names_exactly_the_changed_buckets() -> None:
    ps = [_p(f"w{i}") for i in range(100)]
    a, b = ViewDigest(ps), ViewDigest(ps)
    assert a.differing(b.sums()) == frozenset()
    b.replace(ps[5], _p("w5", "n2", 2))
    b.replace(None, _p("new"))
    assert a.differing(b.sums()) == {bucket_of("w5"), bucket_of("new")}
    # A tombstone differs from the live placement of the same generation.
    c = ViewDigest(ps)
    c.replace(ps[9], _p("w9", removed=True))
    assert a.differing(c.sums()) == {bucket_of("w9")}


def test_a_digest_of_the_wrong_size_differs_everywhere() -> None:
    assert ViewDigest().differing((0,) * 3) == frozenset(range(BUCKETS))
