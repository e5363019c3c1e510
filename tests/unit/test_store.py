"""The node store: opening, migrating, transactions, accessors, tokens, errors."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from meshd.adapters.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    Store,
    claim_token,
    consume_token,
    list_tokens,
    record_token,
)
from meshd.adapters.store import migrations as migrations_module
from meshd.errors import StoreError

TABLES = {
    "meta",
    "roster",
    "tokens",
    "revocations",
    "mesh_keys",
    "workloads",
    "auction_records",  # migration 2 replaced placements, holds, auction_rounds, bids
    "fence_records",
    "services",
    "events",
    "write_probe",  # migration 4: the health probe's one row
    "fence_log",  # migration 6: the fencing core's records
    "networks",  # migration 8: signed network records
    "drains",  # migration 7: maintenance drains (meshd.core.drain)
    "address_grants",  # migration 9: the address voter's grants (meshd.core.addresses)
}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "meshd.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store.open(db_path) as opened:
        yield opened


def table_names(store: Store) -> set[str]:
    rows = store.query("SELECT name FROM sqlite_schema WHERE type = 'table'")
    return {name for (name,) in rows} - {"sqlite_sequence"}


# -- migrations -------------------------------------------------------------------


def test_migration_versions_are_contiguous_from_one() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert len(MIGRATIONS) == SCHEMA_VERSION
    assert len({m.name for m in MIGRATIONS}) == len(MIGRATIONS)


def test_open_creates_directory_and_migrates(store: Store, db_path: Path) -> None:
    assert db_path.is_file()
    assert store.schema_version == SCHEMA_VERSION
    assert table_names(store) == TABLES
    assert store.scalar("PRAGMA journal_mode") == "wal"
    assert store.scalar("PRAGMA foreign_keys") == 1
    assert store.scalar("PRAGMA synchronous") == 2  # FULL


def test_tables_are_strict(store: Store) -> None:
    rows = store.query_dicts("PRAGMA table_list")
    strict = {row["name"]: row["strict"] for row in rows if row["name"] in TABLES}
    assert strict == dict.fromkeys(TABLES, 1)


def test_reopen_is_idempotent_and_keeps_data(db_path: Path) -> None:
    with Store.open(db_path) as first:
        first.set_meta("mesh", "alpha")
        schema = first.query("SELECT sql FROM sqlite_schema ORDER BY name")
    with Store.open(db_path) as second:
        assert second.schema_version == SCHEMA_VERSION
        assert second.get_meta("mesh") == "alpha"
        assert second.query("SELECT sql FROM sqlite_schema ORDER BY name") == schema


def test_newer_schema_is_refused(db_path: Path) -> None:
    Store.open(db_path).close()
    conn = apsw.Connection(str(db_path))
    conn.pragma("user_version", SCHEMA_VERSION + 2)
    conn.close()
    expected = (
        f"store schema version {SCHEMA_VERSION + 2} at {db_path} is newer than this "
        f"meshd \\({SCHEMA_VERSION}\\); upgrade meshd"
    )
    with pytest.raises(StoreError, match=expected):
        Store.open(db_path)


def test_failed_migration_leaves_previous_version_intact(store: Store) -> None:
    good = Migration(SCHEMA_VERSION + 1, "add widgets", "CREATE TABLE widgets (id TEXT) STRICT;")
    bad = Migration(
        SCHEMA_VERSION + 2,
        "half broken",
        "CREATE TABLE gadgets (id TEXT) STRICT; INSERT INTO no_such_table VALUES (1);",
    )
    with pytest.raises(StoreError, match=r"migration \d+ \(half broken\) failed"):
        migrations_module.apply(store, (*MIGRATIONS, good, bad))
    assert store.schema_version == SCHEMA_VERSION + 1
    assert table_names(store) == TABLES | {"widgets"}


# -- files and errors -------------------------------------------------------------


def test_files_are_private(store: Store, db_path: Path) -> None:
    store.set_meta("k", "v")
    for name in ("meshd.db", "meshd.db-wal", "meshd.db-shm"):
        mode = stat.S_IMODE(os.stat(db_path.with_name(name)).st_mode)
        assert mode == 0o600, f"{name} has mode {mode:o}"
    assert stat.S_IMODE(os.stat(db_path.parent).st_mode) == 0o700


def test_parent_is_a_file_gives_readable_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match=r"can't create the data directory .*blocker") as info:
        Store.open(blocker / "meshd.db")
    assert "Traceback" not in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory this process can't create files in, even as root."""
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o500)
        try:
            yield locked
        finally:
            locked.chmod(0o700)
        return
    # Root ignores permission bits; the immutable attribute stops root too.
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("running as root and chattr (e2fsprogs) is not installed")
    marked = subprocess.run([chattr, "+i", str(locked)], check=False, capture_output=True)
    if marked.returncode != 0:
        pytest.skip(f"running as root and chattr +i failed: {marked.stderr!r}")
    try:
        yield locked
    finally:
        subprocess.run([chattr, "-i", str(locked)], check=True)


