"""JSON forms of the placement model's values, and strict decoders for them.

Shared by :mod:`.codec` (messages and durable records). Resources are
``[cpus, memory, disk]``; a placement, a hold and a bid record are arrays in field
order; a workload (``{"id", "spec"}``, the spec in :func:`meshd.core.spec.to_wire` form)
and a round record are objects. A spec is decoded as strictly as the API decodes a
submission. Every decoder raises :class:`Bad`
on anything but the exact shape (types, ranges, lengths); :func:`load` turns that,
and every JSON or UTF-8 error, into :class:`~meshd.errors.EnvelopeError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

import orjson

from meshd.core import spec
from meshd.core.auction.capabilities import NO_REQUIREMENTS, Requirements
from meshd.core.auction.model import (
    AwardRecord,
    BidRecord,
    Hold,
    Placement,
    Resources,
    RoundRecord,
    Workload,
)
from meshd.core.spec import WorkloadSpec
from meshd.errors import EnvelopeError

MAX_DATAGRAM = 1200
MAX_NAME = 255  # bytes of a node name, id or tenant
MAX_TEXT = 4096  # bytes of a reason
MAX_FRAME = 64 * 1024 * 1024  # a Sync of a very large view still fits
RID = 2 * MAX_NAME  # a round id embeds the originator's name


class Bad(Exception):
    pass


# -- encoding ------------------------------------------------------------------------


def res(r: Resources) -> list[Any]:
    return [r.cpus, r.memory, r.disk]


def workload(w: Workload) -> dict[str, Any]:
    return {"id": w.id, "spec": spec.to_wire(w.spec)}


def placement(p: Placement) -> list[Any]:
    return [
        p.workload_id,
        spec.to_wire(p.spec),
        p.owner,
        p.generation,
        p.round,
        p.originator,
        p.decided_at,
        *([True] if p.removed else []),  # tombstones only
    ]


def bid_record(b: BidRecord) -> list[Any]:
    return [b.bidder, b.score, b.reason, b.tenant_count, b.mem_free, b.workloads, b.at, b.busy]


def round_record(r: RoundRecord) -> dict[str, Any]:
    return {
        "id": r.round_id,
        "auction": r.auction_id,
        "seq": r.seq,
        "wl": workload(r.workload),
        "by": r.originator,
        "at": r.started_at,
        "cand": list(r.candidates),
        "bids": [bid_record(b) for b in r.bids],
        "awards": [[a.node, a.generation, a.outcome, a.reason] for a in r.awards],
        "state": r.state,
        "winner": r.winner,
        "gen": r.generation,
        "why": r.reason,
        "closed": r.closed_at,
    }


def hold(h: Hold) -> list[Any]:
    return [h.round_id, h.workload_id, res(h.resources), h.tenant, h.originator, h.expires_at]


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON (orjson: a tenth of a placement's CPU went to the stdlib coder).

    orjson writes a NaN or infinity as ``null`` instead of refusing it, and refuses
    integers beyond 64 bits; neither gets here: submissions are checked
    (:func:`json_safe`) and decoders bound every number.
    """
    return orjson.dumps(obj)


def json_safe(v: Any) -> bool:
    """Whether ``v`` survives the codec unchanged: no NaN or infinity, no integer
    beyond 64 bits (what a client's JSON may hold and orjson can't write)."""
    try:
        return bool(orjson.loads(orjson.dumps(v)) == v)
    except (TypeError, ValueError):
        return False


# -- decoding ------------------------------------------------------------------------


def text(v: Any, limit: int = MAX_NAME, empty: bool = False) -> str:
    if not isinstance(v, str) or (not v and not empty) or len(v.encode()) > limit:
        raise Bad("bad string")
    return v


def opt_text(v: Any) -> str | None:
    return None if v is None else text(v)


MAX_COUNT = 2**63 - 1  # sizes, counts and generations: a signed 64-bit integer


def count(v: Any) -> int:
    if type(v) is not int or not 0 <= v <= MAX_COUNT:
        raise Bad("bad count")
    return v


def score(v: Any) -> int:
    if type(v) is not int or not (v == -1 or 1 <= v <= 1000):
        raise Bad("bad score")
    return v


def num(v: Any) -> float:
    if type(v) not in (int, float) or not math.isfinite(v) or v < 0:
        raise Bad("bad number")
    return float(v)


def opt_num(v: Any) -> float | None:
    return None if v is None else num(v)


def flag(v: Any) -> bool:
    if type(v) is not bool:
        raise Bad("bad flag")
    return v


def array(v: Any, n: int | None = None) -> list[Any]:
    if not isinstance(v, list) or (n is not None and len(v) != n):
        raise Bad("bad list")
    return v


def to_sums(v: Any, counts: Collection[int]) -> tuple[int, ...]:
    """64-bit sums, as many as one of ``counts``: 16 lower-case hex digits each."""
    if not isinstance(v, str) or len(v) % 16 or len(v) // 16 not in counts:
        raise Bad("bad sums")
    if v.strip("0123456789abcdef"):
        raise Bad("bad sums")
    return tuple(int(v[i : i + 16], 16) for i in range(0, len(v), 16))


def to_res(v: Any) -> Resources:
    c, mem, disk = array(v, 3)
    return Resources(num(c), count(mem), count(disk))


