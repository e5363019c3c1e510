"""Custody of the CA key: promotion records, the sealed key, and the passphrase backup."""

from __future__ import annotations

import base64
import json

import nacl.pwhash
import pytest
from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
from nacl.public import PublicKey, SealedBox

from meshd.config import SecurityConfig
from meshd.errors import IdentityError
from meshd.identity import custody, enrolment, pki
from meshd.identity.files import NodeIdentity

NOW = 1_700_000_000.0
MAX_AGE = 30.0
OPS, MEM = nacl.pwhash.argon2id.OPSLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_MIN


def _member(founder: NodeIdentity, name: str) -> NodeIdentity:
    assert founder.ca_key is not None
    key = pki.new_key()
    cert = pki.issue(founder.ca_key, founder.ca_cert, key.public_key(), name, "node", NOW, 30)
    info = pki.verify(cert, founder.ca_cert, NOW)
    return NodeIdentity(key, cert, founder.ca_cert, founder.mesh_secret, None, info)


@pytest.fixture(scope="module")
def mesh() -> tuple[NodeIdentity, NodeIdentity, NodeIdentity]:
    alpha = enrolment.found("alpha", "lab.example", SecurityConfig(), NOW)
    return alpha, _member(alpha, "beta"), _member(alpha, "gamma")


def _accept(body: dict[str, str], to: NodeIdentity, sender: str = "alpha", now: float = NOW):  # type: ignore[no-untyped-def]
    return custody.accept(body, to.key, to.ca_cert, to.info, sender, now, MAX_AGE)


def test_a_promotion_hands_the_ca_key_to_the_named_node(mesh) -> None:  # type: ignore[no-untyped-def]
    alpha, beta, _ = mesh
    body = custody.offer(alpha.ca_key, alpha.ca_cert, beta.cert, "alpha", NOW)
    key, promo = _accept(body, beta)
    assert pki.key_pem(key) == pki.key_pem(alpha.ca_key)
    assert (promo.node, promo.node_id, promo.by) == ("beta", beta.node_id, "alpha")
    # The key is not in the body in the clear.
    assert alpha.ca_key.private_bytes_raw() not in base64.b64decode(body["sealed_key"])


def test_a_promotion_for_another_node_opens_nothing(mesh) -> None:  # type: ignore[no-untyped-def]
    alpha, beta, gamma = mesh
    body = custody.offer(alpha.ca_key, alpha.ca_cert, beta.cert, "alpha", NOW)
    with pytest.raises(IdentityError, match="names beta, not this node"):
        _accept(body, gamma)
    # Even with a record naming gamma, beta's sealed key does not open with gamma's key.
    for_gamma = custody.offer(alpha.ca_key, alpha.ca_cert, gamma.cert, "alpha", NOW)
    forged = {"promotion": for_gamma["promotion"], "sealed_key": body["sealed_key"]}
    with pytest.raises(IdentityError, match="does not open"):
        _accept(forged, gamma)


def test_only_a_ca_holder_can_promote(mesh) -> None:  # type: ignore[no-untyped-def]
    alpha, beta, gamma = mesh
    # gamma is a member but holds no CA key: its own key signs nothing the CA vouches for.
    with pytest.raises(IdentityError, match="does not match the mesh CA"):
        custody.offer(gamma.key, alpha.ca_cert, beta.cert, "gamma", NOW)
    body = custody.offer(alpha.ca_key, alpha.ca_cert, beta.cert, "alpha", NOW)
    record = base64.b64decode(body["promotion"])
    resigned = gamma.key.sign(b"meshd-ca-promotion-v1\x00" + record[64:]) + record[64:]
    with pytest.raises(IdentityError, match="not signed by the mesh CA"):
        _accept({**body, "promotion": base64.b64encode(resigned).decode()}, beta)


def test_the_sender_must_be_the_one_named_and_the_record_fresh(mesh) -> None:  # type: ignore[no-untyped-def]
    alpha, beta, _ = mesh
    body = custody.offer(alpha.ca_key, alpha.ca_cert, beta.cert, "alpha", NOW)
    with pytest.raises(IdentityError, match="gamma sent it"):
        _accept(body, beta, sender="gamma")
    with pytest.raises(IdentityError, match="stale"):
        _accept(body, beta, now=NOW + MAX_AGE + 1)


def test_a_key_that_is_not_the_ca_key_is_refused(mesh) -> None:  # type: ignore[no-untyped-def]
    alpha, beta, _ = mesh
    body = custody.offer(alpha.ca_key, alpha.ca_cert, beta.cert, "alpha", NOW)
    # The same record, with a sealed key that is not the CA's.
    other = pki.new_key()
    other_body = dict(body)
    curve = crypto_sign_ed25519_pk_to_curve25519(pki.public_raw(beta.cert.public_key()))  # type: ignore[arg-type]
    sealed = SealedBox(PublicKey(curve)).encrypt(other.private_bytes_raw())
    other_body["sealed_key"] = base64.b64encode(sealed).decode()
    with pytest.raises(IdentityError, match="not the mesh CA key"):
        _accept(other_body, beta)
    assert _accept(body, beta)[0] is not None


@pytest.mark.parametrize("field", ["promotion", "sealed_key"])
@pytest.mark.parametrize("value", ["", "%%%", "AAAA", None])
def test_garbage_is_refused_with_a_sentence(mesh, field: str, value: str | None) -> None:  # type: ignore[no-untyped-def]
    alpha, beta, _ = mesh
    body: dict[str, object] = dict(
        custody.offer(alpha.ca_key, alpha.ca_cert, beta.cert, "alpha", NOW)
    )
    body[field] = value
    with pytest.raises(IdentityError):
        _accept(body, beta)  # type: ignore[arg-type]


def test_backup_round_trip_and_refusals(mesh) -> None:  # type: ignore[no-untyped-def]
    alpha, _, _ = mesh
    blob = custody.seal_backup(alpha.ca_key, alpha.ca_cert, b"correct horse", OPS, MEM)
    doc = json.loads(blob)
    assert doc["ca_fingerprint"] == alpha.ca_fingerprint
    assert pki.key_pem(alpha.ca_key) not in blob
    key = custody.open_backup(blob, b"correct horse", alpha.ca_cert)
    assert custody.matches_ca(key, alpha.ca_cert)
    with pytest.raises(IdentityError, match="passphrase does not open"):
        custody.open_backup(blob, b"wrong horse!", alpha.ca_cert)
    other = enrolment.found("x", "other.example", SecurityConfig(), NOW)
    with pytest.raises(IdentityError, match="another mesh"):
        custody.open_backup(blob, b"correct horse", other.ca_cert)
    with pytest.raises(IdentityError, match="not a meshd CA backup"):
        custody.open_backup(b"{}", b"correct horse", alpha.ca_cert)
    with pytest.raises(IdentityError, match="not a meshd CA backup"):
        custody.open_backup(b"\xff not json", b"correct horse", alpha.ca_cert)
    with pytest.raises(IdentityError, match="at least"):
        custody.seal_backup(alpha.ca_key, alpha.ca_cert, b"short", OPS, MEM)
