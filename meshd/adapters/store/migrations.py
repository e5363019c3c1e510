"""Numbered schema migrations for the node store.

The schema version lives in ``PRAGMA user_version``. :func:`apply` (run by
``Store.open``) applies every migration newer than the file's version, each in its own
``BEGIN IMMEDIATE`` transaction that also bumps ``user_version``, so a crash part way
leaves the file at the previous version with none of the half-applied DDL.

Rules for adding a migration:

* Append; never edit or renumber a released one (a node may already have run it).
* Versions are 1..N with no gaps (a unit test checks).
* SQL only: no Python callbacks, so a migration is the same on every node.
* Tables are ``STRICT`` so a wrong Python type fails at the write, not at a later read.

No foreign keys tie the mesh tables together: records arrive from peers in any order
(a bid before its round is known here, a placement before its workload), and
rejecting them would lose data. The modules that own the tables keep the relations.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from meshd.errors import StoreError


class Schema(Protocol):
    """What migrating needs of a store (``meshd.adapters.store.db.Store`` is one); named by
    shape so the store can apply migrations without the two importing each other."""

    @property
    def path(self) -> Path: ...

    @property
    def schema_version(self) -> int: ...

    def transaction(self, durable: bool = True) -> AbstractContextManager[Any]: ...

    def execute(self, sql: str) -> None: ...


logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: after it commits, ``user_version`` equals ``version``."""

    version: int
    name: str
    sql: str


_INITIAL = """
CREATE TABLE meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- Every node ever enrolled; a revoked node keeps its row with removed_at set, so a
-- name can't be silently reused by a different key.
CREATE TABLE roster (
    name        TEXT NOT NULL PRIMARY KEY,
    node_id     TEXT NOT NULL UNIQUE,
    cert_pem    TEXT NOT NULL,
    role        TEXT NOT NULL,
    address     TEXT,
    enrolled_at REAL NOT NULL,
    removed_at  REAL
) STRICT;

-- Join tokens issued here. used_at/used_by are set together, exactly once, by
-- meshd.adapters.store.tokens.consume_token.
CREATE TABLE tokens (
    id         TEXT NOT NULL PRIMARY KEY,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    created_by TEXT NOT NULL,
    seeds      TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(seeds)),
    used_at    REAL,
    used_by    TEXT,
    CHECK ((used_at IS NULL) = (used_by IS NULL))
) STRICT;

-- record is the CA-signed revocation exactly as received, so it can be re-gossiped.
CREATE TABLE revocations (
    serial     TEXT NOT NULL PRIMARY KEY,
    name       TEXT NOT NULL,
    node_id    TEXT,
    revoked_at REAL NOT NULL,
    record     BLOB NOT NULL
) STRICT;
CREATE INDEX revocations_name ON revocations (name);
CREATE INDEX revocations_node_id ON revocations (node_id);

CREATE TABLE workloads (
    id         TEXT NOT NULL PRIMARY KEY,
    name       TEXT NOT NULL,
    tenant     TEXT,
    idem_key   TEXT UNIQUE,
    spec       TEXT NOT NULL CHECK (json_valid(spec)),
    owner      TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    state      TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
) STRICT;
CREATE INDEX workloads_owner ON workloads (owner);

-- One row per (workload, generation): the history of who was told to run it.
CREATE TABLE placements (
    workload_id TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    owner       TEXT NOT NULL,
    round_id    TEXT,
    originator  TEXT,
    decided_at  REAL NOT NULL,
    record      BLOB,
    PRIMARY KEY (workload_id, generation)
) STRICT;

-- Resources this node promised in a bid; released when the round closes or the hold
-- expires (hence the index: the sweeper scans by expiry).
CREATE TABLE holds (
    round_id    TEXT NOT NULL PRIMARY KEY,
    workload_id TEXT NOT NULL,
    cpus        REAL NOT NULL,
    memory      INTEGER NOT NULL,
    disk        INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL
) STRICT;
CREATE INDEX holds_expires_at ON holds (expires_at);

CREATE TABLE auction_rounds (
    id          TEXT NOT NULL PRIMARY KEY,
    workload_id TEXT NOT NULL,
    originator  TEXT NOT NULL,
    started_at  REAL NOT NULL,
    closed_at   REAL,
    winner      TEXT,
    outcome     TEXT,
    reason      TEXT
) STRICT;
CREATE INDEX auction_rounds_workload_id ON auction_rounds (workload_id);

CREATE TABLE bids (
    round_id    TEXT NOT NULL,
    node        TEXT NOT NULL,
    score       INTEGER NOT NULL,
    reason      TEXT,
    received_at REAL NOT NULL,
    PRIMARY KEY (round_id, node)
) STRICT;

CREATE TABLE fence_records (
    node        TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    state       TEXT NOT NULL,
    coordinator TEXT,
    votes       TEXT CHECK (votes IS NULL OR json_valid(votes)),
    evidence    TEXT CHECK (evidence IS NULL OR json_valid(evidence)),
    decided_at  REAL,
    PRIMARY KEY (node, epoch)
) STRICT;

CREATE TABLE services (
    name         TEXT NOT NULL PRIMARY KEY,
    port         INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    proto        TEXT NOT NULL CHECK (proto IN ('tcp', 'udp')),
    published_at REAL
) STRICT;

-- AUTOINCREMENT so an id is never reused after the newest rows are pruned: readers
-- page with "since_id" and must not see a new event under an old id.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      REAL NOT NULL,
    kind    TEXT NOT NULL,
    subject TEXT,
    data    TEXT CHECK (data IS NULL OR json_valid(data))
) STRICT;
"""

