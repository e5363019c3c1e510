"""Auction datagrams of one event-loop turn, bundled per destination and sent together.

Every datagram costs a signature, a seal, a ``sendto`` and, on the other side, a
wake-up, an unseal and a signature check — far more than the message in it. So the
placement shell does not send as it goes: what the steps of one loop turn address to
one member leaves as one bundle (``codec.bundle``, at most ``MAX_DATAGRAM`` bytes,
more datagrams if it must), and the confirmations of that turn, which go to every
member, as one bundle for all of them (signed once), except that a member with direct
messages of its own gets the confirmations in its bundle: one datagram, not two. The
turn ends before any of it is sent, so each step's records are persisted before its
messages leave, as before, and nothing waits on a timer: a quiet node sends at once,
a busy one sends less often.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator

from meshd.core.auction import codec

Sign = Callable[[bytes], bytes]
SendTo = Callable[[Iterable[str], bytes], None]


def frames(bodies: list[bytes], budget: int = codec.MAX_DATAGRAM) -> Iterator[bytes]:
    """Pack encoded messages, in order, into as few frames of ``budget`` bytes as fit."""
    batch: list[bytes] = []
    size = codec.BUNDLE_OVERHEAD
    for body in bodies:
        cost = len(body) + 1
        if batch and (size + cost > budget or len(batch) == codec.MAX_BUNDLE):
            yield codec.bundle(batch)
            batch, size = [], codec.BUNDLE_OVERHEAD
        batch.append(body)
        size += cost
    if batch:
        yield codec.bundle(batch)


class Outbox:
    def __init__(self, sign: Sign, send: SendTo, members: Callable[[], Iterable[str]]) -> None:
        self._sign, self._send, self._members = sign, send, members
        self._direct: dict[str, list[bytes]] = {}  # member -> encoded messages
        self._everyone: list[bytes] = []
        self._due = False

    def to(self, member: str, body: bytes) -> None:
        self._direct.setdefault(member, []).append(body)
        self._flush_soon()

    def to_everyone(self, body: bytes) -> None:
        self._everyone.append(body)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self._due:
            self._due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._due = False
        direct, self._direct = self._direct, {}
        everyone, self._everyone = self._everyone, []
        signed: dict[bytes, bytes] = {}  # one signature per distinct frame

        def sealed(frame: bytes) -> bytes:
            blob = signed.get(frame)
            if blob is None:
                blob = signed[frame] = self._sign(frame)
            return blob

        if everyone:
            members = [x for x in self._members() if x not in direct]
            for frame in frames(everyone):
                self._send(members, sealed(frame))
        for member, bodies in direct.items():
            for frame in frames([*everyone, *bodies] if everyone else bodies):
                self._send([member], sealed(frame))
