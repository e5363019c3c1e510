"""Bounded record storage for one DHT node, and the author's own records.

Theory of operation
-------------------
kademlia's ``ForgetfulStorage`` keeps one value per key, unbounded, and hands every
value older than an hour back to the server to republish — so a value outlives its
author forever. :class:`RecordStore` departs from that (and from the Kademlia paper's
§2.5 republishing by every holder):

* **Multi-writer**: under each key digest, one record per author; a higher version
  replaces, a tie or lower version is kept out (``record.supersedes``).
* **Bounded**: at most ``max_records`` records in all and ``max_per_author`` per
  author. When full, a record for a new (key, author) pair is *refused* and counted;
  nobody's record is evicted to make room, so a flooding member can't push others'
  records out. Replacing an author's record never needs room.
* **Expiry**: each record carries its absolute expiry. A heap ordered by expiry lets
  :meth:`purge` drop what ran out in O(log n) per record; reads purge the key they read.
* **Republishing**: only authors republish, and only their own records. The store keeps
  the author's :class:`OwnRecord` entries (with their TTL and when they were last
  published) and the highest version used per key; :meth:`own_due` is the adapted
  ``iter_older_than``: own records past ``fraction`` of their TTL.

State (own records, versions, routing contacts) is saved as JSON by :func:`dump_state`
and read back by :func:`parse_state`; never pickle. Pure: ``now`` is passed in.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Any

from meshd.adapters.dht.record import Record, decode, encode, newest_first
from meshd.errors import DhtError, RecordError

STATE_FORMAT = 1


class Outcome(Enum):
    STORED = "stored"  # a new (key, author) pair
    REPLACED = "replaced"  # a newer version of an author's record
    KEPT = "kept"  # we already hold this version or a newer one
    EXPIRED = "expired"
    FULL = "full"  # refused: the node holds max_records
    AUTHOR_FULL = "author_full"  # refused: the author holds max_per_author here

    @property
    def accepted(self) -> bool:
        return self in (Outcome.STORED, Outcome.REPLACED, Outcome.KEPT)


@dataclass(frozen=True)
class OwnRecord:
    """A record this node authored, with what republishing needs to know."""

    digest: bytes
    record: Record
    ttl_s: float
    published_at: float

    def due_at(self, fraction: float) -> float:
        return self.published_at + fraction * self.ttl_s


class RecordStore:
    def __init__(self, max_records: int, max_per_author: int) -> None:
        self.max_records = max_records
        self.max_per_author = max_per_author
        self._keys: dict[bytes, dict[str, Record]] = {}
        self._per_author: Counter[str] = Counter()
        self._count = 0
        self._expiry: list[tuple[float, bytes, str, int]] = []
        self.refused: Counter[str] = Counter()
        self._own: dict[str, OwnRecord] = {}
        self._versions: dict[str, int] = {}

    def __len__(self) -> int:
        return self._count

    # -- records held for the DHT ------------------------------------------------------

    def put(self, digest: bytes, record: Record, now: float) -> Outcome:
        """Store a record that was already verified; never evicts another record."""
        if record.expires_at <= now:
            return Outcome.EXPIRED
        held = self._keys.get(digest, {})
        old = held.get(record.author_id)
        if old is not None:
            if record.version <= old.version:
                return Outcome.KEPT
            held[record.author_id] = record
            self._push_expiry(digest, record)
            return Outcome.REPLACED
        if self._count >= self.max_records or self._per_author[record.author_id] >= (
            self.max_per_author
        ):
            self.purge(now)
        if self._count >= self.max_records:
            self.refused["full"] += 1
            return Outcome.FULL
        if self._per_author[record.author_id] >= self.max_per_author:
            self.refused["author_full"] += 1
            return Outcome.AUTHOR_FULL
        self._keys.setdefault(digest, held)[record.author_id] = record
        self._per_author[record.author_id] += 1
        self._count += 1
        self._push_expiry(digest, record)
        return Outcome.STORED

    def get(self, digest: bytes, now: float) -> list[Record]:
        """Unexpired records under ``digest`` (tombstones included), newest first."""
        held = self._keys.get(digest)
        if not held:
            return []
        for author_id, record in list(held.items()):
            if record.expires_at <= now:
                self._remove(digest, author_id)
        return newest_first(self._keys.get(digest, {}).values())

    def digests(self) -> list[bytes]:
        return list(self._keys)

    def purge(self, now: float) -> int:
        """Drop every expired record; returns how many."""
        dropped = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, digest, author_id, _ = heapq.heappop(self._expiry)
            record = self._keys.get(digest, {}).get(author_id)
            # The entry may be stale (the record was replaced, or dropped and stored
            # again): only the held record's own expiry counts.
            if record is not None and record.expires_at <= now:
                self._remove(digest, author_id)
                dropped += 1
        return dropped

    def _push_expiry(self, digest: bytes, record: Record) -> None:
        heapq.heappush(self._expiry, (record.expires_at, digest, record.author_id, record.version))
        if len(self._expiry) > 2 * self._count + 64:  # superseded entries pile up; compact
            self._expiry = [
                (r.expires_at, d, a, r.version)
                for d, rs in self._keys.items()
                for a, r in rs.items()
            ]
            heapq.heapify(self._expiry)

    def _remove(self, digest: bytes, author_id: str) -> None:
        held = self._keys[digest]
        del held[author_id]
        if not held:
            del self._keys[digest]
        self._per_author[author_id] -= 1
        if self._per_author[author_id] <= 0:
            del self._per_author[author_id]
        self._count -= 1

    # -- this node's own records ------------------------------------------------------

    def next_version(self, key: str, now: float) -> int:
        """Versions grow per key even across restarts and clock steps backwards."""
        version = max(self._versions.get(key, 0) + 1, int(now * 1000))
        self._versions[key] = version
        return version

    def remember_own(self, record: Record, ttl_s: float, now: float) -> None:
        self._versions[record.key] = max(self._versions.get(record.key, 0), record.version)
        if record.deleted:
            self._own.pop(record.key, None)  # a tombstone is published once, then expires
        else:
            self._own[record.key] = OwnRecord(record.digest, record, ttl_s, now)

    def own(self, key: str) -> OwnRecord | None:
        return self._own.get(key)

    def own_records(self) -> list[OwnRecord]:
        return list(self._own.values())

    def own_due(self, now: float, fraction: float) -> list[OwnRecord]:
        """Own records past ``fraction`` of their TTL: the author republishes them."""
        return [o for o in self._own.values() if o.due_at(fraction) <= now]

    def own_next_due(self, fraction: float) -> float | None:
        return min((o.due_at(fraction) for o in self._own.values()), default=None)

    def versions(self) -> dict[str, int]:
        return dict(self._versions)

    def restore(self, own: list[OwnRecord], versions: dict[str, int]) -> None:
        """Put saved own records and version counters back (the caller verified them)."""
        for key, version in versions.items():
            self._versions[key] = max(self._versions.get(key, 0), version)
        for entry in own:
            key = entry.record.key
            self._versions[key] = max(self._versions.get(key, 0), entry.record.version)
            self._own[key] = entry


# -- state as JSON ---------------------------------------------------------------------


@dataclass(frozen=True)
class SavedState:
    node_id: str
    own: list[OwnRecord]
    versions: dict[str, int]
    contacts: list[tuple[str, str, int]]  # (node id hex, host, port)


def dump_state(node_id: str, store: RecordStore, contacts: list[tuple[str, str, int]]) -> str:
    own = [
        {
            "record": base64.b64encode(encode(o.record)).decode(),
            "ttl_s": o.ttl_s,
            "published_at": o.published_at,
        }
        for o in store.own_records()
    ]
    data = {
        "format": STATE_FORMAT,
        "node_id": node_id,
        "own": own,
        "versions": store.versions(),
        "contacts": [list(c) for c in contacts],
    }
    return json.dumps(data, sort_keys=True, indent=1)


def parse_state(text: str) -> SavedState:
    """Read :func:`dump_state`'s output; anything else raises DhtError."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise DhtError("DHT state file has an unknown format")
        own = [_parse_own(o) for o in data["own"]]
        versions = {str(k): _int(v) for k, v in data["versions"].items()}
        contacts = [(str(c[0]), str(c[1]), _int(c[2])) for c in data["contacts"]]
        return SavedState(str(data["node_id"]), own, versions, contacts)
    except RecordError as exc:
        raise DhtError(f"DHT state file holds a bad record: {exc}") from exc
    except (
        ValueError,
        KeyError,
        TypeError,
        IndexError,
        AttributeError,
        RecursionError,
        binascii.Error,
    ) as exc:
        raise DhtError(f"DHT state file is malformed: {exc}") from exc


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _parse_own(raw: Any) -> OwnRecord:
    record = decode(base64.b64decode(raw["record"], validate=True))
    return OwnRecord(record.digest, record, float(raw["ttl_s"]), float(raw["published_at"]))
