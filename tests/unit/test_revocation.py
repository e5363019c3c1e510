"""Revocation records: only the mesh CA can make one, and nothing else passes for one."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.errors import IdentityError
from meshd.identity import revocation
from meshd.identity.revocation import Revocation, RevocationList

try:
    from tests.unit import pki_fixtures as fx
except ImportError:  # tests/unit is not a package, so pytest put it on sys.path
    import pki_fixtures as fx  # type: ignore[no-redef]

NOW = fx.NOW


def _rev(serial: str = "1f2e3d", node_id: str = "ab" * 20, name: str = "alpha") -> Revocation:
    return Revocation(serial, name, node_id, NOW, "decommissioned")


def _ca_signed(payload: bytes) -> bytes:
    """A record the CA really signed, whatever the payload: for the malformed cases."""
    return fx.mesh().ca_key.sign(revocation._PREFIX + payload) + payload


def test_sign_verify_round_trip() -> None:
    rev = _rev()
    blob = revocation.sign(fx.mesh().ca_key, rev)
    assert revocation.verify(blob, fx.mesh().ca_cert) == rev
    assert json.loads(blob[64:]) == {
        "serial": "1f2e3d",
        "name": "alpha",
        "node_id": "ab" * 20,
        "revoked_at": NOW,
        "reason": "decommissioned",
    }


def test_signing_is_deterministic() -> None:
    ca_key = fx.mesh().ca_key
    assert revocation.sign(ca_key, _rev()) == revocation.sign(ca_key, _rev())


@settings(max_examples=150, deadline=None)
@given(
    serial=st.text(max_size=40),
    name=st.text(max_size=63),
    node_id=st.text(max_size=40),
    revoked_at=st.floats(allow_nan=False, allow_infinity=False),
    reason=st.text(max_size=200),
)
def test_any_fields_round_trip(
    serial: str, name: str, node_id: str, revoked_at: float, reason: str
) -> None:
    rev = Revocation(serial, name, node_id, revoked_at, reason)
    blob = revocation.sign(fx.mesh().ca_key, rev)
    assert revocation.verify(blob, fx.mesh().ca_cert) == rev


@pytest.mark.parametrize("other", ["twin_mesh", "foreign_mesh"])
def test_a_revocation_signed_by_another_ca_is_refused(other: str) -> None:
    forged = revocation.sign(getattr(fx, other)().ca_key, _rev())
    with pytest.raises(IdentityError, match="not signed by the mesh CA"):
        revocation.verify(forged, fx.mesh().ca_cert)


def test_a_revocation_signed_by_a_member_is_refused() -> None:
    forged = revocation.sign(fx.mesh()["alpha"].key, _rev())
    with pytest.raises(IdentityError):
        revocation.verify(forged, fx.mesh().ca_cert)


def test_a_ca_signature_without_the_domain_prefix_is_refused() -> None:
    # What the CA signs for other purposes must never pass for a revocation.
    payload = revocation.sign(fx.mesh().ca_key, _rev())[64:]
    blob = fx.mesh().ca_key.sign(payload) + payload
    with pytest.raises(IdentityError):
        revocation.verify(blob, fx.mesh().ca_cert)


def test_every_truncation_is_refused() -> None:
    blob = revocation.sign(fx.mesh().ca_key, _rev())
    for n in range(len(blob)):
        with pytest.raises(IdentityError):
            revocation.verify(blob[:n], fx.mesh().ca_cert)


def test_every_single_bit_flip_is_refused() -> None:
    blob = revocation.sign(fx.mesh().ca_key, _rev())
    for pos in range(len(blob)):
        for bit in range(8):
            with pytest.raises(IdentityError):
                revocation.verify(fx.flip(blob, pos, bit), fx.mesh().ca_cert)


@settings(max_examples=100, deadline=None)
@given(extra=st.binary(min_size=1, max_size=64), data=st.data())
def test_insertions_are_refused(extra: bytes, data: st.DataObject) -> None:
    blob = revocation.sign(fx.mesh().ca_key, _rev())
    at = data.draw(st.integers(0, len(blob)), label="at")
    with pytest.raises(IdentityError):
        revocation.verify(blob[:at] + extra + blob[at:], fx.mesh().ca_cert)


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=512))
def test_garbage_only_raises_identity_error(garbage: bytes) -> None:
    with pytest.raises(IdentityError):
        revocation.verify(garbage, fx.mesh().ca_cert)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'"a string"',
        b'{"serial": "1"}',
        b'{"serial":"1","name":"a","node_id":"b","reason":"r","revoked_at":"soon"}',
        b'{"serial":"1","name":"a","node_id":"b","reason":"r","revoked_at":[]}',
        # Regression: float() of a huge integer raised OverflowError, not IdentityError.
        b'{"serial":"1","name":"a","node_id":"b","reason":"r","revoked_at":' + b"9" * 400 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=lambda p: p[:24].decode("latin-1"),
)
def test_a_malformed_record_is_refused_even_when_the_ca_signed_it(payload: bytes) -> None:
    with pytest.raises(IdentityError):
        revocation.verify(_ca_signed(payload), fx.mesh().ca_cert)


def test_a_lenient_but_well_signed_record_is_normalised() -> None:
    payload = b'{"serial":31,"name":"a","node_id":"b","reason":"r","revoked_at":5,"x":1}'
    rev = revocation.verify(_ca_signed(payload), fx.mesh().ca_cert)
    assert rev == Revocation("31", "a", "b", 5.0, "r")
    assert math.isfinite(rev.revoked_at)


# -- the list ------------------------------------------------------------------------------


def test_add_is_idempotent() -> None:
    rl = RevocationList()
    assert len(rl) == 0
    assert rl.add(_rev()) is True
    assert rl.add(_rev()) is False
    assert rl.add(Revocation("1f2e3d", "renamed", "cd" * 20, NOW + 1, "again")) is False
    assert len(rl) == 1
    assert list(rl) == [_rev()]


def test_is_revoked_by_serial_and_by_node_id() -> None:
    rl = RevocationList()
    rl.add(_rev(serial="aa", node_id="11" * 20))
    assert rl.is_revoked("aa")
    assert rl.is_revoked("aa", "ff" * 20)
    assert rl.is_revoked("bb", "11" * 20)  # another certificate for the same key
    assert not rl.is_revoked("bb")
    assert not rl.is_revoked("bb", "22" * 20)


def test_an_empty_node_id_never_matches() -> None:
    rl = RevocationList()
    rl.add(_rev(serial="aa", node_id=""))
    assert rl.is_revoked("aa", "")
    assert not rl.is_revoked("bb", "")
    assert not rl.is_revoked("bb", "11" * 20)


def test_the_list_holds_every_distinct_serial() -> None:
    rl = RevocationList()
    revs = [_rev(serial=format(i, "x"), node_id=f"{i:040x}") for i in range(50)]
    for rev in revs:
        assert rl.add(rev)
    assert len(rl) == 50
    assert sorted(rl, key=lambda r: int(r.serial, 16)) == revs
    assert all(rl.is_revoked(r.serial) and rl.is_revoked("zz", r.node_id) for r in revs)


def test_a_verified_record_revokes_the_real_certificate() -> None:
    beta = fx.mesh().issue("beta2")
    info = beta.info
    blob = revocation.sign(
        fx.mesh().ca_key, Revocation(info.serial, info.name, info.node_id, NOW, "test")
    )
    rl = RevocationList()
    rl.add(revocation.verify(blob, fx.mesh().ca_cert))
    assert rl.is_revoked(info.serial, info.node_id)
    assert not rl.is_revoked(fx.mesh()["alpha"].info.serial, fx.mesh()["alpha"].info.node_id)


@given(st.lists(st.binary(min_size=1, max_size=600), max_size=8))
def test_a_bundle_gives_back_its_records(records: list[bytes]) -> None:
    assert revocation.unbundle(revocation.bundle(records)) == records


@pytest.mark.parametrize(
    "body",
    [
        b"\x00",  # half a length
        b"\x00\x05abc",  # shorter than it says
        b"\x00\x00",  # an empty record
        b"\xff\xff" + b"x" * 65535,  # over the record limit
    ],
)
def test_a_broken_bundle_is_refused(body: bytes) -> None:
    with pytest.raises(IdentityError):
        revocation.unbundle(body)


def test_an_oversized_record_is_not_bundled() -> None:
    with pytest.raises(IdentityError, match="too large"):
        revocation.bundle([b"x" * (revocation.MAX_RECORD + 1)])
