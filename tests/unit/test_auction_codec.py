"""The auction codec: every message and record round-trips; garbage raises only
EnvelopeError; a Bid with the longest fields still fits one datagram."""

from __future__ import annotations

import contextlib
import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.config import ApiConfig
from meshd.core.auction import codec, fields
from meshd.core.auction import durable as d
from meshd.core.auction.bidder import MAX_REASON_BYTES
from meshd.core.auction.capabilities import Requirements
from meshd.core.auction.messages import (
    Accept,
    AuctionMsg,
    Award,
    Bid,
    BidRequest,
    Confirm,
    Digest,
    Refuse,
    Release,
    Revoke,
    Sync,
)
from meshd.core.auction.model import (
    Allocation,
    AwardRecord,
    BidRecord,
    GiB,
    Hold,
    Resources,
    RoundRecord,
)
from meshd.core.spec import Service
from meshd.errors import EnvelopeError
from tests.factories import placement, workload

RES = Resources(2.5, 4 * GiB, 10 * GiB)
W = workload(
    "w-1",
    "web",
    "acme",
    RES,
    "qemu",
    frozenset({"n1", "n2"}),
    frozenset({"n3"}),
    image="debian.qcow2",
    services=(Service("http", 80), Service("https", 443)),
    env={"A": "ü"},
    labels={"rack": "a"},
    requires=frozenset({"kvm"}),
)
P = placement("w-1", "web", "n2", 3, "n1-00000000abcd.2", "n1", 1700000000.25, RES, None)
BR = BidRecord("n2", 512, "", 1, 8 * GiB, 3, 12.5, False)
ROUND = RoundRecord(
    "n1-00000000abcd", "n1-00000000abcd", 1, W, "n1", 10.0,
    ("n1", "n2"), (BR, BidRecord("n1", -1, "not enough cpu", 0, 0, 0, 10.1, True)),
    (AwardRecord("n2", 1, "refused", "no"), AwardRecord("n1", 2)), "awarding", None, None,
    "", None,
)  # fmt: skip

MESSAGES: list[AuctionMsg] = [
    BidRequest("n1-00000000abcd", "w-1", "acme", RES, 0.25),
    BidRequest("n1-00000000abcd", "w-1", None, RES, 0.25),
    BidRequest(
        "n1-00000000abcd",
        "w-1",
        None,
        RES,
        0.25,
        Requirements(frozenset({"driver:qemu", "kvm"}), (("rack", "a"),), frozenset({"db"})),
    ),
    Bid("n1-00000000abcd", 734, "", 2, 3 * GiB, 5),
    Bid("n1-00000000abcd", -1, "not enough memory: 1.5 GiB free of 2 GiB asked", 0, 0, 0, True),
    Release("n1-00000000abcd"),
    Award("n1-00000000abcd", W, 4, "n2"),
    Accept("n1-00000000abcd", "w-1", 4),
    Refuse("n1-00000000abcd", "w-1", 4, "overloaded"),
    Revoke("n1-00000000abcd", "w-1", 4),
    Confirm(P),
    Sync((P, placement("w-2", "db", "n5", 1, "r", "n5", 0.0, RES, "t")), True),
    Sync((), False),
    Digest((*range(31), 2**64 - 1), False),
    Digest((0,) * 32, True),
    Digest(tuple(range(4096)), False),
]

RECORDS: list[d.Record] = [
    d.HoldPlaced(Hold("n1-00000000abcd", "w-1", RES, None, "n1", 99.5)),
    d.HoldReleased("n1-00000000abcd", "expired"),
    d.AllocationCommitted(Allocation(W, "n1-00000000abcd", 2, "n1", 5.0, True)),
    d.AllocationReleased("w-1", 2, "superseded"),
    d.PlacementRecorded(P),
    d.RoundRecorded(ROUND),
    d.BidRecorded("n1-00000000abcd", "n1", "w-1", BR),
    d.FloorRecorded("w-1", 7),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_round_trip(msg: AuctionMsg) -> None:
    data = codec.encode(msg)
    assert codec.decode(data) == msg
    assert json.loads(data)  # plain JSON: debuggable with any tool


@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: type(r).__name__)
def test_records_round_trip(rec: d.Record) -> None:
    assert codec.load_record(codec.dump_record(rec)) == rec


