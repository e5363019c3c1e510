"""Maintenance drains: the record, its merge rule, its codec, and a drained bidder."""

from __future__ import annotations

import itertools
import logging
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd import config
from meshd.adapters.store import drain_records
from meshd.adapters.store.db import Store
from meshd.core import drain
from meshd.core.auction import Auctioneer, BidRequest, Capacity, Resources
from meshd.core.auction.model import GiB
from meshd.core.drain import DrainRecord, DrainTable
from meshd.errors import EnvelopeError
from tests.factories import workload

LOG = logging.getLogger("test.drain")
T0 = 1_700_000_000.0
CAP = Capacity(8.0, 16 * GiB, 100 * GiB)


def R(node: str = "n2", draining: bool = True, version: int = 10, by: str = "n1") -> DrainRecord:
    return DrainRecord(node, draining, version, by)


@pytest.mark.parametrize(
    ("held", "incoming", "kept"),
    [
        (None, R(), True),  # the first word about a member
        (R(version=10), R(draining=False, version=11), True),  # a later undrain wins
        (R(draining=False, version=11), R(version=10), False),  # a replayed old drain
        (R(version=10), R(version=10), False),  # the same record again
        (R(version=10, by="n1"), R(version=10, by="n3", draining=False), True),  # by name
        (R(version=10, by="n3"), R(version=10, by="n1"), False),
        (R(version=10, draining=False), R(version=10, draining=True), True),  # a drain
    ],
)
def test_merge_is_last_writer_wins(
    held: DrainRecord | None, incoming: DrainRecord, kept: bool
) -> None:
    table = DrainTable()
    if held is not None:
        table.merge(held, b"held")
    assert table.merge(incoming, b"new") is kept
    assert table.get("n2") == (incoming if kept else held)


records = st.builds(
    DrainRecord,
    st.sampled_from(["n1", "n2"]),
    st.booleans(),
    st.integers(0, 5),
    st.sampled_from(["a", "b", "c"]),
)


@given(st.lists(records, max_size=8))
def test_every_order_of_arrival_ends_in_the_same_state(rs: list[DrainRecord]) -> None:
    """Nodes that receive the same records in any order agree (and duplicates don't
    matter): the merge is commutative, associative and idempotent."""
    finals = set()
    for order in itertools.islice(itertools.permutations(rs + rs[:2]), 30):
        table = DrainTable()
        for r in order:
            table.merge(r, drain.encode(r))
        finals.add(tuple(sorted((r.node, r.order()) for r in table.records())))
    assert len(finals) <= 1


def test_next_version_is_past_the_known_one_whatever_the_clock() -> None:
    table = DrainTable()
    assert table.next_version("n2", 1000) == 1000
    table.merge(R(version=5000), b"")
    # This node's clock is behind the drain's: the undrain still wins.
    assert table.next_version("n2", 1000) == 5001
    assert table.next_version("n2", 9000) == 9000
    assert table.drained() == frozenset({"n2"})


def test_codec_round_trips_and_refuses_what_is_not_a_record() -> None:
    r = R()
    assert drain.decode(drain.encode(r)) == r
    for bad, why in [
        (b"not json", "must be JSON"),
        (b"[]", "exactly the keys"),
        (b'{"n":"x","d":true,"v":1}', "exactly the keys"),
        (b'{"n":"x","d":1,"v":1,"b":"y"}', "true or false"),
        (b'{"n":"x","d":true,"v":-1,"b":"y"}', "out of range"),
        (b'{"n":"x","d":true,"v":1.5,"b":"y"}', "an integer"),
        (b'{"n":"","d":true,"v":1,"b":"y"}', "node name"),
        (b'{"n":"x","d":true,"v":true,"b":"y"}', "an integer"),
    ]:
        with pytest.raises(EnvelopeError, match=why):
            drain.decode(bad)


def test_bundles_round_trip_and_refuse_truncation() -> None:
    blobs = [b"one", b"two" * 100]
    assert drain.decode_bundle(drain.encode_bundle(blobs)) == blobs
    assert drain.decode_bundle(b"") == []
    body = drain.encode_bundle(blobs)
    for cut in (body[:2], body[:-1], b"\x00\x00\x00\x00"):
        with pytest.raises(EnvelopeError):
            drain.decode_bundle(cut)


def test_the_store_keeps_only_the_newer_record(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        drain_records.save(store, R(version=10), b"a")
        drain_records.save(store, R(draining=False, version=9), b"old")
        assert drain_records.load(store) == [(R(version=10), b"a")]
        drain_records.save(store, R(draining=False, version=11), b"b")
        drain_records.save(store, R(node="n3"), b"c")
        assert drain_records.load(store) == [
            (R(draining=False, version=11), b"b"),
            (R(node="n3"), b"c"),
        ]


def _core() -> Auctioneer:
    return Auctioneer(config.sim().auction, "n2", CAP, random.Random(1), T0, LOG)


def test_a_drained_bidder_bids_nothing_and_says_why_until_undrained() -> None:
    core = _core()
    core.set_maintenance("draining: for maintenance")
    req = BidRequest("r1", "w1", None, Resources(1, GiB, 0), 0.25)
    [*_, send] = core.receive(req, "n1", T0)
    assert send.msg.score == -1 and send.msg.reason == "draining: for maintenance"
    assert core.ledger().holds == {}  # no hold placed for a refusal
    core.set_maintenance(None)
    [*_, send] = core.receive(BidRequest("r2", "w1", None, Resources(1, GiB, 0), 0.25), "n1", T0)
    assert send.msg.score > 0


def test_a_node_drained_after_it_bid_refuses_the_award() -> None:
    """The drain can arrive between the bid and the award: the award is refused."""
    book = _core()._book
    req = BidRequest("r1", "w1", None, Resources(1, GiB, 0), 0.25)
    assert book.bid(req, "n1", T0, []).score > 0
    book.maintenance = "draining: for maintenance"
    w = workload("w1", resources=Resources(1, GiB, 0))
    why = book.accept_award("r1", w, 1, "n1", None, T0, [])
    assert why == "draining: for maintenance"
    assert "w1" not in book.allocs
