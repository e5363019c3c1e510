"""Member states and the O(1) name sets the core samples from."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from meshd.core.membership.state import MemberState, NameSet, sample_names


def test_live_states() -> None:
    assert {s for s in MemberState if s.live} == {MemberState.ALIVE, MemberState.SUSPECT}
    assert str(MemberState.SUSPECT) == "suspect"


def test_name_set_add_discard_contains() -> None:
    s = NameSet()
    for x in "abcde":
        s.add(x)
    s.add("a")
    assert len(s) == 5
    s.discard("b")
    s.discard("zz")
    s.discard("e")
    assert sorted(s.items) == ["a", "c", "d"]
    assert "b" not in s and "c" in s
    for x in list(s.items):
        s.discard(x)
    assert len(s) == 0 and s.items == []


@pytest.mark.parametrize("total", [3, 10, 200])
def test_sample_is_distinct_excludes_and_spans_sets(total: int) -> None:
    a, b = NameSet(), NameSet()
    for i in range(total):
        (a if i % 2 else b).add(f"n{i}")
    rng = random.Random(1)
    for _ in range(200):
        got = sample_names(rng, (a, b), 3, exclude="n1")
        assert len(got) == min(3, total - 1)
        assert len(set(got)) == len(got)
        assert "n1" not in got


def test_sample_is_roughly_uniform() -> None:
    a, b = NameSet(), NameSet()
    for i in range(20):
        (a if i < 5 else b).add(f"n{i}")
    rng = random.Random(2)
    counts = Counter(x for _ in range(6000) for x in sample_names(rng, (a, b), 2))
    assert set(counts) == {f"n{i}" for i in range(20)}
    assert max(counts.values()) < 1.3 * min(counts.values())


def test_sample_of_nothing() -> None:
    assert sample_names(random.Random(0), (NameSet(),), 3) == []
    s = NameSet()
    s.add("x")
    assert sample_names(random.Random(0), (s,), 0) == []
    assert sample_names(random.Random(0), (s,), 3, exclude="x") == []
