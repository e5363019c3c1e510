"""Datagram attacks on real sockets: copies, future-stamped floods, a removed node's key.

Each node is a real ``DatagramMux`` (the daemon's mesh port) on 127.0.0.1, sealing
with the mesh key, so every datagram goes through the kernel and the real checks.
Prints one JSON line per figure (``bench``, ``figure``, ``value``, ``unit``, ``n``):

Copies and the flood are fed to the receive path the socket calls
(``DatagramMux.datagram_received``), so the kernel's queue (a plain volume attack) is
not in those figures; the removed node's datagrams go over the socket.

- ``copied_accepted``: of N datagrams A sealed for B, copies an eavesdropper sent to C
  that C accepted (goal 0); ``genuine_accepted`` the share of the originals B took.
- ``future_flood_genuine_share``: while a member floods the target with M datagrams
  stamped 29 s ahead (inside the allowed skew), the share of a genuine sender's
  datagrams the target still accepts (goal 1.0; one shared replay memory made it 0).
- ``removed_key_accepted``: after a rotation and its grace, datagrams sealed with the
  old key that the target accepted (goal 0); ``removed_key_opened``: datagrams sealed
  with the new key that the old key opened (goal 0).

    python benchmarks/bench_datagram_attacks.py [--n 2000] [--flood 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from meshd import config
from meshd.adapters.transport import Addr, Channel, DatagramMux
from meshd.core.keyring import KeyRing, MeshKey
from meshd.core.replay import ReplayGuard
from meshd.errors import EnvelopeError
from meshd.metrics import Registry

CFG = config.lan().security


def emit(figure: str, value: float, unit: str, n: int) -> None:
    line = {"bench": "datagram_attacks", "figure": figure, "value": value, "unit": unit, "n": n}
    print(json.dumps(line), flush=True)


class Node:
    def __init__(self, key: bytes, grace_s: float = CFG.key_grace_s, ahead_s: float = 0.0):
        self.keys = KeyRing(grace_s)
        self.keys.add(MeshKey(0, key), time.time())
        self.got: list[bytes] = []
        self.mux = DatagramMux(
            self.keys,
            ReplayGuard(CFG.max_clock_skew_s, CFG.replay_cache_size, CFG.replay_senders),
            Registry(),
            clock=lambda: time.time() + ahead_s,
        )
        self.addr: Addr = ("127.0.0.1", 0)
        self.clock = lambda: time.time() + ahead_s

    async def start(self) -> Node:
        self.addr = ("127.0.0.1", await self.mux.bind("127.0.0.1", 0))
        self.mux.register(Channel.MEMBERSHIP, lambda p, a: self.got.append(p))
        return self

    def wire(self, payload: bytes, to: Addr) -> bytes:
        """The bytes ``send`` would put on the wire (what an eavesdropper captures)."""
        return self.mux._sealer.seal(bytes((Channel.MEMBERSHIP,)) + payload, to, self.clock())


async def drain() -> None:
    await asyncio.sleep(0.3)


async def copies(n: int) -> None:
    """Fed to the receive path directly, like the flood below (no kernel queue losses)."""
    key = os.urandom(32)
    a, b, c = [await Node(key).start() for _ in range(3)]
    for i in range(n):
        wire = a.wire(i.to_bytes(4, "big"), b.addr)
        b.mux.datagram_received(wire, a.addr)
        c.mux.datagram_received(wire, a.addr)  # the copy an eavesdropper sent to c
    emit("copied_accepted", len(c.got), "datagrams", n)
    emit("genuine_accepted", round(len(b.got) / n, 4), "share", n)
    for x in (a, b, c):
        x.mux.close()


async def future_flood(flood: int) -> None:
    """Fed to the target's receive path directly (``datagram_received``, what the
    socket calls), so the kernel's queue, a plain volume attack, is not in the figure."""
    key = os.urandom(32)
    target, genuine = await Node(key).start(), await Node(key).start()
    flooder = await Node(key, ahead_s=CFG.max_clock_skew_s - 1.0).start()
    fake_flooder: Addr = ("127.0.0.1", 1)
    sent = 0
    per = max(1, flood // 500)
    for i in range(flood):
        target.mux.datagram_received(flooder.wire(b"f", target.addr), fake_flooder)
        if i % per == 0:
            target.mux.datagram_received(genuine.wire(b"g", target.addr), genuine.addr)
            sent += 1
    accepted = sum(1 for p in target.got if p == b"g")
    emit("future_flood_genuine_share", round(accepted / sent, 4), "share", flood)
    emit("future_flood_accepted", sum(1 for p in target.got if p == b"f"), "datagrams", flood)
    for x in (target, genuine, flooder):
        x.mux.close()


async def removed_key(n: int) -> None:
    old = os.urandom(32)
    target, removed, member = [await Node(old, grace_s=0.2).start() for _ in range(3)]
    new = MeshKey(1, os.urandom(32))
    for x in (target, member):  # the rotation reached every member but the removed one
        x.keys.add(new, time.time())
    await asyncio.sleep(0.3)  # past the grace
    for i in range(n):
        removed.mux.send(Channel.MEMBERSHIP, i.to_bytes(4, "big"), target.addr)
    opened = 0
    for _ in range(n):  # what members now send: can the old key open it?
        try:
            removed.mux._sealer.open(member.wire(b"x", removed.addr), member.addr, time.time())
            opened += 1
        except EnvelopeError:
            pass
    await drain()
    emit("removed_key_accepted", len(target.got), "datagrams", n)
    emit("removed_key_opened", opened, "datagrams", n)
    for x in (target, removed, member):
        x.mux.close()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--flood", type=int, default=50_000)
    args = p.parse_args()
    await copies(args.n)
    await future_flood(args.flood)
    await removed_key(args.n)


if __name__ == "__main__":
    asyncio.run(main())
