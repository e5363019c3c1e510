"""SWIM precedence rules, as a table: what a claim does to what we believe."""

from __future__ import annotations

import logging
import random

import pytest

from meshd import config
from meshd.core.membership import Identity, Membership, MemberState
from meshd.core.membership.messages import Alive, Dead, Gossip, Left, Suspect, Update

ME = Identity("me", "00aa", ("10.0.0.1", 7420))
B_ID, B_ADDR = "00bb", ("10.0.0.2", 7420)
A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT


def core() -> Membership:
    return Membership(config.sim().membership, ME, random.Random(1), 0.0, logging.getLogger("test"))


def hear(m: Membership, *updates: Update, sender: str = "relay") -> None:
    m.receive(Gossip(0, tuple(updates)), sender, ("10.0.0.9", 7420), 1.0)


def with_b(state: MemberState, inc: int) -> Membership:
    m = core()
    hear(m, Alive("b", B_ID, B_ADDR, inc))
    if state is S:
        hear(m, Suspect("b", inc, "x"))
    elif state is D:
        hear(m, Dead("b", inc, "x"))
    elif state is L:
        hear(m, Left("b", inc))
    member = m.member("b")
    assert member is not None and (member.state, member.incarnation) == (state, inc)
    return m


def alive(inc: int) -> Alive:
    return Alive("b", B_ID, B_ADDR, inc)


TABLE = [
    # alive at 5
    (A, alive(4), A, 5),
    (A, alive(5), A, 5),
    (A, alive(6), A, 6),
    (A, Suspect("b", 4, "x"), A, 5),
    (A, Suspect("b", 5, "x"), S, 5),
    (A, Suspect("b", 6, "x"), S, 6),
    (A, Dead("b", 4, "x"), A, 5),
    (A, Dead("b", 5, "x"), D, 5),
    (A, Dead("b", 6, "x"), D, 6),
    (A, Left("b", 4), A, 5),
    (A, Left("b", 5), L, 5),
    # suspect at 5
    (S, alive(5), S, 5),
    (S, alive(6), A, 6),
    (S, Suspect("b", 4, "y"), S, 5),
    (S, Suspect("b", 5, "y"), S, 5),
    (S, Suspect("b", 6, "y"), S, 6),
    (S, Dead("b", 4, "y"), S, 5),
    (S, Dead("b", 5, "y"), D, 5),
    (S, Left("b", 5), L, 5),
    # dead at 5: final unless the member itself comes back with a newer incarnation
    (D, alive(5), D, 5),
    (D, alive(6), A, 6),
    (D, Suspect("b", 6, "y"), D, 5),
    (D, Dead("b", 6, "y"), D, 5),
    (D, Left("b", 6), D, 5),
    # left at 5: likewise
    (L, alive(5), L, 5),
    (L, alive(6), A, 6),
    (L, Suspect("b", 6, "y"), L, 5),
    (L, Dead("b", 6, "y"), L, 5),
]


@pytest.mark.parametrize(("state", "claim", "want_state", "want_inc"), TABLE)
def test_claims_about_others(
    state: MemberState, claim: Update, want_state: MemberState, want_inc: int
) -> None:
    m = with_b(state, 5)
    hear(m, claim)
    member = m.member("b")
    assert member is not None
    assert (member.state, member.incarnation) == (want_state, want_inc)


@pytest.mark.parametrize(
    "claim",
    [Suspect("b", 3, "x"), Dead("b", 3, "x"), Left("b", 3)],
    ids=["suspect", "dead", "left"],
)
def test_claims_about_strangers_are_ignored(claim: Update) -> None:
    m = core()
    hear(m, claim)
    assert m.member("b") is None


def test_alive_about_a_stranger_adds_it() -> None:
    m = core()
    hear(m, alive(3))
    member = m.member("b")
    assert member is not None and (member.state, member.incarnation) == (A, 3)


def test_alive_with_another_node_id_is_refused() -> None:
    m = with_b(A, 5)
    hear(m, Alive("b", "ffff", B_ADDR, 9))
    member = m.member("b")
    assert member is not None and member.incarnation == 5


@pytest.mark.parametrize(
    ("claim", "want_inc"),
    [
        (Alive("me", ME.node_id, ME.address, 0), 0),  # what we say ourselves
        (Alive("me", ME.node_id, ("10.9.9.9", 1), 0), 1),  # same incarnation, other address
        (Alive("me", ME.node_id, ME.address, 3), 4),  # a previous life's incarnation
        (Suspect("me", 0, "x"), 1),
        (Suspect("me", 7, "x"), 8),
        (Dead("me", 0, "x"), 1),
        (Left("me", 0), 1),
        (Suspect("me", 2**32 - 1, "x"), 0),  # can't be refuted: ignored, not believed
    ],
)
def test_claims_about_ourselves_are_refuted(claim: Update, want_inc: int) -> None:
    m = core()
    hear(m, claim)
    assert m.incarnation == want_inc
    me = m.member("me")
    assert me is not None and (me.state, me.incarnation) == (A, want_inc)


def test_stale_claims_about_ourselves_are_ignored() -> None:
    m = core()
    hear(m, Suspect("me", 4, "x"))
    assert m.incarnation == 5
    hear(m, Suspect("me", 4, "y"), Dead("me", 3, "z"), Alive("me", ME.node_id, ME.address, 2))
    assert m.incarnation == 5


def test_refuting_raises_awareness() -> None:
    m = core()
    hear(m, Suspect("me", 0, "x"))
    assert m.health == 1


def test_after_leaving_we_no_longer_refute() -> None:
    m = core()
    m.leave(1.0)
    hear(m, Dead("me", 0, "x"))
    assert m.incarnation == 0
    me = m.member("me")
    assert me is not None and me.state is L


@pytest.mark.parametrize("inc", [-1, 2**32, 2**64])
def test_out_of_range_incarnations_are_dropped(inc: int) -> None:
    m = with_b(A, 5)
    hear(m, alive(inc), Suspect("b", inc, "x"), Dead("b", inc, "x"), Suspect("me", inc, "x"))
    member = m.member("b")
    assert member is not None and (member.state, member.incarnation) == (A, 5)
    assert m.incarnation == 0