def test_unwritable_directory_gives_readable_error(unwritable_dir: Path) -> None:
    path = unwritable_dir / "meshd.db"
    with pytest.raises(StoreError) as info:
        Store.open(path)
    message = str(info.value)
    assert message.startswith(f"can't open the store at {path}: ")
    assert message.endswith("; check the data directory exists and is writable")
    assert "\n" not in message


def test_not_a_database_gives_readable_error(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not sqlite " * 300)
    with pytest.raises(StoreError, match=r"can't open the store at .*not a meshd store"):
        Store.open(db_path)


def test_constraint_violation_is_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match=r"CHECK constraint failed") as info:
        store.execute("INSERT INTO services VALUES ('dns', 53, 'sctp', NULL)")
    assert isinstance(info.value.__cause__, apsw.ConstraintError)


def test_lock_held_by_another_connection_times_out(db_path: Path) -> None:
    with Store.open(db_path) as holder, Store.open(db_path, busy_timeout_ms=50) as waiter:
        with holder.transaction(), pytest.raises(StoreError, match="another process"):
            waiter.set_meta("k", "v")
        waiter.set_meta("k", "v")  # the lock is free again
        assert holder.get_meta("k") == "v"


# -- transactions -----------------------------------------------------------------


def test_transaction_commits(store: Store) -> None:
    with store.transaction() as tx:
        tx.set_meta("a", "1")
        tx.set_meta("b", "2")
    assert store.query("SELECT key, value FROM meta ORDER BY key") == [("a", "1"), ("b", "2")]


def test_transaction_rolls_back_and_reraises(store: Store) -> None:
    store.set_meta("a", "before")
    with pytest.raises(ValueError, match="boom"), store.transaction():
        store.set_meta("a", "during")
        store.append_event(1.0, "test", "x", {})
        raise ValueError("boom")
    assert store.get_meta("a") == "before"
    assert store.events() == []
    with store.transaction():  # usable again afterwards
        store.set_meta("a", "after")
    assert store.get_meta("a") == "after"


def test_nested_transaction_is_a_programming_error(store: Store) -> None:
    with (
        store.transaction(),
        pytest.raises(RuntimeError, match="does not nest"),
        store.transaction(),
    ):
        pass
    assert store.scalar("SELECT 1") == 1


@pytest.mark.parametrize("durable", [True, False])
def test_synchronous_follows_durability(store: Store, durable: bool) -> None:
    with store.transaction(durable=durable):
        inside = store.scalar("PRAGMA synchronous")
    assert inside == (2 if durable else 1)
    store.set_meta("k", "v")  # autocommit writes are always durable
    assert store.scalar("PRAGMA synchronous") == 2


# -- helpers ----------------------------------------------------------------------


def test_query_helpers(store: Store) -> None:
    store.execute("INSERT INTO meta VALUES (:k, :v)", {"k": "x", "v": "1"})
    assert store.query("SELECT key, value FROM meta") == [("x", "1")]
    assert store.query_one("SELECT key FROM meta WHERE key = ?", ("x",)) == ("x",)
    assert store.query_one("SELECT key FROM meta WHERE key = ?", ("nope",)) is None
    assert store.scalar("SELECT count(*) FROM meta") == 1
    assert store.scalar("SELECT value FROM meta WHERE key = 'nope'") is None
    assert store.query_dicts("SELECT key AS k, value FROM meta") == [{"k": "x", "value": "1"}]
    assert store.query_dicts("SELECT key FROM meta WHERE key = 'nope'") == []


def test_meta_round_trip(store: Store) -> None:
    assert store.get_meta("node_name") is None
    store.set_meta("node_name", "blade-1")
    store.set_meta("node_name", "blade-2")
    assert store.get_meta("node_name") == "blade-2"


