"""The mesh's sealing keys, by epoch: seal with the newest, open the recent ones.

Theory of operation
-------------------
DESIGN.md §3: removing a node rotates the sealing key. A mesh key is 32 random bytes
and an epoch number (0: the secret the mesh was founded with); a CA holder makes the
next one when it removes a node and it reaches each current member over that member's
own authenticated channel (``meshd.shell.key_sync``), never over a sealed datagram the
removed node could read. Sealed datagrams name their key by a 4-byte id (a hash of the
key), so a receiver knows which key opens one, and that it lacks a newer key it must
fetch, without trying them all.

Order: keys sort by (epoch, id); the newest seals. Two CA holders removing nodes at the
same moment may both make epoch N+1: every node then agrees on the larger id, and the
other stays usable as an older key. A key stops opening datagrams ``grace_s`` after a
newer key was installed here (members that have not heard of the newer key yet still
get through meanwhile, and fetch it on the first datagram they can't open). A removed
node holds only keys that retire within ``grace_s`` of the rotation reaching us.

Pure: ``now`` is passed in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import nacl.secret

from meshd.errors import EnvelopeError, UnknownKeyError

KEY_BYTES = nacl.secret.SecretBox.KEY_SIZE
KEY_ID_BYTES = 4
KEEP = 8  # keys remembered (older ones can open nothing after their grace anyway)


def key_id_of(secret: bytes) -> bytes:
    return hashlib.blake2b(secret, digest_size=KEY_ID_BYTES, person=b"meshd-key-id").digest()


@dataclass(frozen=True)
class MeshKey:
    epoch: int
    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise EnvelopeError(f"a mesh key must be {KEY_BYTES} bytes")
        if self.epoch < 0:
            raise EnvelopeError("a mesh key's epoch can't be negative")

    @property
    def key_id(self) -> bytes:
        return key_id_of(self.secret)

    @property
    def order(self) -> tuple[int, bytes]:
        return (self.epoch, self.key_id)


class _Entry:
    __slots__ = ("box", "key", "superseded_at")

    def __init__(self, key: MeshKey) -> None:
        self.key = key
        self.box = nacl.secret.SecretBox(key.secret)
        self.superseded_at: float | None = None


class KeyRing:
    def __init__(self, grace_s: float) -> None:
        if grace_s < 0:
            raise ValueError("the key grace period can't be negative")
        self._grace = grace_s
        self._entries: dict[bytes, _Entry] = {}
        self._newest: _Entry | None = None

    def add(self, key: MeshKey, now: float) -> bool:
        """Install ``key``; True if it was new. A newer key starts the older ones' grace."""
        if key.key_id in self._entries:
            return False
        entry = _Entry(key)
        self._entries[key.key_id] = entry
        newest = self._newest
        if newest is None or key.order > newest.key.order:
            self._newest = entry
            for other in self._entries.values():
                if other is not entry and other.superseded_at is None:
                    other.superseded_at = now
        else:
            entry.superseded_at = now
        if len(self._entries) > KEEP:
            oldest = min(self._entries.values(), key=lambda e: e.key.order)
            del self._entries[oldest.key.key_id]
        return True

    @property
    def current(self) -> MeshKey:
        if self._newest is None:
            raise EnvelopeError("the key ring is empty")
        return self._newest.key

    def current_box(self) -> tuple[bytes, nacl.secret.SecretBox]:
        if self._newest is None:
            raise EnvelopeError("the key ring is empty")
        return self._newest.key.key_id, self._newest.box

    def box_for(self, key_id: bytes, now: float) -> nacl.secret.SecretBox:
        """The box that opens datagrams sealed with ``key_id``, or raise."""
        entry = self._entries.get(key_id)
        if entry is None:
            raise UnknownKeyError(key_id)
        if entry.superseded_at is not None and now > entry.superseded_at + self._grace:
            raise EnvelopeError(
                f"sealed with retired mesh key {key_id.hex()} (epoch {entry.key.epoch}); "
                "the sender has not fetched the mesh's current key"
            )
        return entry.box

    def knows(self, key_id: bytes) -> bool:
        return key_id in self._entries

    def keys(self) -> list[MeshKey]:
        return sorted((e.key for e in self._entries.values()), key=lambda k: k.order)
