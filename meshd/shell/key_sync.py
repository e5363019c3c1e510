"""Mesh key epochs: rotate on removal, deliver over mTLS, fetch what we missed.

DESIGN.md §3: removing a node rotates the mesh's sealing key, so the removed node's
copy of the old key opens nothing sent after the rotation reaches the mesh.

* **Rotate.** A CA holder that removes a node (``meshd node remove``, or finding at
  start-up a removal newer than the newest key, say one made with the daemon down)
  makes the next key (:mod:`meshd.identity.mesh_key`, CA-signed), stores it durably,
  seals with it from then on, and pushes it to every member it knows an address of,
  each over that member's own mTLS channel (``POST /v1/mesh/keys``).
* **Deliver.** What is pushed or fetched is one body: the revocations this node knows,
  then the key records. The receiver applies the revocations first, so a member that
  learns a key also learns who may no longer have it, and the mTLS API (which checks
  every caller against the revocations) never hands a key to a removed node.
* **Fetch.** A member that was away meets datagrams sealed with a key it lacks
  (``transport.DatagramMux.on_unknown_key``) and fetches the keys from that sender
  (``GET /v1/mesh/keys``, nodes only), at most once a second per address; a starting
  node fetches from its seeds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable, Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.adapters.store import mesh_keys as stored_keys
from meshd.adapters.store import revocations as stored_revocations
from meshd.adapters.transport import Addr
from meshd.core.keyring import KEY_BYTES, KeyRing, MeshKey
from meshd.errors import IdentityError
from meshd.identity import mesh_key, revocation
from meshd.shell.context import NodeContext

logger = logging.getLogger(__name__)
KEYS_PATH = "/v1/mesh/keys"
_LEN = struct.Struct(">I")
FETCH_GAP_S = 1.0  # per address
FETCH_GAP_ALL_S = 0.2  # in total: datagrams from spoofed addresses can't make us dial out
CACHE_MAX = 4096


def _pack(revocations: list[bytes], keys: list[bytes]) -> bytes:
    revs = revocation.bundle(revocations)
    return _LEN.pack(len(revs)) + revs + mesh_key.bundle(keys)


def _unpack(body: bytes) -> tuple[list[bytes], list[bytes]]:
    if len(body) < _LEN.size:
        raise IdentityError("mesh key bundle is truncated")
    (n,) = _LEN.unpack_from(body)
    if _LEN.size + n > len(body):
        raise IdentityError("mesh key bundle has a bad length")
    revs = body[_LEN.size : _LEN.size + n]
    return revocation.unbundle(revs), mesh_key.unbundle(body[_LEN.size + n :])


class KeySync:
    def __init__(
        self,
        ctx: NodeContext,
        ring: KeyRing,
        post: Callable[[Addr, str, bytes], Awaitable[None]],
        get: Callable[[Addr, str], Awaitable[bytes | None]],
        member_addrs: Callable[[], Iterable[Addr]],
        apply_revocation: Callable[[bytes, str], None],
        spawn: Callable[[Awaitable[None]], object],
        ca_key: Callable[[], Ed25519PrivateKey | None],
    ) -> None:
        self.ctx = ctx
        # The CA key as held now: a node promoted (or restored) while running holds it
        # from then on (``meshd ca promote``, ``meshd ca restore``).
        self._ca_key = ca_key
        self.ring = ring
        self._post = post
        self._get = get
        self._member_addrs = member_addrs
        self._apply_revocation = apply_revocation
        self._spawn = spawn
        self._fetched: dict[Addr, float] = {}
        self._last_fetch = -1e9
        self._made_at = float("-inf")  # when the newest key was made (epoch 0: never)

    def load(self) -> None:
        """Epoch 0 (the enrolment secret) and every stored key record."""
        now = self.ctx.clock()
        self.ring.add(MeshKey(0, self.ctx.ident.mesh_secret), now)
        for blob, installed_at in stored_keys.records(self.ctx.store):
            try:
                rec = mesh_key.verify(blob, self.ctx.ident.ca_cert)
            except IdentityError as exc:
                logger.error("ignoring a stored mesh key that does not verify: %s", exc)
                continue
            self.ring.add(rec.key, installed_at)
            self._made_at = max(self._made_at, rec.made_at)

    # -- rotating (CA holders) ------------------------------------------------------------

    def rotation_owed(self) -> bool:
        """A removal is newer than the newest key, and this node can make the next one."""
        if self._ca_key() is None:
            return False
        newest_removal = max((r.revoked_at for r in self.ctx.revocations), default=None)
        return newest_removal is not None and newest_removal >= self._made_at

    def rotate(self, reason: str) -> MeshKey:
        """Make, store and install the next key; push it to every member (CA holder)."""
        ca_key = self._ca_key()
        if ca_key is None:
            raise IdentityError("only a CA holder can rotate the mesh key")
        now = self.ctx.clock()
        key = MeshKey(self.ring.current.epoch + 1, os.urandom(KEY_BYTES))
        rec = mesh_key.KeyRecord(key, now, self.ctx.ident.name, reason)
        blob = mesh_key.sign(ca_key, rec)
        with self.ctx.store.transaction(durable=True):
            stored_keys.add(self.ctx.store, rec, blob, now)
        self.ring.add(key, now)
        self._made_at = max(self._made_at, now)
        logger.info("mesh key rotated epoch=%d reason=%r", key.epoch, reason)
        self.ctx.store.append_event(now, "mesh.key_rotated", str(key.epoch), {"reason": reason})
        body = self.bundle()
        for addr in self._member_addrs():
            self._spawn(self._post(addr, KEYS_PATH, body))
        return key

    # -- delivering and fetching ----------------------------------------------------------

    def bundle(self) -> bytes:
        """What a member may have: the revocations, then every stored key record."""
        keys = [blob for blob, _ in stored_keys.records(self.ctx.store)]
        return _pack(stored_revocations.records(self.ctx.store), keys)

    def receive_bundle(self, body: bytes, origin: str) -> int:
        """Apply a pushed or fetched bundle; the number of keys that were new here."""
        revs, keys = _unpack(body)
        for record in revs:
            self._apply_revocation(record, origin)
        new = 0
        now = self.ctx.clock()
        for blob in keys:
            try:
                rec = mesh_key.verify(blob, self.ctx.ident.ca_cert)
            except IdentityError as exc:
                logger.warning("dropped a mesh key from %s: %s", origin, exc)
                continue
            if self.ring.knows(rec.key.key_id):
                continue
            with self.ctx.store.transaction(durable=True):
                stored_keys.add(self.ctx.store, rec, blob, now)
            self.ring.add(rec.key, now)
            self._made_at = max(self._made_at, rec.made_at)
            new += 1
            logger.info(
                "mesh key installed epoch=%d from=%s made_by=%s", rec.key.epoch, origin, rec.made_by
            )
        return new

    def fetch_soon(self, addr: Addr, _key_id: bytes = b"") -> None:
        """Fetch the keys from ``addr`` (a datagram from it named a key we lack)."""
        now = time.monotonic()
        if now - self._fetched.get(addr, -1e9) < FETCH_GAP_S or now - self._last_fetch < (
            FETCH_GAP_ALL_S
        ):
            return
        if len(self._fetched) > CACHE_MAX:
            self._fetched.clear()
        self._fetched[addr] = self._last_fetch = now
        self._spawn(self._fetch(addr))

    async def _fetch(self, addr: Addr) -> None:
        body = await self._get(addr, KEYS_PATH)
        if body is None:
            return
        try:
            self.receive_bundle(body, f"{addr[0]}:{addr[1]}")
        except IdentityError as exc:
            logger.warning("mesh keys from %s:%s refused: %s", *addr, exc)

    async def fetch_now(self, addr: Addr) -> None:
        """Fetch from ``addr`` and wait (start-up, from the seeds)."""
        self._fetched[addr] = time.monotonic()
        await self._fetch(addr)


async def fetch_from(sync: KeySync, addrs: Iterable[Addr], timeout_s: float) -> None:
    """Fetch from several addresses at once, bounded by ``timeout_s`` (start-up)."""
    tasks = [asyncio.ensure_future(sync.fetch_now(a)) for a in addrs]
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s)