def test_longest_bid_fits_one_datagram() -> None:
    originator = "n" * 255
    rid = f"{originator}-{'f' * 12}.99"
    reason = ("é" * MAX_REASON_BYTES).encode()[:MAX_REASON_BYTES].decode(errors="ignore")
    bid = Bid(rid, -1, reason, 2**31, 2**62, 2**31, True)
    assert len(codec.encode(bid)) < codec.MAX_DATAGRAM
    req = BidRequest(rid, "w" * 255, "t" * 255, Resources(1e6, 2**62, 2**62), 0.25)
    assert len(codec.encode(req)) < codec.MAX_DATAGRAM
    assert codec.fits_datagram(Digest((2**64 - 1,) * 32, True))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'{"t":"nope"}',
        b'{"t":"bid"}',
        b'{"t":["bid"]}',
        b'{"t":"rel","r":""}',
        b'{"t":"rel","r":7}',
        b'{"t":"bid","r":"x","s":0,"why":"","tc":0,"mf":0,"n":0,"b":false}',
        b'{"t":"bid","r":"x","s":1001,"why":"","tc":0,"mf":0,"n":0,"b":false}',
        b'{"t":"bid","r":"x","s":5,"why":"","tc":-1,"mf":0,"n":0,"b":false}',
        b'{"t":"bid","r":"x","s":5,"why":"","tc":true,"mf":0,"n":0,"b":false}',
        b'{"t":"req","r":"x","w":"w","tn":null,"res":[NaN,1,1],"win":0.25}',
        b'{"t":"req","r":"x","w":"w","tn":null,"res":[1,-1,1],"win":0.25}',
        b'{"t":"req","r":"x","w":"w","tn":null,"res":[1,1],"win":0.25}',
        b'{"t":"req","r":"x","w":"w","tn":null,"res":[1e999,1,1],"win":0.25}',
        b'{"t":"conf","p":[1,2,3]}',
        b'{"t":"acc","r":"x","w":"w","g":9223372036854775808}',  # 2**63: beyond a count
        b'{"t":"sync","ps":{},"reply":false}',
        b'{"t":"dig","s":"00","reply":false}',
        ('{"t":"dig","s":"' + "0" * 16 * 48 + '","reply":false}').encode(),  # 48: not a count
        ('{"t":"dig","s":"' + "g" * 512 + '","reply":false}').encode(),
        ('{"t":"dig","s":"' + "A" * 512 + '","reply":false}').encode(),
        ('{"t":"dig","s":"' + "0" * 512 + '","reply":0}').encode(),
        b"[" * 100_000,
        ('{"t":"rel","r":"' + "x" * 600 + '"}').encode(),
    ],
)
def test_garbage_raises_envelope_error(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        codec.decode(data)


def test_award_spec_must_be_an_object() -> None:
    good = json.loads(codec.encode(Award("r", W, 1, "n2")))
    good["wl"]["spec"] = [1, 2]
    with pytest.raises(EnvelopeError):
        codec.decode(json.dumps(good).encode())


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_envelope_error(data: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        codec.decode(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.sampled_from([json.loads(codec.encode(m)) for m in MESSAGES]),
    st.text(max_size=5),
    json_values,
)
def test_mutated_messages_raise_only_envelope_error(base: dict, key: str, value: object) -> None:
    mutated = dict(base)
    mutated[key if key else "t"] = value
    with contextlib.suppress(EnvelopeError):
        codec.decode(json.dumps(mutated).encode())


# -- bundles ---------------------------------------------------------------------------


@given(st.lists(st.sampled_from(MESSAGES[:-2]), min_size=1, max_size=codec.MAX_BUNDLE))
def test_a_bundle_gives_back_its_messages_in_order(msgs: list[AuctionMsg]) -> None:
    frame = codec.bundle([codec.encode(m) for m in msgs])
    assert codec.decode_all(frame) == msgs


def test_a_single_message_is_sent_as_itself() -> None:
    one = codec.encode(MESSAGES[0])
    assert codec.bundle([one]) == one
    assert codec.decode_all(one) == [MESSAGES[0]]


@pytest.mark.parametrize(
    "frame",
    [
        b'{"t":"many","m":[]}',  # empty
        b'{"t":"many","m":[{"t":"rel","r":"n1-00000000abcd"}]}',  # one: never built
        b'{"t":"many","m":"rel"}',
        b'{"t":"many","m":[{"t":"rel","r":"n1-00000000abcd"},{"t":"many","m":[]}]}',
        b'{"t":"many","m":[{"t":"rel","r":"n1-00000000abcd"},7]}',
        b'{"t":"many","m":[{"t":"rel","r":"n1-00000000abcd"},{"x":"rel"}]}',
        b'{"t":"many","m":[' + b",".join([b'{"t":"rel","r":"n1-00000000abcd"}'] * 33) + b"]}",
    ],
)
def test_a_bad_bundle_raises_envelope_error(frame: bytes) -> None:
    with pytest.raises(EnvelopeError):
        codec.decode_all(frame)


def test_a_bundle_skips_a_kind_it_does_not_know() -> None:
    """A newer meshd's message kind (a rolling upgrade) costs only that message."""
    frame = b'{"t":"many","m":[{"t":"rel","r":"n1-00000000abcd"},{"t":"nope","z":1}]}'
    assert codec.decode_all(frame) == [Release("n1-00000000abcd")]


def test_decode_does_not_take_bundles() -> None:
    """Bundles are for datagrams only; the reliable channel and gossip carry one message."""
    frame = codec.bundle([codec.encode(MESSAGES[4]), codec.encode(MESSAGES[6])])
    with pytest.raises(EnvelopeError):
        codec.decode(frame)


def test_a_large_view_syncs_in_runs_the_api_accepts() -> None:
    long = "x" * 255
    big = [
        placement(f"{i:08d}{long}"[:255], long, long, 1, long + long, long, 1.5, RES, long)
        for i in range(3000)
    ]
    chunks = codec.sync_chunks(big)
    assert len(chunks) > 1 and [p for c in chunks for p in c] == big
    for c in chunks:
        assert len(codec.encode(Sync(c, True))) <= codec.MAX_RELIABLE < ApiConfig().max_body_bytes
    assert codec.sync_chunks([]) == []


def test_records_written_by_meshd_0_1_still_load() -> None:
    """A node upgraded in place keeps every allocation it committed, spec and all."""
    wl = {
        "id": "w-1",
        "name": "web",
        "tenant": None,
        "res": [2.0, 1 << 30, 0],
        "driver": "qemu",
        "spec": {"image": "/img.qcow2", "services": [{"name": "http", "port": 80}], "x": None},
        "nodes": ["n2"],
        "avoid": [],
    }
    alloc = b'{"k":"alloc","wl":%s,"r":"n1-1","g":1,"by":"n1","at":5.0,"ok":true}' % (
        orjson.dumps(wl)
    )
    rec = codec.load_record(alloc)
    assert isinstance(rec, d.AllocationCommitted)
    s = rec.allocation.workload.spec
    assert (s.name, s.driver, s.image, s.cpus, s.nodes) == (
        "web",
        "qemu",
        "/img.qcow2",
        2.0,
        frozenset({"n2"}),
    )
    old_place = b'{"k":"place","p":["w-1","web","n2",1,"n1-1","n1",5.0,[2.0,1073741824,0],null]}'
    place = codec.load_record(old_place)
    assert isinstance(place, d.PlacementRecorded)
    assert place.placement.owner == "n2" and place.placement.name == "web"
    assert fields.LEGACY in place.placement.spec.labels
