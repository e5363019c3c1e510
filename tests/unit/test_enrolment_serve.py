"""The seed's side of a join: retries by the same key, replacements, and what stays refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from meshd.adapters.store import roster, token_used_by
from meshd.adapters.store.db import Store
from meshd.config import SecurityConfig
from meshd.errors import EnrolmentError, IdentityError, TokenError
from meshd.identity import authority, enrolment, files, pki, token
from meshd.identity.files import NodeIdentity
from meshd.identity.revocation import RevocationList

NOW = 1_700_000_000.0
SEEDS = ("127.0.0.1:7420",)
CFG = SecurityConfig()


@pytest.fixture
def seed(tmp_path: Path) -> Iterator[tuple[Store, NodeIdentity]]:
    ident = enrolment.found("alpha", "lab.example", CFG, NOW)
    with Store.open(tmp_path / "meshd.db") as store:
        roster.upsert(store, enrolment.member_of(ident.cert, SEEDS[0], NOW))
        yield store, ident


def _csr(key: Ed25519PrivateKey, name: str) -> str:
    return pki.make_csr(key, name, "lab.example").public_bytes(Encoding.PEM).decode()


def _serve(store: Store, ident: NodeIdentity, tok: str, key: Ed25519PrivateKey, name: str):  # type: ignore[no-untyped-def]
    return enrolment.serve(store, ident, CFG, tok, _csr(key, name), None, NOW + 1)


def _token(store: Store, ident: NodeIdentity, replace: str | None = None) -> str:
    return authority.issue_token(store, ident, SEEDS, 3600, NOW, replace)[1]


def test_the_same_key_gets_the_same_answer_again(seed) -> None:  # type: ignore[no-untyped-def]
    store, ident = seed
    tok, key = _token(store, ident), pki.new_key()
    first = _serve(store, ident, tok, key, "beta")
    # The joiner died before storing the answer: it asks again with the key it kept.
    again = _serve(store, ident, tok, key, "beta")
    assert again["cert"] == first["cert"]
    assert again["mesh_secret"] == first["mesh_secret"]
    assert token_used_by(store, token.parse(tok).id) == "beta"
    # A new token with the same key works too (the first one expired, say).
    assert _serve(store, ident, _token(store, ident), key, "beta")["cert"] == first["cert"]


def test_another_key_with_a_used_token_is_refused(seed) -> None:  # type: ignore[no-untyped-def]
    store, ident = seed
    tok = _token(store, ident)
    _serve(store, ident, tok, pki.new_key(), "beta")
    with pytest.raises(TokenError, match="already used"):
        _serve(store, ident, tok, pki.new_key(), "gamma")
    with pytest.raises(EnrolmentError, match="already in this mesh"):
        _serve(store, ident, tok, pki.new_key(), "beta")
    assert roster.get(store, "gamma") is None


def test_a_token_is_redeemed_only_where_it_was_issued(seed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, ident = seed
    tok = _token(store, ident)
    # Another CA holder (same CA key, its own store) never issued it.
    other = enrolment.found("beta", "lab.example", CFG, NOW)
    holder = files.NodeIdentity(
        other.key, other.cert, ident.ca_cert, ident.mesh_secret, ident.ca_key, other.info
    )
    with (
        Store.open(tmp_path / "other.db") as other_store,
        pytest.raises(TokenError, match="not issued by this seed"),
    ):
        _serve(other_store, holder, tok, pki.new_key(), "gamma")


def _remove(store: Store, ident: NodeIdentity, name: str) -> None:
    authority.remove_node(store, ident, RevocationList(), name, "replaced", NOW)


def test_a_removed_name_is_reused_only_with_a_replace_token(seed) -> None:  # type: ignore[no-untyped-def]
    store, ident = seed
    old_key = pki.new_key()
    old = _serve(store, ident, _token(store, ident), old_key, "beta")
    with pytest.raises(IdentityError, match="still a member"):
        _token(store, ident, replace="beta")
    _remove(store, ident, "beta")
    with pytest.raises(EnrolmentError, match="--replace beta"):
        _serve(store, ident, _token(store, ident), pki.new_key(), "beta")
    # The old key can't come back as "a retry": the name is removed.
    with pytest.raises(EnrolmentError, match="--replace beta"):
        _serve(store, ident, _token(store, ident), old_key, "beta")

    replace = _token(store, ident, replace="beta")
    with pytest.raises(EnrolmentError, match="only enrol a replacement named 'beta'"):
        _serve(store, ident, replace, pki.new_key(), "delta")
    with pytest.raises(EnrolmentError, match="stays revoked"):
        _serve(store, ident, replace, old_key, "beta")
    new_key = pki.new_key()
    new = _serve(store, ident, replace, new_key, "beta")
    assert new["cert"] != old["cert"]
    member = roster.get(store, "beta")
    assert member is not None and member.removed_at is None
    assert member.node_id == pki.node_id_of(new_key.public_key())
    # The old certificate stays revoked, by serial and by key.
    revoked = authority.load_revocations(store, ident.ca_cert)
    old_info = pki.describe(pki.load_cert_pem(old["cert"].encode(), "old"))
    new_info = pki.describe(pki.load_cert_pem(new["cert"].encode(), "new"))
    assert revoked.is_revoked(old_info.serial, old_info.node_id)
    assert not revoked.is_revoked(new_info.serial, new_info.node_id)


def test_replace_needs_a_name_that_was_in_the_mesh(seed) -> None:  # type: ignore[no-untyped-def]
    store, ident = seed
    with pytest.raises(IdentityError, match="was ever in this mesh"):
        _token(store, ident, replace="nobody")


def test_roster_upsert_lets_a_new_key_take_a_removed_name(tmp_path: Path) -> None:
    ident = enrolment.found("alpha", "lab.example", CFG, NOW)
    assert ident.ca_key is not None

    def member(name: str) -> roster.Member:
        key = pki.new_key()
        cert = pki.issue(ident.ca_key, ident.ca_cert, key.public_key(), name, "node", NOW, 30)  # type: ignore[arg-type]
        return enrolment.member_of(cert, None, NOW)

    old, new = member("beta"), member("beta")
    with Store.open(tmp_path / "meshd.db") as store:
        roster.upsert(store, old)
        roster.mark_removed(store, "beta", NOW, old.node_id)
        roster.upsert(store, old)  # the same node heard again: still removed
        got = roster.get(store, "beta")
        assert got is not None and got.removed_at == NOW
        roster.upsert(store, new)  # its CA-enrolled replacement
        got = roster.get(store, "beta")
        assert got is not None and got.removed_at is None and got.node_id == new.node_id
        # A late revocation of the old node does not remove the replacement.
        roster.mark_removed(store, "beta", NOW + 5, old.node_id)
        got = roster.get(store, "beta")
        assert got is not None and got.removed_at is None
