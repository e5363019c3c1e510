"""Replay memory per sender: one sender (a removed node, a member with a broken clock,
an attacker holding the key) can't make another's genuine messages look stale."""

from __future__ import annotations

import pytest

from meshd.core.replay import ReplayGuard
from meshd.errors import ReplayError

NOW = 1000.0


def test_a_flood_stamped_in_the_future_raises_only_the_flooders_floor() -> None:
    # The attack: datagrams stamped just inside the allowed skew, thousands of them.
    # With one shared memory, evicting to make room raised the floor for everybody past
    # the present, and every genuine datagram was then dropped as "older than memory".
    guard = ReplayGuard(30, 64)
    refused = 0
    for i in range(10_000):
        try:
            guard.check("mallory", i.to_bytes(4, "big"), NOW + 29.0, NOW)
        except ReplayError:
            refused += 1  # past its own memory, the flooder is refused
    assert refused == 10_000 - 65 and guard.floor("mallory") == NOW + 29.0
    for i in range(100):  # the genuine sender is untouched
        guard.check("alice", i.to_bytes(4, "big"), NOW + i / 100, NOW + i / 100)
    assert guard.floor("alice") < NOW + 1  # her own, from her own history


def test_a_stamp_beyond_the_skew_is_dropped_without_touching_any_memory() -> None:
    guard = ReplayGuard(30, 4)
    with pytest.raises(ReplayError, match="in the future"):
        guard.check("mallory", b"n", NOW + 31.0, NOW)
    assert guard.senders() == 0 and len(guard) == 0


def test_a_forgotten_sender_loses_only_what_was_in_flight() -> None:
    guard = ReplayGuard(30, 16, senders=2)
    guard.check("alice", b"a1", NOW - 1, NOW)
    guard.check("bob", b"b1", NOW, NOW)
    guard.check("carol", b"c1", NOW + 1, NOW + 1)  # alice is forgotten at NOW + 1
    with pytest.raises(ReplayError):  # a replay of alice's old datagram: refused
        guard.check("alice", b"a1", NOW - 1, NOW + 2)
    guard.check("alice", b"a2", NOW + 2, NOW + 2)  # what she sends next gets through
    assert guard.senders() == 2


def test_each_sender_keeps_its_own_bounded_memory() -> None:
    guard = ReplayGuard(30, 8, senders=4)
    for s in range(4):
        for i in range(50):
            guard.check(s, i.to_bytes(2, "big"), NOW + i / 10, NOW + i / 10)
    assert len(guard) <= 4 * 8
    with pytest.raises(ReplayError, match="already seen"):
        guard.check(3, (49).to_bytes(2, "big"), NOW + 4.9, NOW + 5)
