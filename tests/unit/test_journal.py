"""The placement shell's journal: promises at once, knowledge a moment later, in order."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshd.adapters.store import auction_records
from meshd.adapters.store.db import Store
from meshd.core.auction.durable import (
    AllocationCommitted,
    BidRecorded,
    HoldPlaced,
    HoldReleased,
    PlacementRecorded,
    RoundRecorded,
)
from meshd.core.auction.model import (
    AWARDING,
    COLLECTING,
    Allocation,
    BidRecord,
    Hold,
    Resources,
    RoundRecord,
)
from meshd.errors import StoreError
from meshd.shell.journal import AuctionJournal
from tests.factories import placement, workload

RES = Resources(1.0, 1 << 20, 0)
LAG = 0.05


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "meshd.db")
    yield s
    s.close()


def hold(rid: str) -> HoldPlaced:
    return HoldPlaced(Hold(rid, "w1", RES, None, "n1", 1e12))


def placed(wid: str, gen: int) -> PlacementRecorded:
    return PlacementRecorded(placement(wid, wid, "n2", gen, f"r-{wid}", "n1", 10.0, RES, None))


def committed(wid: str) -> AllocationCommitted:
    w = workload(wid, resources=RES, driver="process")
    return AllocationCommitted(Allocation(w, f"r-{wid}", 1, "n1", 10.0))


def events(store: Store) -> list[str]:
    return [e["subject"] for e in store.events(limit=100) if e["kind"] == "placement.recorded"]


async def test_knowledge_reaches_the_store_after_the_lag(store: Store) -> None:
    journal = AuctionJournal(store, LAG)
    journal.write([hold("r1"), placed("w1", 1)], 100.0)
    assert auction_records.load(store).holds == {}
    assert events(store) == []
    await asyncio.sleep(LAG * 3)
    state = auction_records.load(store)
    assert set(state.holds) == {"r1"} and set(state.placements) == {"w1"}
    assert events(store) == ["w1"]


async def test_a_promise_is_written_at_once_behind_what_was_pending(store: Store) -> None:
    journal = AuctionJournal(store, 10.0)
    journal.write([hold("r1")], 100.0)
    journal.write([HoldReleased("r1", "committed")], 100.0)
    journal.write([committed("w1")], 100.0)
    state = auction_records.load(store)
    assert set(state.allocations) == {"w1"}
    assert state.holds == {}  # placed, then released: applied in order before the promise


async def test_a_newer_generation_is_never_overwritten_by_an_older_one(store: Store) -> None:
    journal = AuctionJournal(store, 10.0)
    journal.write([placed("w1", 1)], 100.0)
    journal.write([placed("w1", 2)], 100.0)
    journal.flush(100.0)
    assert auction_records.load(store).placements["w1"].generation == 2


async def test_flush_writes_what_is_pending_and_a_failed_write_keeps_it(store: Store) -> None:
    journal = AuctionJournal(store, 10.0)
    journal.write([placed("w1", 1)], 100.0)
    store.execute("ALTER TABLE auction_records RENAME TO parked")  # writes now fail
    with pytest.raises(StoreError):
        journal.flush(100.0)
    store.execute("ALTER TABLE parked RENAME TO auction_records")
    journal.flush(100.0)  # nothing was dropped from memory by the failure
    assert set(auction_records.load(store).placements) == {"w1"}
    assert events(store) == ["w1"]


async def test_a_released_hold_takes_its_bid_with_it(store: Store) -> None:
    """The bid behind a hold is kept only as long as the hold: the table does not grow."""
    journal = AuctionJournal(store, 10.0)
    bid = BidRecord("n2", 500, "", 0, 1 << 30, 0, 100.0)
    journal.write([hold("r1"), BidRecorded("r1", "n1", "w1", bid)], 100.0)
    journal.flush(100.0)
    assert set(auction_records.load(store).bids) == {"r1"}
    journal.write([HoldReleased("r1", "placed on n3")], 101.0)
    journal.flush(101.0)
    assert store.query("SELECT kind, key FROM auction_records") == []


def _rows(store: Store) -> list[tuple[str, str]]:
    return [(str(k), str(key)) for k, key in store.query("SELECT kind, key FROM auction_records")]


def bid(rid: str) -> BidRecorded:
    return BidRecorded(rid, "n1", "w1", BidRecord("n2", 500, "", 0, 1 << 20, 0, 10.0))


async def test_a_hold_placed_and_released_in_one_group_never_touches_the_disk(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = AuctionJournal(store, 10.0)
    statements: list[tuple[str, Any]] = []
    execute = store.execute
    monkeypatch.setattr(
        store, "execute", lambda sql, args=(): statements.append((sql, args)) or execute(sql, args)
    )
    journal.write([hold("r1"), bid("r1"), hold("r2"), bid("r2")], 100.0)
    journal.write([HoldReleased("r1", "placed elsewhere"), placed("w1", 1)], 100.0)
    journal.flush(100.0)
    assert sorted(_rows(store)) == [("bid", "r2"), ("hold", "r2"), ("placement", "w1")]
    assert not any("r1" in args for _, args in statements)
    # r2 is on disk now: its release deletes it and its bid, even from a new journal.
    journal.write([HoldReleased("r2", "expired")], 100.0)
    journal.flush(100.0)
    assert _rows(store) == [("placement", "w1")]
    journal.write([hold("r3"), bid("r3")], 100.0)
    journal.flush(100.0)
    restarted = AuctionJournal(store, 10.0)
    restarted.write([HoldReleased("r3", "expired")], 100.0)
    restarted.flush(100.0)
    assert _rows(store) == [("placement", "w1")]
    assert auction_records.load(store).holds == {}


async def test_allocations_and_a_round_that_awards_are_fsynced_knowledge_is_not(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a power cut must not take: an allocation, and the generation an originator
    handed out (else it could award that generation again to another node)."""
    fsynced: list[bool] = []
    real = store.transaction

    def spy(*, durable: bool = False) -> Any:
        fsynced.append(durable)
        return real(durable=durable)

    monkeypatch.setattr(store, "transaction", spy)
    w = workload("w9", resources=RES, driver="process")
    awarding = RoundRecord("r9", "a9", 1, w, "n1", 10.0, ("n2",), state=AWARDING, generation=1)
    collecting = dataclasses.replace(awarding, state=COLLECTING, generation=None)
    journal = AuctionJournal(store, LAG)
    for records, expected in (
        ([RoundRecorded(collecting)], False),
        ([RoundRecorded(awarding)], True),
        ([committed("w8")], True),
    ):
        fsynced.clear()
        journal.write(records, 100.0)
        journal.flush(100.0)
        assert any(fsynced) is expected, records
