"""The node store: one SQLite file per node, opened through apsw.

Theory of operation
-------------------
The daemon and short-lived CLI commands share one file, so the store is built for
several processes, one connection each:

* **WAL journal.** Readers never block the writer and the writer never blocks
  readers; a commit appends to the ``-wal`` file instead of rewriting pages. Measured
  on our machines it was one to two orders of magnitude faster than the rollback
  journal at the same durability (lab notes, "SQLite via apsw").
* **synchronous=FULL at commit points.** With WAL, FULL fsyncs the log on every
  commit, so a transaction that returned is on disk: the node may act on it (answer a
  bid, start a VM) and must not forget it after a power cut. NORMAL skips that fsync
  and stays consistent but may lose the last commits; ``transaction(durable=False)``
  uses it for data that can be rebuilt (events, caches). Autocommit writes through
  :meth:`Store.execute` are always durable.
* **BEGIN IMMEDIATE.** A transaction takes the write lock when it starts, not at its
  first write. A deferred transaction that reads, then writes, can fail with
  SQLITE_BUSY at the write with no retry possible (its snapshot is stale); taking the
  lock up front makes the busy timeout (``busy_timeout_ms``) the only waiting, and
  read-check-write sequences such as :func:`meshd.adapters.store.tokens.consume_token` atomic
  across processes.

apsw exceptions leave as ``StoreError``: one sentence naming the file and what to do.
A nested transaction raises ``RuntimeError`` (a bug). Use one ``Store`` per thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import apsw

from meshd.adapters.store import migrations as _migrations
from meshd.errors import StoreError

logger = logging.getLogger(__name__)

Params = Sequence[Any] | Mapping[str, Any]
"""Bindings for ``?`` (sequence) or ``:name`` (mapping) placeholders."""

_Sync = Literal["FULL", "NORMAL"]

# Most specific first: the advice for the first matching class is used.
_ADVICE: tuple[tuple[type[apsw.Error], str], ...] = (
    (apsw.CantOpenError, "check the data directory exists and is writable"),
    (apsw.PermissionsError, "check the data directory exists and is writable"),
    (apsw.ReadOnlyError, "check the data directory and the file are writable"),
    (apsw.FullError, "free some disk space and retry"),
    (apsw.IOError, "check the disk (dmesg) and free space, then retry"),
    (apsw.CorruptError, "the file is damaged; move it aside and restore a backup"),
    (apsw.NotADBError, "the file is not a meshd store; move it aside or fix the path"),
    (apsw.ConstraintError, "the record is a duplicate or breaks a rule of the schema"),
    (apsw.SQLError, "this is a bug in meshd; please report it"),
)


class Store:
    """A migrated, WAL-mode SQLite store. Create with :meth:`Store.open`."""

    def __init__(self, conn: apsw.Connection, path: Path, busy_timeout_ms: int) -> None:
        # Called (no arguments) after each event is appended: `meshd events --follow`.
        self.event_listeners: list[Callable[[], None]] = []
        self._conn = conn
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._synchronous: _Sync = "FULL"
        self._in_transaction = False
        self._closed = False

    @classmethod
    def open(cls, path: Path, *, busy_timeout_ms: int = 5000, vfs: str | None = None) -> Store:
        """Open (creating if needed) the store at ``path`` and bring its schema up to date.

        ``busy_timeout_ms`` is how long to wait for another process's write lock.
        ``vfs`` names a registered SQLite VFS to open the file through (tests inject
        disk faults with one, ``tests/faults/store.py``); None is SQLite's default.
        """
        path = Path(path)
        try:
            # 0700/0600: the store holds the roster and join tokens.
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"can't create the data directory {path.parent} for the store: "
                f"{exc.strerror or exc}; check the path, and that its parent is writable"
            ) from exc
        try:
            # Created here rather than by SQLite so it is never world-readable, not
            # even for a moment; SQLite gives -wal/-shm the same mode as this file.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
        except OSError as exc:
            raise StoreError(
                f"can't open the store at {path}: {exc.strerror or exc}; "
                "check the data directory exists and is writable"
            ) from exc
        try:
            conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE, vfs=vfs)
        except apsw.Error as exc:
            raise _translate(exc, "open", path, busy_timeout_ms) from exc
        store = cls(conn, path, busy_timeout_ms)
        try:
            store._configure()
            _migrations.apply(store)
            store._restrict_modes()
        except BaseException:
            store.close()
            raise
        return store

    @property
    def path(self) -> Path:
        return self._path

    @property
    def in_transaction(self) -> bool:
        """True inside :meth:`transaction`, for helpers that must join the caller's."""
        return self._in_transaction

    @property
    def schema_version(self) -> int:
        """``PRAGMA user_version``: the last migration applied to this file."""
        return int(self.scalar("PRAGMA user_version"))

    # -- transactions ------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, durable: bool = True) -> Iterator[Store]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; ROLLBACK and re-raise on any exception.

        ``durable=False`` commits without fsync: use it only for data the node can
        lose in a power cut without breaking a promise made to a peer.
        """
        if self._in_transaction or self._conn.in_transaction:
            raise RuntimeError("Store.transaction() is already active; it does not nest")
        # SQLite ignores a synchronous change inside a transaction, so set it first.
        self._set_synchronous("FULL" if durable else "NORMAL")
        self._run("BEGIN IMMEDIATE", (), "start a transaction on")
        self._in_transaction = True
        try:
            yield self
        except BaseException:
            self._rollback()
            raise
        else:
            try:
                self._conn.execute("COMMIT")
            except apsw.Error as exc:
                self._rollback()
                raise self._error(exc, "commit to") from exc
        finally:
            self._in_transaction = False

    # -- statements --------------------------------------------------------------

    def execute(self, sql: str, params: Params = ()) -> None:
        """Run a statement for its effect; outside a transaction it commits durably."""
        if not self._in_transaction:
            self._set_synchronous("FULL")
        self._run(sql, params, "write to")

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except apsw.Error as exc:
            raise self._error(exc, "query") from exc

    def query_one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        """The first row, or None; further rows are not read."""
        try:
            cursor = self._conn.execute(sql, params)
            row = next(cursor, None)
            cursor.close()
        except apsw.Error as exc:
            raise self._error(exc, "query") from exc
        return row

    def scalar(self, sql: str, params: Params = ()) -> Any:
        """The first column of the first row, or None when there is no row."""
        row = self.query_one(sql, params)
        return None if row is None else row[0]

    def query_dicts(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """Rows as ``{column name: value}``, names as the SELECT spells them."""
        try:
            cursor = self._conn.execute(sql, params)
            try:
                names = [column for column, _decltype in cursor.get_description()]
            except apsw.ExecutionCompleteError:
                # A statement that produced no row has already finished, and a
                # finished cursor has no description.
                return []
            return [dict(zip(names, row, strict=True)) for row in cursor]
        except apsw.Error as exc:
            raise self._error(exc, "query") from exc

    # -- meta and events ---------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        value = self.scalar("SELECT value FROM meta WHERE key = ?", (key,))
        return None if value is None else str(value)

    def set_meta(self, key: str, value: str) -> None:
        self.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def append_event(self, ts: float, kind: str, subject: str, data: dict[str, Any]) -> int:
        """Append to the event log; returns the event's id (increasing, never reused).

        Listeners (``on_event``) are told that there is news, not what: a follower reads
        the rows after its cursor once the writer's transaction is over (the loop runs
        one step at a time, so by then it committed or rolled back)."""
        self.execute(
            "INSERT INTO events (ts, kind, subject, data) VALUES (?, ?, ?, ?)",
            (ts, kind, subject, json.dumps(data, sort_keys=True, separators=(",", ":"))),
        )
        for listener in self.event_listeners:
            listener()
        return self._conn.last_insert_rowid()

    def prune_events(self, keep: int, before: float) -> int:
        """Drop all but the newest ``keep`` events and any older than ``before``.

        Ids are never reused (AUTOINCREMENT), so a reader's ``since`` cursor stays valid.
        Returns how many were dropped.
        """
        newest = self.scalar("SELECT max(id) FROM events")
        if newest is None:
            return 0
        with self.transaction(durable=False):
            self.execute("DELETE FROM events WHERE id <= ? OR ts < ?", (newest - keep, before))
            dropped: int = self._conn.changes()
        return dropped

    def events(self, limit: int = 100, since_id: int = 0) -> list[dict[str, Any]]:
        """Up to ``limit`` events with id > ``since_id``, oldest first, data decoded."""
        rows = self.query_dicts(
            "SELECT id, ts, kind, subject, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (since_id, limit),
        )
        for row in rows:
            row["data"] = None if row["data"] is None else json.loads(row["data"])
        return rows

    # -- lifetime ----------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (rolling back any open transaction). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.close()
        except apsw.Error as exc:
            raise self._error(exc, "close") from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------

    def _configure(self) -> None:
        try:
            # Before anything else: even switching to WAL may wait for another process.
            self._conn.set_busy_timeout(self._busy_timeout_ms)
            # Double-quoted string literals silently become identifiers or strings
            # depending on context; refusing them turns a typo into an error.
            self._conn.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
            self._conn.config(apsw.SQLITE_DBCONFIG_DQS_DDL, 0)
            mode = str(self._conn.pragma("journal_mode", "wal")).lower()
            self._conn.pragma("synchronous", "FULL")
            self._conn.pragma("foreign_keys", "ON")
        except apsw.Error as exc:
            raise self._error(exc, "open") from exc
        if mode != "wal":
            # Happens on filesystems without shared memory (some network mounts).
            raise StoreError(
                f"can't open the store at {self._path} in WAL mode (got {mode}); "
                "put the data directory on a local filesystem"
            )

    def _restrict_modes(self) -> None:
        # Belt and braces: a file created by an older build or by hand, and the
        # -wal/-shm sidecars, which now exist because migrating wrote to the log.
        for name in (self._path.name, self._path.name + "-wal", self._path.name + "-shm"):
            try:
                os.chmod(self._path.with_name(name), 0o600)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("store chmod failed path=%s error=%s", name, exc)

    def _set_synchronous(self, mode: _Sync) -> None:
        if mode == self._synchronous:
            return
        try:
            self._conn.pragma("synchronous", mode)
        except apsw.Error as exc:
            raise self._error(exc, "configure") from exc
        self._synchronous = mode

    def _run(self, sql: str, params: Params, action: str) -> None:
        try:
            # Drain so the statement is finished (and, in autocommit, committed) even
            # when it returns rows, e.g. with RETURNING.
            self._conn.execute(sql, params).fetchall()
        except apsw.Error as exc:
            raise self._error(exc, action) from exc

    def _rollback(self) -> None:
        # SQLite has already rolled back after some errors (disk full, I/O).
        if not self._conn.in_transaction:
            return
        try:
            self._conn.execute("ROLLBACK")
        except apsw.Error as exc:
            # Don't mask the exception that caused the rollback.
            logger.error("store rollback failed path=%s error=%s", self._path, exc)

    def _error(self, exc: apsw.Error, action: str) -> StoreError:
        return _translate(exc, action, self._path, self._busy_timeout_ms)


def _translate(exc: apsw.Error, action: str, path: Path, busy_timeout_ms: int) -> StoreError:
    """One readable sentence for an apsw error: what failed, where, and what to do."""
    where = f"can't {action} the store at {path}"
    if isinstance(exc, apsw.BusyError | apsw.LockedError):
        return StoreError(
            f"{where}: another process has held it locked for more than "
            f"{busy_timeout_ms} ms; stop the other meshd process or retry"
        )
    advice = next(
        (text for kind, text in _ADVICE if isinstance(exc, kind)),
        "this is unexpected; please report it",
    )
    return StoreError(f"{where}: {exc}; {advice}")
