"""DHT records under attack: signing, the wire form, verification and the merge rule.

Every refusal is a RecordError (a DhtError, a MeshdError) with a metric label: the DHT
drops a peer's bad record and carries on, so no other exception may escape ``decode``
or ``verify`` whatever bytes arrive.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.adapters.dht import record as rec
from meshd.adapters.dht.record import Record, StaticDirectory
from meshd.errors import DhtError, MeshdError, RecordError
from meshd.identity import pki

NOW = 1_700_000_000.0
MAX = 4096


@functools.cache
def keys() -> dict[str, Ed25519PrivateKey]:
    return {name: pki.new_key() for name in ("alpha", "beta", "mallory")}


def directory() -> StaticDirectory:
    d = StaticDirectory()
    for name in ("alpha", "beta"):  # mallory is not a member
        d.add(name, keys()[name].public_key())
    return d


def node_id(name: str) -> str:
    return pki.node_id_of(keys()[name].public_key())


def make(
    name: str = "alpha",
    *,
    key: str = "svc/blog",
    version: int = 1,
    expires_at: float = NOW + 300,
    value: bytes = b"10.0.0.1:80",
    deleted: bool = False,
    signer: str | None = None,
    author: str | None = None,
) -> Record:
    return rec.sign(
        keys()[signer or name],
        key=key,
        author=author or name,
        author_id=node_id(name),
        version=version,
        expires_at=expires_at,
        value=value,
        deleted=deleted,
    )


def test_round_trip_and_verify() -> None:
    r = make(value=b"x" * 100)
    blob = rec.encode(r)
    assert rec.decode(blob) == r
    rec.verify(rec.decode(blob), directory(), NOW, MAX)
    assert len(blob) == len(rec.encode(make(value=b""))) + 100
    assert r.digest == rec.key_digest("svc/blog") and len(r.digest) == 20


def test_record_is_compact() -> None:
    # No certificate inside: a small service record stays around 150 bytes.
    assert len(rec.encode(make())) < 160


def test_tombstone_round_trip_and_signed_flag() -> None:
    t = make(deleted=True, value=b"")
    assert rec.decode(rec.encode(t)).deleted
    rec.verify(t, directory(), NOW, MAX)
    # Turning a live record into a tombstone (or back) breaks the signature.
    live = make(value=b"")
    with pytest.raises(RecordError) as exc:
        rec.verify(replace(live, deleted=True), directory(), NOW, MAX)
    assert exc.value.reason == "signature"


def test_tombstone_with_a_value_is_malformed() -> None:
    with pytest.raises(RecordError, match="tombstone"):
        make(deleted=True, value=b"x")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"value": b"10.6.6.6:80"}, "signature"),
        ({"version": 2}, "signature"),
        ({"expires_at": NOW + 3000}, "signature"),
        ({"key": "svc/other"}, "signature"),
        ({"author": "beta"}, "author_mismatch"),
    ],
)
def test_tampering_is_caught(change: dict[str, object], reason: str) -> None:
    tampered = replace(make(), **change)  # type: ignore[arg-type]
    with pytest.raises(RecordError) as exc:
        rec.verify(rec.decode(rec.encode(tampered)), directory(), NOW, MAX)
    assert exc.value.reason == reason


def test_refusals_have_reasons() -> None:
    d = directory()
    cases = {
        "unknown_author": make("mallory"),
        "expired": make(expires_at=NOW),
        "too_large": make(value=b"x" * (MAX + 1)),
        # alpha's key claiming beta's id: the directory's key for beta won't verify it
        "signature": make("beta", signer="alpha"),
        # a valid signature under a name the directory doesn't know for this id
        "author_mismatch": make(author="gamma"),
    }
    for reason, r in cases.items():
        with pytest.raises(RecordError) as exc:
            rec.verify(r, d, NOW, MAX)
        assert exc.value.reason == reason, (reason, exc.value)
        assert isinstance(exc.value, DhtError) and isinstance(exc.value, MeshdError)


def test_revoked_author_is_refused() -> None:
    d = directory()
    r = make("beta")
    rec.verify(r, d, NOW, MAX)
    d.revoke(node_id("beta"))
    with pytest.raises(RecordError) as exc:
        rec.verify(r, d, NOW, MAX)
    assert exc.value.reason == "unknown_author"


def test_directory_key_must_match_the_author_id() -> None:
    class Lying:
        def key_for(self, author_id: str) -> object:
            return keys()["alpha"].public_key()  # the same key for every id

    with pytest.raises(RecordError) as exc:
        rec.verify(make("beta", signer="alpha"), Lying(), NOW, MAX)  # type: ignore[arg-type]
    assert exc.value.reason == "author_mismatch"


def test_directory_without_names_is_enough() -> None:
    class KeysOnly:
        def key_for(self, author_id: str) -> object:
            return directory().key_for(author_id)

    rec.verify(make(), KeysOnly(), NOW, MAX)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {"key": ""},
        {"key": "k" * (rec.MAX_KEY_BYTES + 1)},
        {"key": "\ud800"},
        {"author": "Not A Name"},
        {"version": -1},
        {"version": 2**64},
        {"expires_at": math.nan},
        {"expires_at": math.inf},
    ],
)
def test_bad_fields_cannot_be_signed(fields: dict[str, object]) -> None:
    with pytest.raises(RecordError):
        make(**fields)  # type: ignore[arg-type]


def test_author_id_must_be_canonical_hex() -> None:
    for bad in ("zz" * 20, "AB" * 20, "ab" * 19):
        with pytest.raises(RecordError):
            rec.sign(
                keys()["alpha"],
                key="k",
                author="alpha",
                author_id=bad,
                version=1,
                expires_at=NOW,
                value=b"",
            )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_only_raises_record_error(data: bytes) -> None:
    with pytest.raises(RecordError):
        rec.decode(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_bit_flip_is_refused(data: st.DataObject) -> None:
    blob = rec.encode(make(value=b"payload"))
    pos = data.draw(st.integers(0, len(blob) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(blob)
    flipped[pos] ^= 1 << bit
    with pytest.raises(RecordError):
        rec.verify(rec.decode(bytes(flipped)), directory(), NOW, MAX)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 200))
def test_truncated_or_extended_blobs_are_refused(extra: bytes, cut: int) -> None:
    blob = rec.encode(make())
    with pytest.raises(RecordError):
        rec.decode(blob + extra if extra else blob[: max(0, len(blob) - 1 - cut)])


def test_decode_refuses_non_bytes() -> None:
    for value in (None, "text", 42, [b"x"]):
        with pytest.raises(RecordError):
            rec.decode(value)  # type: ignore[arg-type]


def test_merge_keeps_newest_per_author_and_ties_keep_existing() -> None:
    a1, a2 = make(version=1), make(version=2)
    b1 = make("beta", version=1)
    assert rec.supersedes(a2, a1) and not rec.supersedes(a1, a2)
    twin = make(version=2, value=b"other")  # same version, other content: not a replacement
    assert not rec.supersedes(twin, a2)
    merged = rec.newest_per_author([a1, b1, a2, twin])
    assert merged == {node_id("alpha"): a2, node_id("beta"): b1}
    assert rec.newest_first([a1, a2, b1])[0] == a2


def test_static_directory_names_and_revocation() -> None:
    d = directory()
    assert d.name_for(node_id("alpha")) == "alpha"
    assert d.key_for(node_id("mallory")) is None
    d.revoke(node_id("alpha"))
    assert d.name_for(node_id("alpha")) is None
