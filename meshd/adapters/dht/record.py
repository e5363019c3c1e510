"""DHT records: signed, versioned, expiring, one per author under a key.

Theory of operation
-------------------
The Kademlia paper (Maymounkov and Mazières, 2002) stores one opaque value per key and
keeps it alive by having every holder republish it hourly. meshd departs on purpose:

* A key holds a *set* of records, one per author (like IPFS provider records), so many
  nodes can publish under one service name (DESIGN.md §4). Within an author the highest
  ``version`` wins; a tie keeps the record already held, so a replay changes nothing.
* Every record is signed by its author's Ed25519 node key. The signature covers a
  domain-separation prefix and the canonical encoding of every other field, including
  the ``deleted`` flag, so a tombstone can't be forged from a live record or the other
  way round. The certificate is *not* carried — records must stay small — so a reader
  checks the signature against the key an :class:`AuthorDirectory` (the node's roster
  minus its revocation list) gives for ``author_id``.
* A record carries its absolute expiry. Only its author republishes it (with a new
  version) before it runs out, so a dead or removed author's records vanish by
  themselves.

Wire form (big-endian), also what the signature covers after the prefix::

    format (1) | flags (1) | version (8) | expires_at (f64) | author_id (20)
      | key_len (2) | key (UTF-8) | author_len (1) | author (UTF-8)
      | value_len (4) | value | signature (64)

Everything here is pure: ``now`` is passed in; nothing does IO.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meshd.errors import RecordError
from meshd.identity import pki

FORMAT = 1
PREFIX = b"meshd-dht-record-v1\x00"
SIG_LEN = 64
ID_LEN = 20
MAX_KEY_BYTES = 512
_FLAG_DELETED = 0x01
_HEAD = struct.Struct(">BBQd20sH")
_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
# Largest encoding of a record with an empty value: what a value's size limit must add.
OVERHEAD = _HEAD.size + MAX_KEY_BYTES + _U8.size + 63 + _U32.size + SIG_LEN


@dataclass(frozen=True)
class Record:
    key: str
    author: str
    author_id: str  # 40 hex characters: the author's node id
    version: int
    expires_at: float  # seconds since the epoch
    value: bytes
    signature: bytes
    deleted: bool = False  # a tombstone: replaces the author's record, value empty

    @property
    def digest(self) -> bytes:
        return key_digest(self.key)


class AuthorDirectory(Protocol):
    """Who may write: the node shell backs this with the roster and the revocation list.

    ``key_for`` returns None for an unknown or revoked author. A directory may also
    offer ``name_for(author_id) -> str | None``; when it does, a record's author name
    must match it.
    """

    def key_for(self, author_id: str) -> Ed25519PublicKey | None: ...


def key_digest(key: str) -> bytes:
    """The 160-bit DHT id of ``key`` (SHA-1, as in kademlia's ``digest``)."""
    return hashlib.sha1(key.encode(), usedforsecurity=False).digest()


def _body(
    key: str,
    author: str,
    author_id: str,
    version: int,
    expires_at: float,
    value: bytes,
    deleted: bool,
) -> bytes:
    try:
        key_b = key.encode()
        author_b = author.encode()
    except UnicodeEncodeError as exc:
        raise RecordError("malformed", "key and author must be valid Unicode") from exc
    if not 0 < len(key_b) <= MAX_KEY_BYTES:
        raise RecordError("malformed", f"a DHT key must be 1..{MAX_KEY_BYTES} bytes")
    if not pki.NAME_RE.match(author):
        raise RecordError("malformed", f"invalid author name {author!r}")
    try:
        raw_id = bytes.fromhex(author_id)
    except ValueError as exc:
        raise RecordError("malformed", "author_id is not hex") from exc
    if len(raw_id) != ID_LEN or author_id != raw_id.hex():
        raise RecordError("malformed", "author_id must be 40 lowercase hex characters")
    if not 0 <= version < 2**64:
        raise RecordError("malformed", "version out of range")
    if not math.isfinite(expires_at):
        raise RecordError("malformed", "expires_at must be finite")
    if deleted and value:
        raise RecordError("malformed", "a tombstone carries no value")
    flags = _FLAG_DELETED if deleted else 0
    return b"".join(
        (
            _HEAD.pack(FORMAT, flags, version, expires_at, raw_id, len(key_b)),
            key_b,
            _U8.pack(len(author_b)),
            author_b,
            _U32.pack(len(value)),
            value,
        )
    )


def _body_of(record: Record) -> bytes:
    return _body(
        record.key,
        record.author,
        record.author_id,
        record.version,
        record.expires_at,
        record.value,
        record.deleted,
    )


def sign(
    signing_key: Ed25519PrivateKey,
    *,
    key: str,
    author: str,
    author_id: str,
    version: int,
    expires_at: float,
    value: bytes,
    deleted: bool = False,
) -> Record:
    body = _body(key, author, author_id, version, expires_at, value, deleted)
    signature = signing_key.sign(PREFIX + body)
    return Record(key, author, author_id, version, expires_at, value, signature, deleted)


def encode(record: Record) -> bytes:
    if len(record.signature) != SIG_LEN:
        raise RecordError("malformed", "record signature must be 64 bytes")
    return _body_of(record) + record.signature


def decode(data: bytes) -> Record:
    """Parse the wire form; anything else raises RecordError (never another exception)."""
    if not isinstance(data, bytes | bytearray):
        raise RecordError("malformed", "a record must be bytes")
    data = bytes(data)
    try:
        fmt, flags, version, expires_at, raw_id, key_len = _HEAD.unpack_from(data, 0)
        pos = _HEAD.size
        key = data[pos : pos + key_len].decode()
        pos += key_len
        (author_len,) = _U8.unpack_from(data, pos)
        pos += _U8.size
        author = data[pos : pos + author_len].decode()
        pos += author_len
        (value_len,) = _U32.unpack_from(data, pos)
        pos += _U32.size
        value = data[pos : pos + value_len]
        pos += value_len
    except (struct.error, UnicodeDecodeError) as exc:
        raise RecordError("malformed", "malformed DHT record") from exc
    if fmt != FORMAT:
        raise RecordError("malformed", f"unknown DHT record format {fmt}")
    if flags & ~_FLAG_DELETED:
        raise RecordError("malformed", "unknown DHT record flags")
    if len(value) != value_len or len(data) != pos + SIG_LEN:
        raise RecordError("malformed", "DHT record has a bad length")
    record = Record(
        key=key,
        author=author,
        author_id=raw_id.hex(),
        version=version,
        expires_at=expires_at,
        value=value,
        signature=data[pos:],
        deleted=bool(flags & _FLAG_DELETED),
    )
    # Re-encoding checks every field's syntax and that the encoding was canonical.
    if _body_of(record) != data[:pos]:
        raise RecordError("malformed", "DHT record is not in canonical form")
    return record


def verify(record: Record, directory: AuthorDirectory, now: float, max_value_bytes: int) -> None:
    """Accept ``record`` or raise RecordError saying why (reason: a metric label)."""
    if len(record.value) > max_value_bytes:
        raise RecordError("too_large", f"value of {len(record.value)} bytes is over the limit")
    if record.expires_at <= now:
        raise RecordError("expired", f"record {record.key!r} by {record.author!r} has expired")
    public = directory.key_for(record.author_id)
    if public is None:
        raise RecordError("unknown_author", f"author {record.author!r} is unknown or removed")
    if pki.node_id_of(public) != record.author_id:
        raise RecordError("author_mismatch", "author_id does not match the author's key")
    name_for = getattr(directory, "name_for", None)
    if name_for is not None and name_for(record.author_id) != record.author:
        raise RecordError("author_mismatch", f"author name {record.author!r} does not match")
    try:
        public.verify(record.signature, PREFIX + _body_of(record))
    except InvalidSignature as exc:
        raise RecordError("signature", f"record signature by {record.author!r} is bad") from exc


def supersedes(new: Record, old: Record | None) -> bool:
    """Does ``new`` replace ``old`` (same key and author)? Ties keep the old one."""
    return old is None or new.version > old.version


def newest_per_author(records: Iterable[Record]) -> dict[str, Record]:
    """The multi-writer merge: one record per author, the highest version."""
    out: dict[str, Record] = {}
    for record in records:
        if supersedes(record, out.get(record.author_id)):
            out[record.author_id] = record
    return out


def newest_first(records: Iterable[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (-r.version, r.author_id))


class StaticDirectory:
    """An in-memory :class:`AuthorDirectory` (tests, benchmarks, a node's roster cache)."""

    def __init__(self) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._names: dict[str, str] = {}
        self._revoked: set[str] = set()

    def add(self, name: str, public: Ed25519PublicKey) -> str:
        author_id = pki.node_id_of(public)
        self._keys[author_id] = public
        self._names[author_id] = name
        return author_id

    def revoke(self, author_id: str) -> None:
        self._revoked.add(author_id)

    def key_for(self, author_id: str) -> Ed25519PublicKey | None:
        if author_id in self._revoked:
            return None
        return self._keys.get(author_id)

    def name_for(self, author_id: str) -> str | None:
        if author_id in self._revoked:
            return None
        return self._names.get(author_id)
