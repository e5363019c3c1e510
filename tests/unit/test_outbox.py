"""The placement shell's outbox: one loop turn's datagrams, bundled per destination."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from hypothesis import given
from hypothesis import strategies as st

from meshd.core.auction import codec
from meshd.core.auction.messages import Accept, Release
from meshd.shell.outbox import Outbox, frames


def body(i: int) -> bytes:
    return codec.encode(Release(f"n1-{i:012x}"))


@given(st.lists(st.integers(0, 2**40), max_size=200), st.integers(200, 1500))
def test_frames_keep_order_and_budget(ids: list[int], budget: int) -> None:
    bodies = [body(i) for i in ids]
    out = list(frames(bodies, budget))
    assert [m for f in out for m in codec.decode_all(f)] == [Release(f"n1-{i:012x}") for i in ids]
    assert all(len(f) <= budget for f in out)
    assert all(len(codec.decode_all(f)) <= codec.MAX_BUNDLE for f in out)


class Wire:
    def __init__(self) -> None:
        self.signed: list[bytes] = []
        self.sent: list[tuple[str, bytes]] = []

    def sign(self, frame: bytes) -> bytes:
        self.signed.append(frame)
        return b"sig:" + frame

    def send(self, names: Iterable[str], blob: bytes) -> None:
        self.sent += [(n, blob) for n in names]


async def test_one_turn_leaves_as_one_datagram_per_member() -> None:
    wire = Wire()
    box = Outbox(wire.sign, wire.send, lambda: ["n2", "n3", "n4", "n5"])
    box.to("n2", body(1))
    box.to("n2", body(2))
    box.to("n3", body(1))
    everyone = Accept("n1-000000000001", "w", 1)
    box.to_everyone(codec.encode(everyone))
    assert wire.sent == []  # nothing leaves before the turn ends
    await asyncio.sleep(0)
    assert sorted(n for n, _ in wire.sent) == ["n2", "n3", "n4", "n5"]  # one datagram each
    assert len(wire.signed) == 3  # n2's, n3's, and everyone's once for n4 and n5
    got = {n: codec.decode_all(b.removeprefix(b"sig:")) for n, b in wire.sent}
    # A member with messages of its own gets everyone's in the same bundle, first.
    assert got["n2"] == [everyone, Release("n1-000000000001"), Release("n1-000000000002")]
    assert got["n3"] == [everyone, Release("n1-000000000001")]
    assert got["n4"] == [everyone]
    box.to("n4", body(3))
    await asyncio.sleep(0)
    assert wire.sent[-1] == ("n4", b"sig:" + body(3))  # a lone message goes as itself