def test_events_round_trip(store: Store) -> None:
    ids = [store.append_event(100.0 + i, "member.up", f"n{i}", {"i": i}) for i in range(5)]
    assert ids == sorted(ids)
    events = store.events()
    assert [e["id"] for e in events] == ids
    assert events[0] == {
        "id": ids[0],
        "ts": 100.0,
        "kind": "member.up",
        "subject": "n0",
        "data": {"i": 0},
    }
    assert [e["subject"] for e in store.events(limit=2, since_id=ids[1])] == ["n2", "n3"]
    assert store.events(since_id=ids[-1]) == []


# -- tokens -----------------------------------------------------------------------


def test_tokens_record_and_list(store: Store) -> None:
    record_token(store, "t1", 10.0, 70.0, "blade-1", ["10.0.0.1:7946", "10.0.0.2:7946"])
    [token] = list_tokens(store)
    assert token == {
        "id": "t1",
        "created_at": 10.0,
        "expires_at": 70.0,
        "created_by": "blade-1",
        "seeds": ["10.0.0.1:7946", "10.0.0.2:7946"],
        "used_at": None,
        "used_by": None,
    }
    with pytest.raises(StoreError):
        record_token(store, "t1", 10.0, 70.0, "blade-1", [])


def test_consume_token_outcomes(store: Store) -> None:
    record_token(store, "t1", 0.0, 60.0, "blade-1", [])
    record_token(store, "t2", 0.0, 60.0, "blade-1", [])
    assert consume_token(store, "nope", 1.0, "blade-9") == "unknown"
    assert consume_token(store, "t2", 60.0, "blade-9") == "expired"  # expiry is exclusive
    assert consume_token(store, "t1", 59.0, "blade-2") == "ok"
    assert consume_token(store, "t1", 59.5, "blade-3") == "used"
    assert consume_token(store, "t1", 99.0, "blade-3") == "used"
    used = {t["id"]: t for t in list_tokens(store)}["t1"]
    assert (used["used_at"], used["used_by"]) == (59.0, "blade-2")


def test_claim_token_joins_the_callers_transaction(store: Store) -> None:
    record_token(store, "t1", 0.0, 60.0, "blade-1", [])
    with pytest.raises(RuntimeError, match=r"inside Store\.transaction"):
        claim_token(store, "t1", 1.0, "blade-2")
    # A refusal later in the same transaction (say, the name is taken) frees the token.
    with pytest.raises(StoreError), store.transaction():
        assert store.in_transaction
        assert claim_token(store, "t1", 1.0, "blade-2") == "ok"
        store.execute("INSERT INTO services VALUES ('dns', 0, 'udp', NULL)")
    assert not store.in_transaction
    assert consume_token(store, "t1", 2.0, "blade-3") == "ok"


def test_consume_token_concurrently_only_one_wins(db_path: Path) -> None:
    rounds, racers = 20, 4
    with Store.open(db_path) as setup:
        for r in range(rounds):
            record_token(setup, f"t{r}", 0.0, 1e12, "blade-1", [])
    stores = [Store.open(db_path) for _ in range(racers)]
    barrier = threading.Barrier(racers)
    results: list[list[str]] = [[] for _ in range(racers)]

    def race(i: int) -> None:
        for r in range(rounds):
            barrier.wait()
            results[i].append(consume_token(stores[i], f"t{r}", 1.0, f"racer-{i}"))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for s in stores:
            s.close()
    for r in range(rounds):
        outcomes = sorted(results[i][r] for i in range(racers))
        assert outcomes == ["ok"] + ["used"] * (racers - 1), f"round {r}: {outcomes}"


def test_the_event_log_is_pruned_by_count_and_age(store: Store) -> None:
    for i in range(10):
        store.append_event(1000.0 + i, "test.event", f"s{i}", {})
    assert store.prune_events(keep=6, before=0.0) == 4
    assert [e["subject"] for e in store.events(limit=100)] == [f"s{i}" for i in range(4, 10)]
    assert store.prune_events(keep=100, before=1007.0) == 3  # s4, s5, s6 are too old
    assert [e["subject"] for e in store.events(limit=100)] == ["s7", "s8", "s9"]
    since = store.events(limit=100)[-1]["id"]
    store.append_event(2000.0, "test.event", "s10", {})
    # Ids are never reused, so a reader's cursor still finds what came after it.
    assert [e["subject"] for e in store.events(since_id=since)] == ["s10"]
    assert store.prune_events(keep=100, before=0.0) == 0
