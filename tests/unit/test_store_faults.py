"""The store under injected write faults (tests/faults/store.py), and the write probe."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.adapters.store import probe
from meshd.adapters.store.db import Store
from meshd.errors import StoreError
from tests.faults import store as store_faults
from tests.faults.store import Fault


@pytest.fixture
def faulty(tmp_path: Path) -> tuple[Store, store_faults.WritePlan]:
    faults = store_faults.install()
    path = tmp_path / "meshd.db"
    plan = faults.plan(path)
    store = Store.open(path, vfs=store_faults.VFS_NAME)
    yield store, plan
    store.close()
    faults.forget(path)


def _rows(store: Store) -> list[int]:
    return [int(r[0]) for r in store.query("SELECT value FROM meta WHERE key LIKE 'k%'")]


def test_the_nth_write_fails_once_and_leaves_nothing(
    faulty: tuple[Store, store_faults.WritePlan],
) -> None:
    store, plan = faulty
    plan.fail_at(2)
    store.set_meta("k1", "1")
    with pytest.raises(StoreError, match=r"full.*free some disk space"), store.transaction():
        store.execute("INSERT INTO meta (key, value) VALUES ('k2', '2')")
        store.execute("INSERT INTO meta (key, value) VALUES ('k3', '3')")
    assert not store.in_transaction
    store.set_meta("k4", "4")
    assert sorted(_rows(store)) == [1, 4]
    assert plan.failures == 1
    assert [failed for _, failed in plan.log[-3:]] == [False, True, False]


@pytest.mark.parametrize(
    ("kind", "advice"),
    [
        (Fault.FULL, "free some disk space"),
        (Fault.IOERR, "check the disk"),
        (Fault.READONLY, "writable"),
    ],
)
def test_every_write_fails_until_healed(
    faulty: tuple[Store, store_faults.WritePlan], kind: Fault, advice: str
) -> None:
    store, plan = faulty
    plan.fail_from(1, kind)
    for i in range(3):
        with pytest.raises(StoreError, match=advice):
            store.set_meta(f"k{i}", str(i))
    assert store.get_meta("k0") is None  # reads still work
    plan.heal()
    store.set_meta("k9", "9")
    assert _rows(store) == [9]


def test_data_written_before_a_fault_survives_a_reopen(tmp_path: Path) -> None:
    faults = store_faults.install()
    path = tmp_path / "meshd.db"
    plan = faults.plan(path)
    try:
        with Store.open(path, vfs=store_faults.VFS_NAME) as store:
            store.set_meta("k1", "1")
            plan.fail_from(1)
            with pytest.raises(StoreError):
                store.set_meta("k2", "2")
        with Store.open(path) as store:  # the plain VFS: what is really on disk
            assert _rows(store) == [1]
    finally:
        faults.forget(path)


def test_the_probe_writes(faulty: tuple[Store, store_faults.WritePlan]) -> None:
    store, plan = faulty
    before = plan.writes
    probe.probe(store, 1, 1.0)
    probe.probe(store, 1, 2.0)
    assert plan.writes == before + 2
    assert store.query("SELECT at, seq FROM write_probe") == [(2.0, 2)]
    plan.fail_from(1, Fault.READONLY)
    with pytest.raises(StoreError, match="writable"):
        probe.probe(store, 1, 3.0)


def test_the_probe_refuses_a_disk_below_the_reserve(
    faulty: tuple[Store, store_faults.WritePlan],
) -> None:
    store, _ = faulty
    with pytest.raises(StoreError, match=r"free, below store.reserve_bytes"):
        probe.probe(store, 2**62, 1.0)
