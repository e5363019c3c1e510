"""Join tokens: the joiner can read them, only the seed's CA can make them, and every
kind of bad token is refused with its own sentence."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.errors import TokenError
from meshd.identity import pki, token

NOW = 1_800_000_000.0
CA_KEY, CA = pki.create_ca("lab.example", NOW - 10, 3650)
OTHER_KEY, OTHER = pki.create_ca("lab.example", NOW - 10, 3650)
SEEDS = ("10.0.0.1:7420",)


def make(ttl: float = 3600.0) -> tuple[token.JoinToken, str]:
    return token.create(CA_KEY, CA, SEEDS, NOW, ttl, "alpha")


def test_round_trip() -> None:
    tok, text = make()
    assert text.startswith("meshd1.")
    assert token.parse(text) == tok
    assert token.verify(text, CA, NOW + 1) == tok
    assert tok.ca_fingerprint == pki.fingerprint(CA)
    assert tok.seeds == SEEDS and tok.domain == "lab.example"


def test_ids_are_unique() -> None:
    assert len({make()[0].id for _ in range(50)}) == 50


def test_expired() -> None:
    _, text = make(ttl=60)
    with pytest.raises(TokenError, match="expired"):
        token.verify(text, CA, NOW + 60)


def test_other_mesh() -> None:
    _, text = make()
    with pytest.raises(TokenError, match="another mesh"):
        token.verify(text, OTHER, NOW)


def test_forged_by_another_ca_claiming_this_mesh() -> None:
    """Signed by another CA but carrying *our* fingerprint: the signature check catches it."""
    _, text = make()
    head, payload, _sig = text.split(".")
    forged_sig = OTHER_KEY.sign(
        b"meshd-join-token-v1\x00" + base64.urlsafe_b64decode(payload + "==")
    )
    forged = f"{head}.{payload}.{base64.urlsafe_b64encode(forged_sig).rstrip(b'=').decode()}"
    with pytest.raises(TokenError, match="signature is invalid"):
        token.verify(forged, CA, NOW)


def test_altered_payload() -> None:
    _, text = make()
    head, payload, sig = text.split(".")
    raw = json.loads(base64.urlsafe_b64decode(payload + "=="))
    raw["exp"] += 10**6
    new = base64.urlsafe_b64encode(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(TokenError, match="signature is invalid"):
        token.verify(f"{head}.{new.rstrip(b'=').decode()}.{sig}", CA, NOW)


@pytest.mark.parametrize(
    "bad",
    ["", "meshd1", "meshd1..", "meshd2.a.b", "meshd1.!!!.???", "meshd1.e30.AAAA", "x.y.z.w"],
)
def test_malformed(bad: str) -> None:
    with pytest.raises(TokenError, match=r"malformed|version"):
        token.parse(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_garbage_only_ever_raises_token_error(text: str) -> None:
    with pytest.raises(TokenError):
        token.verify(text, CA, NOW)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_single_character_change_is_refused(data: st.DataObject) -> None:
    _, text = make()
    i = data.draw(st.integers(0, len(text) - 1))
    c = data.draw(
        st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    )
    mutated = text[:i] + c + text[i + 1 :]
    if mutated == text:
        return
    try:
        token.verify(mutated, CA, NOW)
    except TokenError:
        return
    # base64 of the last character can carry unused bits: same bytes, same token.
    assert token.parse(mutated) == token.parse(text)


def test_create_refuses_nonsense() -> None:
    with pytest.raises(TokenError, match="positive"):
        token.create(CA_KEY, CA, SEEDS, NOW, 0, "alpha")
    with pytest.raises(TokenError, match="seed"):
        token.create(CA_KEY, CA, (), NOW, 60, "alpha")
