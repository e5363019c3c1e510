"""The membership codec: exact round trips, exact sizes, and garbage → EnvelopeError only."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.membership import codec
from meshd.core.membership.messages import (
    Ack,
    Alive,
    Dead,
    Gossip,
    Left,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Record,
    Suspect,
    Update,
    UserMsg,
)
from meshd.core.membership.state import MemberState
from meshd.errors import EnvelopeError

U32 = st.integers(0, 2**32 - 1)
NAME = st.text(min_size=1, max_size=20)
TEXT = st.text(max_size=20)
ADDR = st.tuples(TEXT, st.integers(0, 65535))
UPDATE = st.one_of(
    st.builds(Alive, NAME, TEXT, ADDR, U32),
    st.builds(Suspect, NAME, U32, NAME),
    st.builds(Dead, NAME, U32, NAME),
    st.builds(Left, NAME, U32),
    st.builds(UserMsg, NAME, st.integers(0, 2**64 - 1), TEXT, st.binary(max_size=64)),
)
UPDATES = st.lists(UPDATE, max_size=8).map(tuple)
MESSAGE = st.one_of(
    st.builds(Ping, U32, U32, NAME, UPDATES),
    st.builds(Ack, U32, U32, UPDATES),
    st.builds(Nack, U32, U32, UPDATES),
    st.builds(PingReq, U32, U32, NAME, ADDR, UPDATES),
    st.builds(Gossip, U32, UPDATES),
    st.builds(
        PushPull,
        st.lists(
            st.builds(Record, NAME, TEXT, ADDR, U32, st.sampled_from(list(MemberState))),
            max_size=8,
        ).map(tuple),
        st.booleans(),
        st.booleans(),
    ),
)

EXAMPLES: list[Message] = [
    Ping(1, 0, "beta"),
    Ping(2**32 - 1, 7, "béta", (Alive("a", "00ff", ("10.0.0.1", 7420), 3),)),
    Ack(5, 1, (Suspect("a", 2, "b"), Dead("c", 9, "d"), Left("e", 4))),
    Nack(6, 2),
    PingReq(7, 3, "gamma", ("fe80::1", 65535), (UserMsg("o", 2**64 - 1, "fence", b"\x00\xff"),)),
    Gossip(0, ()),
    PushPull((Record("a", "id", ("h", 1), 0, MemberState.LEFT),), join=True),
    PushPull((), reply=True),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_examples_round_trip_with_exact_size(msg: Message) -> None:
    data = codec.encode(msg)
    assert codec.decode(data) == msg
    assert codec.size(msg) == len(data)


@given(MESSAGE)
@settings(max_examples=300)
def test_any_message_round_trips_with_exact_size(msg: Message) -> None:
    data = codec.encode(msg)
    assert codec.decode(data) == msg
    assert codec.size(msg) == len(data)


def test_sizes_are_additive() -> None:
    updates: tuple[Update, ...] = (Alive("a", "id", ("10.0.0.1", 7420), 3), Left("b", 1))
    ping = Ping(1, 2, "target", updates)
    assert codec.size(ping) == codec.ping_base("target") + sum(map(codec.update_size, updates))
    req = PingReq(1, 2, "t", ("h", 1), updates)
    assert codec.size(req) == codec.pingreq_base("t", ("h", 1)) + sum(
        map(codec.update_size, updates)
    )
    assert codec.size(Gossip(0, updates)) == codec.GOSSIP_BASE + sum(
        map(codec.update_size, updates)
    )
    assert codec.size(Ack(0, 0)) == codec.ACK_BASE
    assert codec.update_size(Left("x", 0)) == codec.MIN_UPDATE_SIZE


@given(st.binary(max_size=300))
@settings(max_examples=1000)
def test_garbage_raises_only_envelope_error(data: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        codec.decode(data)


@given(MESSAGE, st.data())
@settings(max_examples=500)
def test_mangled_messages_raise_only_envelope_error(msg: Message, data: st.DataObject) -> None:
    raw = bytearray(codec.encode(msg))
    how = data.draw(st.sampled_from(["truncate", "flip", "append"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))]
    elif how == "flip" and raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    else:
        raw += data.draw(st.binary(min_size=1, max_size=8))
    with contextlib.suppress(EnvelopeError):
        codec.decode(bytes(raw))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated"),
        (b"\x02\x01", "version"),
        (b"\x01\x63", "unknown type"),
        (b"\x01\x02\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00", "trailing"),
        (b"\x01\x05\x00\x00\x00\x00\x01\x09", "unknown tag"),
        (b"\x01\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00", "empty name"),
        (b"\x01\x01\x00\x00\x00\x01\x00\x00\x00\x00\x01\xff\x00", "UTF-8"),
        (b"\x01\x06\x04\x00\x00", "flags"),
        (b"\x01\x06\x00\x00\x01\x01a\x00\x00\x00\x01\x00\x00\x00\x00\x09", "unknown state"),
    ],
)
def test_malformed_examples_say_why(data: bytes, match: str) -> None:
    with pytest.raises(EnvelopeError, match=match):
        codec.decode(data)


def test_unrepresentable_messages_are_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="255 bytes"):
        codec.encode(Ping(1, 0, "x" * 256))
    with pytest.raises(ValueError, match="can't encode"):
        codec.encode(Ack(2**32, 0))
    with pytest.raises(ValueError, match="at most 255"):
        codec.encode(Gossip(0, tuple(Left("a", 0) for _ in range(256))))
