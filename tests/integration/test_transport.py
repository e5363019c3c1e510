"""The mesh port on real sockets: a datagram copied to another node is dropped there.

An eavesdropper needs no key to copy a sealed datagram and send it to a second node.
Each mux here is a real UDP socket on the loopback; the copy is made from the very
bytes the sender put on the wire (captured by sending to a socket of ours first).
"""

from __future__ import annotations

import asyncio
import socket
import time

from meshd.adapters.transport import Addr, Channel, DatagramMux
from meshd.core.keyring import KeyRing, MeshKey
from meshd.core.replay import ReplayGuard
from meshd.metrics import Registry

KEY = bytes(range(32))


async def _mux(host: str, received: list[bytes]) -> tuple[DatagramMux, Addr, Registry]:
    keys = KeyRing(15.0)
    keys.add(MeshKey(0, KEY), time.time())
    registry = Registry()
    mux = DatagramMux(keys, ReplayGuard(30, 1024), registry)
    port = await mux.bind(host, 0)
    mux.register(Channel.MEMBERSHIP, lambda payload, addr: received.append(payload))
    return mux, ("127.0.0.1" if host in ("0.0.0.0", "") else host, port), registry


def _dropped(registry: Registry, reason: str) -> float:
    text = registry.render()
    for line in text.splitlines():
        if line.startswith("meshd_datagrams_dropped_total{") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _copied(receiver_host: str) -> tuple[list[bytes], list[bytes], Registry, Registry]:
    at_b: list[bytes] = []
    at_c: list[bytes] = []
    sender, _, _ = await _mux("127.0.0.1", [])
    b, b_addr, b_reg = await _mux(receiver_host, at_b)
    c, c_addr, c_reg = await _mux(receiver_host, at_c)
    tap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.send(Channel.MEMBERSHIP, b"for b", b_addr)  # the genuine one
        # The copy: the same sealed bytes, captured off the wire and re-sent to c.
        wire = sender._sealer.seal(bytes((Channel.MEMBERSHIP,)) + b"for b", b_addr, time.time())
        tap.sendto(wire, c_addr)
        await asyncio.sleep(0.2)
    finally:
        tap.close()
        for m in (sender, b, c):
            m.close()
    return at_b, at_c, b_reg, c_reg


async def test_a_copied_datagram_is_dropped_at_another_node() -> None:
    at_b, at_c, _, c_reg = await _copied("127.0.0.1")
    assert at_b == [b"for b"]
    assert at_c == [] and _dropped(c_reg, "misaddressed") == 1


async def test_a_wildcard_bind_knows_its_addresses_and_still_drops_copies() -> None:
    at_b, at_c, _, c_reg = await _copied("0.0.0.0")
    assert at_b == [b"for b"]
    assert at_c == [] and _dropped(c_reg, "misaddressed") == 1
