"""Maintenance drains: which members are drained, replicated as signed records.

Theory of operation
-------------------
``meshd node drain NAME`` (issue 12, item 7; Nomad's ``node drain -enable``, Proxmox
HA's maintenance mode) marks a member so that it bids on nothing and no originator
offers it anything, while its workloads are auctioned away. The mark is one
:class:`DrainRecord` per drained-or-undrained member, made and signed by the node that
accepted the operator's command, stored on every node and spread by gossip plus
push-pull anti-entropy (``meshd.shell.drains``).

**Conflicts resolve last writer wins** over ``(version, by, draining)``:

* ``version`` is a hybrid clock: the accepting node's wall clock in milliseconds, but
  always above the version it already knows for that member (:meth:`DrainTable.
  next_version`). An undrain issued after the drain was seen therefore wins on every
  node, whatever the clocks say; two commands issued concurrently on two nodes that
  had not heard of each other are ordered by their clocks.
* equal versions (two nodes, the same millisecond) are ordered by the signer's name,
  then ``draining`` beats not draining: a tie never leaves two nodes disagreeing.
* a record at or below the one held changes nothing, so a replayed old record (a
  datagram copied, a restarted node pushing what it had) is harmless.

The records carry no expiry: a drain lasts until an undrain, as an operator expects
of a blade on the bench. Pure: no clock, no IO; the shell passes ``now_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from meshd.core import bundle
from meshd.errors import EnvelopeError

DRAIN_KIND = "drain"  # the signed record's kind
MAX_NAME = 255  # bytes of a node name
MAX_VERSION = 2**63 - 1


@dataclass(frozen=True, slots=True)
class DrainRecord:
    """Member ``node`` is drained (``draining``) or not, as ``by`` decided at ``version``."""

    node: str
    draining: bool
    version: int  # milliseconds, bumped past the last known (see the module docstring)
    by: str  # the node that accepted the command and signed this record

    def order(self) -> tuple[int, str, bool]:
        return (self.version, self.by, self.draining)

    def newer_than(self, other: DrainRecord | None) -> bool:
        return other is None or self.order() > other.order()


def encode(r: DrainRecord) -> bytes:
    return orjson.dumps({"n": r.node, "d": r.draining, "v": r.version, "b": r.by})


def _name(v: Any) -> str:
    if not isinstance(v, str) or not v or len(v.encode()) > MAX_NAME:
        raise EnvelopeError(f"a node name must be 1..{MAX_NAME} bytes of text, got {v!r:.80}")
    return v


def decode(body: bytes) -> DrainRecord:
    """A record from its body; anything else raises :class:`EnvelopeError` saying why."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"a drain record must be JSON: {exc}") from exc
    if not isinstance(doc, dict) or set(doc) != {"n", "d", "v", "b"}:
        raise EnvelopeError("a drain record has exactly the keys n, d, v and b")
    version = doc["v"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise EnvelopeError("a drain record's version must be an integer")
    if not 0 <= version <= MAX_VERSION:
        raise EnvelopeError("a drain record's version is out of range")
    if not isinstance(doc["d"], bool):
        raise EnvelopeError("a drain record's draining flag must be true or false")
    return DrainRecord(_name(doc["n"]), doc["d"], version, _name(doc["b"]))


def encode_bundle(blobs: list[bytes]) -> bytes:
    return bundle.encode_bundle(blobs)


def decode_bundle(body: bytes) -> list[bytes]:
    return bundle.decode_bundle(body, "drain")


class DrainTable:
    """The newest record known per member, with its signed form (relayed as is)."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[DrainRecord, bytes]] = {}

    def merge(self, record: DrainRecord, signed: bytes) -> bool:
        """Keep ``record`` if it is newer than the one held; whether it was."""
        held = self._records.get(record.node)
        if not record.newer_than(None if held is None else held[0]):
            return False
        self._records[record.node] = (record, signed)
        return True

    def get(self, node: str) -> DrainRecord | None:
        held = self._records.get(node)
        return None if held is None else held[0]

    def draining(self, node: str) -> bool:
        r = self.get(node)
        return r is not None and r.draining

    def drained(self) -> frozenset[str]:
        return frozenset(n for n, (r, _) in self._records.items() if r.draining)

    def records(self) -> list[DrainRecord]:
        return [r for r, _ in self._records.values()]

    def signed(self) -> list[bytes]:
        return [s for _, s in self._records.values()]

    def next_version(self, node: str, now_ms: int) -> int:
        """The version of a new record about ``node``: now, but past what is known."""
        held = self.get(node)
        return now_ms if held is None else max(now_ms, held.version + 1)
