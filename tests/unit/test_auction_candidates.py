"""Candidate selection: everyone in a small mesh, d·log2 N in a large one, widening."""

from __future__ import annotations

import random

import pytest

from meshd.core.auction.candidates import eligible, sample_size, select
from meshd.core.auction.model import Constraints

ANY = Constraints()


def names(n: int) -> list[str]:
    return [f"n{i:04d}" for i in range(n)]


@pytest.mark.parametrize(
    ("n", "d", "k"),
    [(0, 2.0, 0), (1, 2.0, 1), (2, 2.0, 2), (33, 2.0, 11), (64, 2.0, 12), (1000, 2.0, 20),
     (1000, 1.0, 10), (1000, 3.0, 30), (4, 10.0, 4)],
)  # fmt: skip
def test_sample_size(n: int, d: float, k: int) -> None:
    assert sample_size(n, d) == k


def test_constraints_filter_and_sort() -> None:
    c = Constraints(nodes=frozenset({"c", "a", "zz"}), avoid=frozenset({"c"}))
    assert eligible(["c", "b", "a", "a"], c) == ["a"]
    assert eligible(["b", "a"], Constraints(avoid=frozenset({"b"}))) == ["a"]


def test_small_mesh_asks_everyone() -> None:
    s = select(names(32), ANY, 1, 32, 2.0, 2, random.Random(1))
    assert s.candidates == names(32) and s.exhaustive and s.eligible == 32


def test_large_mesh_samples_then_widens_then_asks_all() -> None:
    members = names(1000)
    rng = random.Random(1)
    first = select(members, ANY, 1, 32, 2.0, 3, rng)
    assert len(first.candidates) == 20 and not first.exhaustive
    assert first.candidates == sorted(set(first.candidates))
    second = select(members, ANY, 2, 32, 2.0, 3, rng)
    assert len(second.candidates) == 40 and not second.exhaustive
    last = select(members, ANY, 3, 32, 2.0, 3, rng, exclude=set(first.candidates))
    assert last.exhaustive and len(last.candidates) == 980


def test_sampling_is_deterministic_given_the_rng() -> None:
    a = select(names(500), ANY, 1, 32, 2.0, 2, random.Random(7))
    b = select(list(reversed(names(500))), ANY, 1, 32, 2.0, 2, random.Random(7))
    assert a == b


def test_excluded_members_are_not_asked_again() -> None:
    s = select(names(5), ANY, 2, 32, 2.0, 2, random.Random(1), exclude={"n0001", "n0003"})
    assert s.candidates == ["n0000", "n0002", "n0004"] and s.eligible == 5


def test_nobody_eligible() -> None:
    s = select(["a"], Constraints(nodes=frozenset({"b"})), 1, 32, 2.0, 2, random.Random(1))
    assert s.candidates == [] and s.eligible == 0
