"""Auction messages and durable records to bytes and back: compact, strict JSON.

Theory of operation
-------------------
Auction traffic is a handful of messages per round, so readability wins over the
byte-exact layout membership needs: each message is one UTF-8 JSON object with a type
tag ``t`` and short keys, no whitespace. Resources are ``[cpus, memory, disk]``. The
frame is what the shell signs and seals; it carries no authentication of its own.
A ``Bid`` is at most ~1 KB even with the longest names and reason the core produces,
so it fits one datagram (``MAX_DATAGRAM``, checked in tests).

Decoding is strict: anything that is not exactly a known message — bad UTF-8 or JSON,
``NaN``, a missing or mistyped field, a negative size, an over-long name — raises
:class:`~meshd.errors.EnvelopeError` and nothing else. :func:`dump_record` and
:func:`load_record` do the same for the :mod:`.durable` records, for a shell that
stores them as JSON blobs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from meshd.core.auction import durable as d
from meshd.core.auction import fields as v
from meshd.core.auction import messages as m
from meshd.core.auction.digest import COUNTS
from meshd.core.auction.fields import MAX_DATAGRAM, MAX_TEXT, RID
from meshd.core.auction.model import Allocation, Placement

__all__ = [
    "MAX_DATAGRAM",
    "bundle",
    "decode",
    "decode_all",
    "dump_record",
    "encode",
    "fits_datagram",
    "load_record",
]


def _msg(msg: m.AuctionMsg) -> dict[str, Any]:
    if isinstance(msg, m.BidRequest):
        out: dict[str, Any] = {
            "t": "req",
            "r": msg.round_id,
            "w": msg.workload_id,
            "tn": msg.tenant,
            "res": v.res(msg.resources),
            "win": msg.window,
        }
        q = msg.requirements
        if q.needs:
            out["need"] = sorted(q.needs)
        if q.labels:
            out["lab"] = dict(q.labels)
        if q.anti_affinity:
            out["anti"] = sorted(q.anti_affinity)
        return out
    if isinstance(msg, m.Bid):
        return {
            "t": "bid",
            "r": msg.round_id,
            "s": msg.score,
            "why": msg.reason,
            "tc": msg.tenant_count,
            "mf": msg.mem_free,
            "n": msg.workloads,
            "b": msg.busy,
        }
    if isinstance(msg, m.Release):
        return {"t": "rel", "r": msg.round_id}
    if isinstance(msg, m.Award):
        return {
            "t": "award",
            "r": msg.round_id,
            "wl": v.workload(msg.workload),
            "g": msg.generation,
            "to": msg.winner,
        }
    if isinstance(msg, m.Accept | m.Revoke):
        tag = "acc" if isinstance(msg, m.Accept) else "rev"
        return {"t": tag, "r": msg.round_id, "w": msg.workload_id, "g": msg.generation}
    if isinstance(msg, m.Refuse):
        return {
            "t": "ref",
            "r": msg.round_id,
            "w": msg.workload_id,
            "g": msg.generation,
            "why": msg.reason,
        }
    if isinstance(msg, m.Confirm):
        return {"t": "conf", "p": v.placement(msg.placement)}
    if isinstance(msg, m.Digest):
        return {"t": "dig", "s": "".join(f"{x:016x}" for x in msg.sums), "reply": msg.reply}
    return {"t": "sync", "ps": [v.placement(p) for p in msg.placements], "reply": msg.reply}


def encode(msg: m.AuctionMsg) -> bytes:
    return v.dumps(_msg(msg))


MAX_RELIABLE = 512 * 1024  # bytes of one message over mTLS: half the API's body limit


def sync_chunks(placements: Sequence[Placement]) -> list[tuple[Placement, ...]]:
    """``placements`` in runs whose ``Sync`` stays within :data:`MAX_RELIABLE`."""
    chunks: list[tuple[Placement, ...]] = []
    run: list[Placement] = []
    size = 0
    for p in placements:
        cost = len(v.dumps(v.placement(p))) + 1
        if run and size + cost > MAX_RELIABLE - 64:
            chunks.append(tuple(run))
            run, size = [], 0
        run.append(p)
        size += cost
    if run:
        chunks.append(tuple(run))
    return chunks


def fits_datagram(msg: m.AuctionMsg) -> bool:
    """Whether ``msg`` encodes within one datagram's budget (``MAX_DATAGRAM``)."""
    return len(encode(msg)) <= MAX_DATAGRAM


def dump_record(record: d.Record) -> bytes:
    if isinstance(record, d.HoldPlaced):
        h = record.hold
        body: dict[str, Any] = {"k": "hold", "h": v.hold(h)}
    elif isinstance(record, d.HoldReleased):
        body = {"k": "unhold", "r": record.round_id, "why": record.reason}
    elif isinstance(record, d.AllocationCommitted):
        a = record.allocation
        body = {
            "k": "alloc",
            "wl": v.workload(a.workload),
            "r": a.round_id,
            "g": a.generation,
            "by": a.originator,
            "at": a.committed_at,
            "ok": a.confirmed,
        }
    elif isinstance(record, d.AllocationReleased):
        body = {
            "k": "unalloc",
            "w": record.workload_id,
            "g": record.generation,
            "why": record.reason,
        }
    elif isinstance(record, d.PlacementRecorded):
        body = {"k": "place", "p": v.placement(record.placement)}
    elif isinstance(record, d.RoundRecorded):
        body = {"k": "round", "rec": v.round_record(record.record)}
    elif isinstance(record, d.FloorRecorded):
        body = {"k": "floor", "w": record.workload_id, "g": record.generation}
    else:
        body = {
            "k": "bid",
            "r": record.round_id,
            "by": record.originator,
            "w": record.workload_id,
            "b": v.bid_record(record.bid),
        }
    return v.dumps(body)