# The auction core persists typed records (meshd.core.auction.durable) that the shell stores
# as JSON blobs keyed by (kind, key) and folds back into its state on restart; the
# per-field tables of the first schema were never written and are replaced.
_AUCTION_RECORDS = """
DROP TABLE placements;
DROP TABLE holds;
DROP TABLE auction_rounds;
DROP TABLE bids;
CREATE TABLE auction_records (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    data       BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (kind, key)
) STRICT;
"""

# Round records are pruned oldest first (meshd.adapters.store.auction_records.prune_rounds).
_AUCTION_RECORDS_BY_AGE = """
CREATE INDEX auction_records_by_age ON auction_records (kind, updated_at);
"""

# Sealing key epochs made by node removals (meshd.identity.mesh_key); secret, like
# the identity directory's mesh.secret.
_MESH_KEYS = """
CREATE TABLE mesh_keys (
    key_id       TEXT PRIMARY KEY,
    epoch        INTEGER NOT NULL,
    installed_at REAL NOT NULL,
    record       BLOB NOT NULL
) STRICT;
"""

# The write probe (meshd.adapters.store.probe): one row, rewritten by every probe, so
# "the store can write" is tested by a real fsynced transaction, not assumed.
_WRITE_PROBE = """
CREATE TABLE write_probe (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    at  REAL NOT NULL,
    seq INTEGER NOT NULL
) STRICT;
"""

# The fencing core's promises and decisions (meshd.core.fencing.records), in the order
# they were made: grants, ballots, decisions, outcomes; folded at start-up. (The initial
# schema's fence_records table, made before the core existed, stays unused.)
_FENCE_LOG = """
CREATE TABLE fence_log (
    id   INTEGER PRIMARY KEY,
    at   REAL NOT NULL,
    body BLOB NOT NULL
) STRICT;
"""

# Maintenance drains (meshd.core.drain): the newest signed record per member, as
# accepted from the operator or a peer; every node keeps every member's.
_DRAINS = """
CREATE TABLE drains (
    node     TEXT PRIMARY KEY,
    draining INTEGER NOT NULL,
    version  INTEGER NOT NULL,
    by       TEXT NOT NULL,
    signed   BLOB NOT NULL
) STRICT;
"""

# Networks (meshd.core.network): the newest signed record per network name, tombstones
# (removed = 1) included, so a removal is not undone by an old definition arriving late.
_NETWORKS = """
CREATE TABLE networks (
    name     TEXT PRIMARY KEY,
    removed  INTEGER NOT NULL,
    version  INTEGER NOT NULL,
    by       TEXT NOT NULL,
    body     BLOB NOT NULL,
    signed   BLOB NOT NULL
) STRICT;
"""

_ADDRESSES = """
CREATE TABLE address_grants (
    address    TEXT PRIMARY KEY,
    network    TEXT NOT NULL,
    holder     TEXT NOT NULL,
    granted_at REAL NOT NULL
) STRICT;
CREATE INDEX address_grants_by_holder ON address_grants (holder);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _INITIAL),
    Migration(2, "auction records", _AUCTION_RECORDS),
    Migration(3, "auction records by age", _AUCTION_RECORDS_BY_AGE),
    Migration(4, "write probe", _WRITE_PROBE),
    Migration(5, "mesh keys", _MESH_KEYS),
    Migration(6, "fence log", _FENCE_LOG),
    Migration(7, "drains", _DRAINS),
    Migration(8, "networks", _NETWORKS),
    Migration(9, "address grants", _ADDRESSES),
)

SCHEMA_VERSION: int = MIGRATIONS[-1].version
"""The newest schema this code knows; a file with a higher user_version is refused."""


def apply(store: Schema, steps: Sequence[Migration] | None = None) -> None:
    """Bring ``store`` up to the last of ``steps`` (default: :data:`MIGRATIONS`).

    Refuses a file newer than the code: running old code on a new schema could write
    rows the new code misreads.
    """
    steps = MIGRATIONS if steps is None else steps
    latest = steps[-1].version if steps else 0
    current = store.schema_version
    _refuse_newer(store, current, latest)
    for step in steps:
        if step.version <= current:
            continue
        with store.transaction(durable=True):
            # Another process (the daemon and a CLI command starting together) may
            # have applied this step while we waited for the write lock.
            current = store.schema_version
            _refuse_newer(store, current, latest)
            if step.version <= current:
                continue
            try:
                store.execute(step.sql)
                store.execute(f"PRAGMA user_version = {int(step.version)}")
            except StoreError as exc:
                raise StoreError(f"migration {step.version} ({step.name}) failed: {exc}") from exc
        current = step.version
        logger.info("store migrated path=%s version=%d name=%s", store.path, current, step.name)


def _refuse_newer(store: Schema, current: int, latest: int) -> None:
    if current > latest:
        raise StoreError(
            f"store schema version {current} at {store.path} is newer than this meshd "
            f"({latest}); upgrade meshd"
        )