def to_requirements(o: Mapping[str, Any]) -> Requirements:
    """A BidRequest's optional ``need``, ``lab`` and ``anti`` keys."""
    if "need" not in o and "lab" not in o and "anti" not in o:
        return NO_REQUIREMENTS
    labels = o.get("lab", {})
    if not isinstance(labels, dict):
        raise Bad("bad labels")
    return Requirements(
        frozenset(map(text, array(o.get("need", [])))),
        tuple(sorted((text(k), text(x)) for k, x in labels.items())),
        frozenset(map(text, array(o.get("anti", [])))),
    )


def to_spec(v: Any) -> WorkloadSpec:
    try:
        return spec.from_wire(v)
    except ValueError as exc:
        raise Bad(str(exc)) from exc


def to_workload(v: Any) -> Workload:
    if isinstance(v, dict) and "res" in v:
        return _legacy_workload(v)
    if not isinstance(v, dict) or len(v) != 2:
        raise Bad("bad workload")
    return Workload(text(v["id"]), to_spec(v["spec"]))


def to_placement(v: Any) -> Placement:
    items = array(v)
    if len(items) in (9, 10):
        return _legacy_placement(items)
    if len(items) not in (7, 8):
        raise Bad("bad placement")
    w, s, owner, gen, rnd, by, at = items[:7]
    removed = flag(items[7]) if len(items) == 8 else False
    return Placement(
        Workload(text(w), to_spec(s)),
        text(owner),
        count(gen),
        text(rnd, RID),
        text(by),
        num(at),
        removed,
    )


# -- records written before the spec was part of the view (meshd 0.1) --------------
# A node upgraded in place must keep every allocation it committed: an old workload
# record holds the whole spec (converted exactly); an old placement or round holds only
# a name, resources and tenant (converted to a spec marked ``legacy``, which the
# store's loader replaces with the allocation's spec wherever this node has it).
LEGACY = "meshd-0.1-record"


def _legacy_spec(name: str, r: Resources, tenant: str | None, extra: Mapping[str, Any]) -> Any:
    doc = {k: x for k, x in extra.items() if x is not None and k in WorkloadSpec.__struct_fields__}
    doc.update(name=name, cpus=r.cpus, memory=r.memory, disk=r.disk, tenant=tenant)
    return to_spec(doc)


def _legacy_workload(v: Mapping[str, Any]) -> Workload:
    extra = v.get("spec")
    if not isinstance(extra, dict):
        raise Bad("bad spec")
    extra = {**extra, "driver": v["driver"], "nodes": v["nodes"], "avoid": v["avoid"]}
    name, r = text(v["name"]), to_res(v["res"])
    return Workload(text(v["id"]), _legacy_spec(name, r, opt_text(v["tenant"]), extra))


def _legacy_placement(items: list[Any]) -> Placement:
    w, name, owner, gen, rnd, by, at, r, tenant = items[:9]
    removed = flag(items[9]) if len(items) == 10 else False
    s = _legacy_spec(text(name), to_res(r), opt_text(tenant), {"labels": {LEGACY: "yes"}})
    return Placement(
        Workload(text(w), s), text(owner), count(gen), text(rnd, RID), text(by), num(at), removed
    )


def to_bid_record(v: Any) -> BidRecord:
    who, sc, why, tc, mf, n, at, busy = array(v, 8)
    return BidRecord(
        text(who),
        score(sc),
        text(why, MAX_TEXT, True),
        count(tc),
        count(mf),
        count(n),
        num(at),
        flag(busy),
    )


def to_round_record(v: Any) -> RoundRecord:
    if not isinstance(v, dict):
        raise Bad("bad round")
    awards = []
    for a in array(v["awards"]):
        node, gen, outcome, why = array(a, 4)
        awards.append(AwardRecord(text(node), count(gen), text(outcome), text(why, MAX_TEXT, True)))
    gen = v["gen"]
    return RoundRecord(
        text(v["id"], RID),
        text(v["auction"], RID),
        count(v["seq"]),
        to_workload(v["wl"]) if "wl" in v else _legacy_round_workload(v),
        text(v["by"]),
        num(v["at"]),
        tuple(map(text, array(v["cand"]))),
        tuple(map(to_bid_record, array(v["bids"]))),
        tuple(awards),
        text(v["state"]),
        opt_text(v["winner"]),
        None if gen is None else count(gen),
        text(v["why"], MAX_TEXT, True),
        opt_num(v["closed"]),
    )


def _legacy_round_workload(v: Mapping[str, Any]) -> Workload:
    s = _legacy_spec(
        text(v["name"]), to_res(v["res"]), opt_text(v["tenant"]), {"labels": {LEGACY: "yes"}}
    )
    return Workload(text(v["w"]), s)


def to_hold(v: Any) -> Hold:
    rid, w, res, tenant, by, exp = array(v, 6)
    return Hold(text(rid, RID), text(w), to_res(res), opt_text(tenant), text(by), num(exp))


def load(data: bytes, tag: str, table: Mapping[str, Callable[[dict[str, Any]], Any]]) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) > MAX_FRAME:
        raise EnvelopeError("auction frame is not bytes or is too large")
    try:
        obj = orjson.loads(data)  # strict: refuses NaN, Infinity and bad UTF-8
        if not isinstance(obj, dict):
            raise Bad("not an object")
        fn = table.get(obj.get(tag))  # type: ignore[arg-type]
        if fn is None:
            raise Bad(f"unknown {tag!r}")
        return fn(obj)
    except (Bad, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise EnvelopeError(f"malformed auction frame: {exc}") from exc