_MESSAGES: dict[str, Callable[[dict[str, Any]], m.AuctionMsg]] = {
    "req": lambda o: m.BidRequest(
        v.text(o["r"], RID),
        v.text(o["w"]),
        v.opt_text(o["tn"]),
        v.to_res(o["res"]),
        v.num(o["win"]),
        v.to_requirements(o),
    ),
    "bid": lambda o: m.Bid(
        v.text(o["r"], RID),
        v.score(o["s"]),
        v.text(o["why"], MAX_TEXT, True),
        v.count(o["tc"]),
        v.count(o["mf"]),
        v.count(o["n"]),
        v.flag(o["b"]),
    ),
    "rel": lambda o: m.Release(v.text(o["r"], RID)),
    "award": lambda o: m.Award(
        v.text(o["r"], RID), v.to_workload(o["wl"]), v.count(o["g"]), v.text(o["to"])
    ),
    "acc": lambda o: m.Accept(v.text(o["r"], RID), v.text(o["w"]), v.count(o["g"])),
    "rev": lambda o: m.Revoke(v.text(o["r"], RID), v.text(o["w"]), v.count(o["g"])),
    "ref": lambda o: m.Refuse(
        v.text(o["r"], RID), v.text(o["w"]), v.count(o["g"]), v.text(o["why"], MAX_TEXT, True)
    ),
    "conf": lambda o: m.Confirm(v.to_placement(o["p"])),
    "dig": lambda o: m.Digest(v.to_sums(o["s"], COUNTS), v.flag(o["reply"])),
    "sync": lambda o: m.Sync(tuple(map(v.to_placement, v.array(o["ps"]))), v.flag(o["reply"])),
}

_RECORDS: dict[str, Callable[[dict[str, Any]], d.Record]] = {
    "hold": lambda o: d.HoldPlaced(v.to_hold(o["h"])),
    "unhold": lambda o: d.HoldReleased(v.text(o["r"], RID), v.text(o["why"], MAX_TEXT, True)),
    "alloc": lambda o: d.AllocationCommitted(
        Allocation(
            v.to_workload(o["wl"]),
            v.text(o["r"], RID),
            v.count(o["g"]),
            v.text(o["by"]),
            v.num(o["at"]),
            v.flag(o["ok"]),
        )
    ),
    "unalloc": lambda o: d.AllocationReleased(
        v.text(o["w"]), v.count(o["g"]), v.text(o["why"], MAX_TEXT, True)
    ),
    "place": lambda o: d.PlacementRecorded(v.to_placement(o["p"])),
    "round": lambda o: d.RoundRecorded(v.to_round_record(o["rec"])),
    "floor": lambda o: d.FloorRecorded(v.text(o["w"]), v.count(o["g"])),
    "bid": lambda o: d.BidRecorded(
        v.text(o["r"], RID), v.text(o["by"]), v.text(o["w"]), v.to_bid_record(o["b"])
    ),
}


def decode(data: bytes) -> m.AuctionMsg:
    result: m.AuctionMsg = v.load(data, "t", _MESSAGES)
    return result


# -- bundles: several messages to one node in one datagram ---------------------------

MAX_BUNDLE = 32  # messages in one bundle
_BUNDLE_HEAD, _BUNDLE_TAIL = b'{"t":"many","m":[', b"]}"
BUNDLE_OVERHEAD = len(_BUNDLE_HEAD) + len(_BUNDLE_TAIL)


def bundle(frames: Sequence[bytes]) -> bytes:
    """Encoded messages (from :func:`encode`) as one frame; one message stays itself."""
    if len(frames) == 1:
        return frames[0]
    if not 1 < len(frames) <= MAX_BUNDLE:
        raise ValueError(f"a bundle holds 2..{MAX_BUNDLE} messages")
    return _BUNDLE_HEAD + b",".join(frames) + _BUNDLE_TAIL


def _many(o: dict[str, Any]) -> list[m.AuctionMsg]:
    items = o["m"]
    if not isinstance(items, list) or not 1 < len(items) <= MAX_BUNDLE:
        raise v.Bad(f"a bundle holds 2..{MAX_BUNDLE} messages")
    out = []
    for item in items:
        tag = item.get("t") if isinstance(item, dict) else None
        if not isinstance(tag, str) or tag == "many":
            raise v.Bad("a bundle holds messages, not bundles")
        fn = _MESSAGES.get(tag)
        if fn is not None:
            out.append(fn(item))
        # else: a kind a newer meshd sends (a rolling upgrade); the rest still counts
    return out


def _one(fn: Callable[[dict[str, Any]], m.AuctionMsg]) -> Callable[[dict[str, Any]], list[Any]]:
    return lambda o: [fn(o)]


_FRAMES: dict[str, Callable[[dict[str, Any]], list[m.AuctionMsg]]] = {
    **{tag: _one(fn) for tag, fn in _MESSAGES.items()},
    "many": _many,
}


def decode_all(data: bytes) -> list[m.AuctionMsg]:
    """The messages of one frame: a single message, or each one of a :func:`bundle`."""
    result: list[m.AuctionMsg] = v.load(data, "t", _FRAMES)
    return result


def load_record(data: bytes) -> d.Record:
    result: d.Record = v.load(data, "k", _RECORDS)
    return result
