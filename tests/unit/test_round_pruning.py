"""Pruning stored round records: the newest stay, old final ones go, and the
generations they awarded stay spent (floors), across a restart."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd import config
from meshd.adapters.store import auction_records
from meshd.adapters.store.db import Store
from meshd.core.auction import Auctioneer, Capacity, Decided, Send
from meshd.core.auction.durable import FloorRecorded, PlacementRecorded, RoundRecorded
from meshd.core.auction.model import (
    DECIDED,
    FAILED,
    AwardRecord,
    GiB,
    Resources,
    RoundRecord,
)
from tests.factories import placement, workload

RES = Resources(1.0, GiB, 0)
LOG = logging.getLogger("test.pruning")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "meshd.db")
    yield s
    s.close()


def rnd(i: int, wid: str, state: str = DECIDED, gens: tuple[int, ...] = (1,)) -> RoundRecorded:
    awards = tuple(AwardRecord(f"n{g}", g, "silent") for g in gens)
    rec = RoundRecord(
        f"n1-{i:012x}", f"n1-{i:012x}", 1, workload(wid, resources=RES), "n1", float(i),
        ("n2",), (), awards, state,
    )  # fmt: skip
    return RoundRecorded(rec)


def put(store: Store, records: list[object], at: float) -> None:
    with store.transaction():
        auction_records.write(store, records, at)  # type: ignore[arg-type]


def test_the_newest_rounds_stay_and_old_final_ones_go(store: Store) -> None:
    for i in range(10):
        put(store, [rnd(i, f"w{i}")], float(i))
    put(store, [rnd(10, "w10", state="collecting")], -1.0)  # old, but still running
    pruned = auction_records.prune_rounds(store, 4, 100, lambda wid: 1, 99.0)
    assert pruned == 6
    left = auction_records.load(store).rounds
    assert sorted(r.workload_id for r in left.values()) == ["w10", "w6", "w7", "w8", "w9"]


def test_a_batch_limit_bounds_one_pass(store: Store) -> None:
    for i in range(10):
        put(store, [rnd(i, f"w{i}")], float(i))
    assert auction_records.prune_rounds(store, 2, 3, lambda wid: 1, 99.0) == 3
    assert auction_records.prune_rounds(store, 2, 100, lambda wid: 1, 99.0) == 5
    assert len(auction_records.load(store).rounds) == 2


def test_awarded_generations_above_the_view_leave_a_floor(store: Store) -> None:
    placed = {"a": 3, "b": 1}
    put(store, [rnd(1, "a", gens=(2, 3))], 1.0)  # the view holds 3: nothing to keep
    put(store, [rnd(2, "b", FAILED, gens=(2, 3))], 2.0)  # withdrawn awards above 1
    put(store, [rnd(3, "c", FAILED, gens=(1,))], 3.0)  # never placed
    put(store, [rnd(4, "b", FAILED, gens=(2,))], 4.0)  # lower than b's floor to be
    auction_records.prune_rounds(store, 0, 100, lambda wid: placed.get(wid, 0), 9.0)
    state = auction_records.load(store)
    assert state.rounds == {}
    assert state.floors == {"b": 3, "c": 1}
    # A later pass never lowers a floor.
    put(store, [rnd(5, "b", FAILED, gens=(2,))], 10.0)
    auction_records.prune_rounds(store, 0, 100, lambda wid: placed.get(wid, 0), 11.0)
    assert auction_records.load(store).floors == {"b": 3, "c": 1}


def test_a_restarted_originator_never_reuses_a_pruned_generation(store: Store) -> None:
    cfg = config.sim().auction
    cap = Capacity(8.0, 16 * GiB, 100 * GiB)
    p = placement("b", "b", "n2", 1, "n1-000000000001", "n1", 1.0, RES, None)
    put(store, [PlacementRecorded(p), rnd(2, "b", FAILED, gens=(2, 3))], 2.0)
    auction_records.prune_rounds(store, 0, 100, lambda wid: 1, 9.0)
    assert auction_records.load(store).floors == {"b": 3}
    core = Auctioneer.restore(
        cfg, "n1", cap, random.Random(1), 10.0, LOG, auction_records.load(store)
    )
    w = workload("b", resources=RES)
    _, effects = core.submit(w, ["n1"], 10.0, supersede=True)
    [decided] = [e for e in effects if isinstance(e, Decided)]
    assert decided.placement.generation == 4
    assert not [e for e in effects if isinstance(e, Send)]


def test_floor_records_fold_to_the_highest(store: Store) -> None:
    put(store, [FloorRecorded("x", 5)], 1.0)
    assert auction_records.load(store).floors == {"x": 5}


def test_load_counts_the_records_it_could_not_read(store: Store) -> None:
    """The runner reaps what no allocation names only when every record was read back:
    an unreadable row (a bug, a damaged disk) must not look like a release."""
    put(store, [rnd(1, "a")], 1.0)
    assert auction_records.load(store).unreadable == 0
    with store.transaction():
        store.execute(
            "INSERT INTO auction_records (kind, key, data, updated_at) VALUES (?, ?, ?, ?)",
            ("alloc", "w-broken", b"{not json", 2.0),
        )
    state = auction_records.load(store)
    assert state.unreadable == 1
    assert "a" in {r.workload_id for r in state.rounds.values()}
