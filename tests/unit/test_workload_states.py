"""The mesh-wide workload state core: last writer wins per generation, in-turn re-announcing,
strict decoding."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core import workload_states as ws


def test_own_changes_are_announced_and_only_state_changes_are_events() -> None:
    book = ws.StateBook("n1")
    entry, changed = book.set("w1", 1, "starting", "qemu driver", 10.0)
    assert changed and entry.node == "n1"
    _, changed = book.set("w1", 1, "starting", "still booting", 11.0)
    assert not changed
    _, changed = book.set("w1", 1, "running", "", 12.0)
    assert changed
    assert book.state_of("w1", 1) == ("running", "")


def test_a_newer_generation_wins_and_older_news_is_ignored() -> None:
    book = ws.StateBook("n1")
    assert book.receive(ws.StateEntry("w1", 2, "running", "", "n3", 5.0))
    # An earlier generation (the workload's old owner) with a later clock: ignored.
    assert not book.receive(ws.StateEntry("w1", 1, "failed", "x", "n2", 99.0))
    # The same generation's later announcement wins; an overtaken earlier one doesn't.
    assert book.receive(ws.StateEntry("w1", 2, "stopped", "", "n3", 6.0))
    assert not book.receive(ws.StateEntry("w1", 2, "starting", "", "n3", 5.5))
    assert book.state_of("w1", 2) == ("stopped", "")


def test_own_stamps_increase_even_when_the_clock_does_not() -> None:
    """``starting`` then ``running`` within the clock's resolution (or after the clock
    stepped back): the later change must still win on every other node."""
    owner, peer = ws.StateBook("n1"), ws.StateBook("n2")
    first, _ = owner.set("w1", 1, "starting", "fake driver", 10.0)
    second, _ = owner.set("w1", 1, "running", "", 10.0)
    third, _ = owner.set("w1", 1, "stopped", "", 9.0)
    assert first.at < second.at < third.at
    for entry in (first, second, third):
        assert peer.receive(ws.decode(ws.encode(entry), "n1"))
    assert peer.state_of("w1", 1) == ("stopped", "")
    # A new generation starts from its own clock.
    fresh, _ = owner.set("w1", 2, "starting", "", 5.0)
    assert fresh.at == 5.0


def test_a_placement_newer_than_any_state_is_pending() -> None:
    book = ws.StateBook("n1")
    book.receive(ws.StateEntry("w1", 1, "running", "", "n2", 1.0))
    assert book.state_of("w1", 2) == ("pending", "")
    assert book.state_of("w9", 1) == ("pending", "")


def test_re_announcing_goes_through_every_own_state_in_turn() -> None:
    book = ws.StateBook("n1", per_interval=3)
    for i in range(7):
        book.set(f"w{i}", 1, "running", "", float(i))
    book.receive(ws.StateEntry("x", 1, "running", "", "n2", 1.0))  # not ours: never
    seen: list[str] = []
    for _ in range(3):
        batch = book.due()
        assert len(batch) == 3 and all(e.node == "n1" for e in batch)
        seen += [e.workload_id for e in batch]
    assert set(seen) == {f"w{i}" for i in range(7)}


def test_forget_drops_only_our_own_entry() -> None:
    book = ws.StateBook("n1")
    book.set("w1", 1, "running", "", 1.0)
    book.receive(ws.StateEntry("w2", 1, "running", "", "n2", 1.0))
    book.forget("w1")
    book.forget("w2")
    assert book.get("w1") is None
    assert book.get("w2") is not None
    assert book.due() == []


def test_wire_round_trip_names_the_authenticated_origin() -> None:
    e = ws.StateEntry("w1", 3, "failed", "exited with 1" + "é" * 300, "n1", 12.5)
    back = ws.decode(ws.encode(e), "n7")
    assert (back.workload_id, back.generation, back.state, back.at) == ("w1", 3, "failed", 12.5)
    assert back.node == "n7"  # never what the payload says
    assert len(back.detail.encode()) <= ws.MAX_DETAIL


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"[]",
        b'{"w":"w1","g":1,"s":"running"}',
        b'{"w":"w1","g":-1,"s":"running","t":1}',
        b'{"w":"w1","g":1.5,"s":"running","t":1}',
        b'{"w":"w1","g":1,"s":"exploded","t":1}',
        b'{"w":"","g":1,"s":"running","t":1}',
        b'{"w":"w1","g":1,"s":"running","t":"soon"}',
        b'{"w":"w1","g":1,"s":"running","t":1,"d":7}',
    ],
)
def test_malformed_states_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        ws.decode(payload, "n2")


@given(st.binary(max_size=200))
def test_decode_raises_only_value_error(payload: bytes) -> None:
    with contextlib.suppress(ValueError):
        ws.decode(payload, "n2")
