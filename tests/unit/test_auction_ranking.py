"""The tie-break matrix as a table, and "same bids in, same winner out" as a property."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.auction.messages import Bid
from meshd.core.auction.ranking import rank, tiebreak_hash, winner

RID = "n1-000000000001"


def B(score: int, tenant: int = 0, mem: int = 0, n: int = 0) -> Bid:
    return Bid(RID, score, "" if score > 0 else "no", tenant, mem, n)


def _hash_order(*nodes: str) -> list[str]:
    return sorted(nodes, key=lambda x: tiebreak_hash(RID, x))


@pytest.mark.parametrize(
    ("bids", "want"),
    [
        # 1. highest score
        ({"a": B(500), "b": B(700), "c": B(600)}, ["b", "c", "a"]),
        # 2. equal score: fewer workloads of the same tenant
        ({"a": B(500, tenant=2), "b": B(500, tenant=0), "c": B(500, tenant=1)}, ["b", "c", "a"]),
        # 3. then more free memory
        ({"a": B(500, 1, mem=4), "b": B(500, 1, mem=8)}, ["b", "a"]),
        # 4. then fewer workloads in total (neighbour density)
        ({"a": B(500, 1, 8, n=5), "b": B(500, 1, 8, n=2)}, ["b", "a"]),
        # a higher criterion beats every lower one
        ({"a": B(501, 9, 0, 9), "b": B(500, 0, 99, 0)}, ["a", "b"]),
        ({"a": B(500, 0, 0, 9), "b": B(500, 1, 99, 0)}, ["a", "b"]),
        # -1 never ranks
        ({"a": B(-1), "b": B(1)}, ["b"]),
        ({"a": B(-1)}, []),
    ],
)
def test_tiebreak_matrix(bids: dict[str, Bid], want: list[str]) -> None:
    assert rank(bids, RID) == want


def test_last_resort_is_the_hash_of_round_and_node() -> None:
    same = {n: B(500, 1, 8, 2) for n in ("n1", "n2", "n3", "n4")}
    assert rank(same, RID) == _hash_order("n1", "n2", "n3", "n4")
    # ...which differs between rounds, so identical idle nodes take turns.
    firsts = {winner(same, f"n1-{i:012x}") for i in range(32)}
    assert len(firsts) == 4


bid = st.builds(
    Bid,
    st.just(RID),
    st.sampled_from([-1, 1, 2, 500, 999, 1000]),
    st.just(""),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
)
bidsets = st.dictionaries(st.sampled_from([f"n{i}" for i in range(12)]), bid, max_size=12)


@given(bidsets, st.randoms(use_true_random=False))
def test_same_bids_same_winner_on_every_node(bids: dict[str, Bid], rnd: random.Random) -> None:
    """Bids arrive in any order at any node: the order they rank in never changes."""
    want = rank(bids, RID)
    items = list(bids.items())
    for _ in range(3):
        rnd.shuffle(items)
        assert rank(dict(items), RID) == want
    positive = [n for n, b in bids.items() if b.score > 0]
    assert sorted(want) == sorted(positive)
    if want:
        assert bids[want[0]].score == max(b.score for b in bids.values())
