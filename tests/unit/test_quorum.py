"""Table tests of majority quorums (after etcd raft's quorum package tests)."""

from __future__ import annotations

import itertools

import pytest

from meshd.core.quorum import VoteResult, majority, vote_result

W, L, P = VoteResult.WON, VoteResult.LOST, VoteResult.PENDING


@pytest.mark.parametrize(
    ("n", "need"),
    [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4), (16, 9), (17, 9)],
)
def test_majority(n: int, need: int) -> None:
    assert majority(n) == need


def test_majority_refuses_a_negative_roster() -> None:
    with pytest.raises(ValueError, match="can't have -1 voters"):
        majority(-1)


def _names(n: int) -> list[str]:
    return [f"n{i}" for i in range(1, n + 1)]


# (roster size, yes, no, result); yes/no are names, so duplicates and outsiders appear.
ROWS: list[tuple[int, list[str], list[str], VoteResult]] = [
    # An empty roster never wins, whatever the votes.
    (0, [], [], L),
    (0, ["n1"], [], L),
    # One voter.
    (1, [], [], P),
    (1, ["n1"], [], W),
    (1, [], ["n1"], L),
    (1, ["x"], [], P),  # a non-voter's yes is ignored
    # Two voters: both are needed.
    (2, [], [], P),
    (2, ["n1"], [], P),
    (2, ["n1", "n2"], [], W),
    (2, ["n1"], ["n2"], L),
    (2, ["n1", "n1"], [], P),  # a duplicate counts once
    # Three voters.
    (3, [], [], P),
    (3, ["n1"], [], P),
    (3, ["n1", "n2"], [], W),
    (3, ["n1"], ["n2"], P),
    (3, [], ["n1", "n2"], L),
    (3, ["n1"], ["n2", "n3"], L),
    (3, ["n1", "n1", "n1"], [], P),
    (3, ["n1", "x", "y"], [], P),  # outsiders never make a majority
    (3, ["n1", "n2", "n3"], [], W),
    (3, ["n1"], ["n1", "n2"], P),  # yes wins over no for one voter
    # Four voters: three needed, a 2|2 split is lost.
    (4, ["n1", "n2"], [], P),
    (4, ["n1", "n2"], ["n3", "n4"], L),
    (4, ["n1", "n2"], ["n3"], P),
    (4, ["n1", "n2", "n3"], ["n4"], W),
    # Five voters.
    (5, ["n1", "n2"], [], P),
    (5, ["n1", "n2", "n3"], [], W),
    (5, ["n1", "n2"], ["n3", "n4", "n5"], L),
    (5, ["n1", "n2"], ["n3", "n4"], P),
    (5, ["n1"], ["n2", "n3", "n4"], L),
    (5, ["n1", "n2", "x", "y", "z"], [], P),
    # Sixteen voters: nine needed.
    (16, _names(8), [], P),
    (16, _names(9), [], W),
    (16, _names(8), _names(16)[8:], L),
    (16, _names(8), _names(16)[9:], P),
    (16, _names(8) * 3, [], P),
    (16, [*_names(8), "n17"], [], P),
]


@pytest.mark.parametrize(("n", "yes", "no", "want"), ROWS)
def test_vote_result(n: int, yes: list[str], no: list[str], want: VoteResult) -> None:
    assert vote_result(_names(n), yes, no) is want


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7])
def test_vote_result_against_brute_force(n: int) -> None:
    """Every split of an n-voter roster into yes/no/silent, against counting by hand."""
    roster = _names(n)
    for split in itertools.product("yns", repeat=n):
        yes = [v for v, s in zip(roster, split, strict=True) if s == "y"]
        no = [v for v, s in zip(roster, split, strict=True) if s == "n"]
        if 2 * len(yes) > n:
            want = W
        elif 2 * (n - len(no)) > n:
            want = P
        else:
            want = L
        assert vote_result(roster, yes, no) is want, split


def test_two_majorities_of_one_roster_always_intersect() -> None:
    """The property fencing relies on, checked exhaustively for up to 7 voters."""
    for n in range(1, 8):
        roster = _names(n)
        wins = [
            set(c)
            for k in range(majority(n), n + 1)
            for c in itertools.combinations(roster, k)
            if vote_result(roster, c) is W
        ]
        assert wins
        for a, b in itertools.combinations(wins, 2):
            assert a & b
