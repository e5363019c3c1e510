"""Fencing messages and durable records to bytes and back: compact, strict JSON.

Each message is one UTF-8 JSON object with a type tag ``t`` and short keys; signed vote
blobs travel base64-encoded. The frame is what the shell signs and seals; it carries
no authentication of its own. Decoding is strict: anything that is not exactly a known
message or record — bad UTF-8 or JSON, a missing, extra or mistyped field, a negative
epoch, an over-long name, a non-finite time — raises
:class:`~meshd.errors.EnvelopeError` naming what was wrong, and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from typing import Any

import orjson

from meshd.core.fencing import messages as m
from meshd.core.fencing import records as r
from meshd.errors import EnvelopeError

__all__ = ["decode", "dump_record", "encode", "load_record"]

MAX_NAME = 255  # bytes of a node name
MAX_TEXT = 4096  # bytes of a reason or evidence
MAX_VOTES = 1024  # signed votes in one Fenced: more than any roster
MAX_BLOB = 4096  # bytes of one signed vote
MAX_INT = 2**63 - 1


class _Bad(Exception):
    pass


def _name(v: Any) -> str:
    if not isinstance(v, str) or not v or len(v.encode()) > MAX_NAME:
        raise _Bad(f"a node name must be 1..{MAX_NAME} bytes of text, got {v!r:.80}")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str) or len(v.encode()) > MAX_TEXT:
        raise _Bad(f"a reason must be text of at most {MAX_TEXT} bytes")
    return v


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_INT:
        raise _Bad(f"an epoch or round must be a non-negative integer, got {v!r:.80}")
    return v


def _time(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _Bad(f"a time must be a finite number, got {v!r:.80}")
    return float(v)


def _blobs(v: Any) -> tuple[bytes, ...]:
    if not isinstance(v, list) or len(v) > MAX_VOTES:
        raise _Bad(f"votes must be a list of at most {MAX_VOTES} signed votes")
    out = []
    for item in v:
        if not isinstance(item, str) or len(item) > 2 * MAX_BLOB:
            raise _Bad("a signed vote must be base64 text")
        try:
            out.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise _Bad("a signed vote is not valid base64") from exc
    return tuple(out)


def _b64(blobs: tuple[bytes, ...]) -> list[str]:
    return [base64.b64encode(b).decode() for b in blobs]


# Per tag: the fields in order, each with its decoder, and the constructor.
_Field = tuple[str, Callable[[Any], Any]]
_TARGET: list[_Field] = [("n", _name), ("e", _count)]
_SHAPES: dict[str, tuple[list[_Field], type]] = {
    "req": ([*_TARGET, ("r", _count), ("at", _time)], m.FenceRequest),
    "vote": ([*_TARGET, ("r", _count), ("c", _name), ("at", _time)], m.FenceVote),
    "fencing": ([*_TARGET, ("r", _count)], m.Fencing),
    "fenced": ([*_TARGET, ("r", _count), ("c", _name), ("v", _blobs), ("why", _text)], m.Fenced),
    "failed": (
        [*_TARGET, ("r", _count), ("c", _name), ("v", _blobs), ("why", _text)],
        m.FenceFailed,
    ),
    "rel": ([*_TARGET, ("r", _count)], m.Release),
    # durable records
    "granted": ([*_TARGET, ("r", _count), ("c", _name), ("at", _time)], r.Granted),
    "ballot": ([*_TARGET, ("r", _count)], r.BallotStarted),
    "decided": ([*_TARGET, ("r", _count), ("dl", _time), ("v", _blobs)], r.Decided),
    "outcome": (
        [*_TARGET, ("r", _count), ("c", _name), ("k", _text), ("why", _text), ("v", _blobs)],
        r.Outcome,
    ),
}
_TAGS: dict[type, str] = {cls: tag for tag, (_, cls) in _SHAPES.items()}
_MESSAGE_TAGS = frozenset({"req", "vote", "fencing", "fenced", "failed", "rel"})


def _dump(obj: Any) -> bytes:
    tag = _TAGS[type(obj)]
    fields, _ = _SHAPES[tag]
    out: dict[str, Any] = {"t": tag}
    values = [getattr(obj, slot) for slot in obj.__slots__]
    for (key, _dec), value in zip(fields, values, strict=True):
        out[key] = _b64(value) if isinstance(value, tuple) else value
    return orjson.dumps(out)


def _load(data: bytes, allowed: frozenset[str] | None, what: str) -> Any:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"a fencing {what} is not valid UTF-8 JSON: {exc}") from exc
    try:
        if not isinstance(doc, dict):
            raise _Bad("not a JSON object")
        tag = doc.get("t")
        if not isinstance(tag, str) or tag not in _SHAPES or (allowed and tag not in allowed):
            raise _Bad(f"unknown type {tag!r:.40}")
        fields, cls = _SHAPES[tag]
        if set(doc) != {"t", *(k for k, _ in fields)}:
            raise _Bad(f"{tag} needs exactly the fields {[k for k, _ in fields]}")
        obj = cls(*(dec(doc[k]) for k, dec in fields))
        if isinstance(obj, r.Outcome) and obj.kind not in r.OUTCOMES:
            raise _Bad(f"unknown outcome {obj.kind!r:.40}")
        return obj
    except _Bad as exc:
        raise EnvelopeError(f"bad fencing {what}: {exc}") from None


def encode(msg: m.FenceMsg) -> bytes:
    return _dump(msg)


def decode(data: bytes) -> m.FenceMsg:
    """One message from ``data``; EnvelopeError (saying what is wrong) for anything else."""
    out: m.FenceMsg = _load(data, _MESSAGE_TAGS, "message")
    return out


def dump_record(record: r.Record) -> bytes:
    return _dump(record)


def load_record(data: bytes) -> r.Record:
    out: r.Record = _load(data, frozenset(_SHAPES) - _MESSAGE_TAGS, "record")
    return out
