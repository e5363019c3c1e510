"""Sealed datagrams are valid only where they were sent, and only under a live key.

The attacks these stand for: a datagram copied off the LAN and sent to another node
(it must be dropped there, whatever it carries), and a removed node that still holds
the mesh key it enrolled with (after a rotation its key opens nothing new, and what it
seals stops being accepted once the grace period is over).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.envelope import addressee
from meshd.core.keyring import KeyRing, MeshKey, key_id_of
from meshd.errors import EnvelopeError, MisaddressedError, UnknownKeyError
from tests.unit import pki_fixtures as fx

NOW = 1_700_000_000.0
A, B, C = ("10.0.0.1", 7000), ("10.0.0.2", 7000), ("10.0.0.1", 7001)


def test_a_datagram_opens_only_at_its_addressee() -> None:
    tx = fx.sealer(1)
    sealed = tx.seal(b"award", NOW, to=B)
    assert fx.sealer(2, at=B).open(sealed, NOW) == b"award"
    for elsewhere in (A, C, ("10.0.0.2", 7001), ("::1", 7000)):
        with pytest.raises(MisaddressedError):
            fx.sealer(3, at=elsewhere).open(sealed, NOW)


@settings(max_examples=200, deadline=None)
@given(
    to=st.tuples(st.ip_addresses().map(str), st.integers(1, 65535)),
    other=st.tuples(st.ip_addresses().map(str), st.integers(1, 65535)),
    payload=st.binary(max_size=256),
)
def test_any_datagram_copied_to_any_other_address_is_dropped(
    to: tuple[str, int], other: tuple[str, int], payload: bytes
) -> None:
    sealed = fx.sealer(1).seal(payload, NOW, to=to)
    if addressee(other) == addressee(to):
        assert fx.sealer(2, at=other).open(sealed, NOW) == payload
    else:
        with pytest.raises(MisaddressedError):
            fx.sealer(2, at=other).open(sealed, NOW)


def test_an_ipv4_mapped_address_names_the_ipv4_node() -> None:
    assert addressee(("::ffff:10.0.0.2", 7000)) == addressee(B)
    sealed = fx.sealer(1).seal(b"x", NOW, to=("::ffff:10.0.0.2", 7000))
    assert fx.sealer(2, at=B).open(sealed, NOW) == b"x"


def test_a_host_name_binds_the_port_only() -> None:
    assert addressee(("seed.lab.example", 7000)) == (7000).to_bytes(2, "big")


# -- key epochs --------------------------------------------------------------------------


def _rotated(rx: fx.Pipe, epoch: int, seed: int, at: float) -> MeshKey:
    key = MeshKey(epoch, fx.secret(100 + seed))
    rx.keys.add(key, at)
    return key


def test_after_a_rotation_the_newest_key_seals_and_a_holder_of_the_old_one_is_locked_out() -> None:
    member, peer, removed = fx.sealer(1, at=A), fx.sealer(2, at=B), fx.sealer(3, at=C)
    for node in (member, peer):
        _rotated(node, 1, 1, NOW)
    sealed = member.seal(b"after the removal", NOW + 1, to=C)
    with pytest.raises(UnknownKeyError) as caught:  # the removed node can't open it
        removed.open(sealed, NOW + 1)
    assert caught.value.key_id == key_id_of(fx.secret(101))
    # What the removed node seals with the old key gets through only during the grace...
    assert peer.open(removed.seal(b"old", NOW + 2, to=B), NOW + 2) == b"old"
    with pytest.raises(EnvelopeError, match="retired mesh key"):  # ...and never after it
        peer.open(removed.seal(b"old", NOW + 20, to=B), NOW + 20)


def test_a_member_that_missed_the_rotation_learns_the_key_id_it_lacks() -> None:
    member, laggard = fx.sealer(1, at=A), fx.sealer(2, at=B)
    key = _rotated(member, 1, 1, NOW)
    sealed = member.seal(b"probe", NOW, to=B)
    with pytest.raises(UnknownKeyError) as caught:
        laggard.open(sealed, NOW)
    assert caught.value.key_id == key.key_id
    laggard.keys.add(key, NOW + 3)  # fetched over mTLS
    assert laggard.open(sealed, NOW + 3) == b"probe"


def test_two_keys_of_one_epoch_agree_on_the_larger_id_everywhere() -> None:
    k1, k2 = MeshKey(1, fx.secret(201)), MeshKey(1, fx.secret(202))
    one, two = KeyRing(15.0), KeyRing(15.0)
    for ring, order in ((one, (k1, k2)), (two, (k2, k1))):
        ring.add(MeshKey(0, fx.secret(0)), 0.0)
        for k in order:
            ring.add(k, NOW)
    assert one.current == two.current == max(k1, k2, key=lambda k: k.order)


def test_the_ring_keeps_a_bounded_number_of_keys() -> None:
    ring = KeyRing(15.0)
    for epoch in range(40):
        ring.add(MeshKey(epoch, fx.secret(300 + epoch)), NOW + epoch)
    assert len(ring.keys()) <= 8 and ring.current.epoch == 39
