"""Make a real store's writes fail, inside SQLite: disk full, I/O error or read-only.

The fault is injected under SQLite, in a VFS (apsw's Python VFS over the default one),
so SQLite itself meets the failed ``write()`` and does what it does on a real full
disk: the commit fails with ``SQLITE_FULL`` (or ``SQLITE_IOERR``, ``SQLITE_READONLY``),
the transaction rolls back, the WAL keeps its last good frame, and the store raises
its ordinary :class:`~meshd.errors.StoreError`. Nothing in meshd is stubbed.

Writes are counted per store file as *write transactions*: every commit SQLite starts
(an explicit transaction or an autocommit statement that writes), counted by a commit
hook before any of its pages reach the file. So "the 3rd write" is the 3rd commit,
and a clean run's count enumerates every durable write point of a scenario.

Use::

    faults = store_faults.install()          # once per process; idempotent
    plan = faults.plan(path)                  # before opening the store at ``path``
    store = Store.open(path, vfs=store_faults.VFS_NAME)
    plan.fail_at(3)                           # the 3rd write from now fails, once
    plan.fail_from(1, Fault.READONLY)         # every write from now on, until heal()
    plan.heal()
    plan.writes, plan.failures                # what happened

Stores opened without ``vfs=VFS_NAME`` are untouched, and so is a file with no plan.
"""

from __future__ import annotations

import enum
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import apsw

VFS_NAME = "meshd-faults"


class Fault(enum.Enum):
    FULL = "full"  # SQLITE_FULL: the disk is full
    IOERR = "ioerr"  # SQLITE_IOERR: the device failed the write
    READONLY = "readonly"  # SQLITE_READONLY: the mount or file became read-only

    def error(self) -> apsw.Error:
        text = f"injected fault: {self.value}"
        if self is Fault.FULL:
            return apsw.FullError(text)
        if self is Fault.IOERR:
            return apsw.IOError(text)
        return apsw.ReadOnlyError(text)


@dataclass
class WritePlan:
    """The faults of one store file (keyed by its real path)."""

    path: str
    writes: int = 0  # write transactions begun since the plan was made
    failures: int = 0  # write transactions failed by this plan
    log: list[tuple[int, bool]] = field(default_factory=list)  # (write number, failed)
    _at: set[int] = field(default_factory=set)  # write numbers to fail once
    _from: int | None = None  # fail every write from this number on
    _kind: Fault = Fault.FULL
    _failing: bool = False  # the current write transaction is to fail

    def fail_at(self, n: int, kind: Fault = Fault.FULL) -> None:
        """Fail the ``n``-th write from now (1 is the next), once; the rest succeed."""
        self._at.add(self.writes + n)
        self._kind = kind

    def fail_from(self, n: int = 1, kind: Fault = Fault.FULL) -> None:
        """Fail every write from the ``n``-th from now on, until :meth:`heal`."""
        self._from = self.writes + n
        self._kind = kind

    def heal(self) -> None:
        """Writes succeed again (the operator freed space, the disk came back)."""
        self._at.clear()
        self._from = None
        self._failing = False

    @property
    def broken(self) -> bool:
        """Whether the next write would fail."""
        nxt = self.writes + 1
        return nxt in self._at or (self._from is not None and nxt >= self._from)

    def _begin(self) -> None:
        self.writes += 1
        n = self.writes
        self._failing = n in self._at or (self._from is not None and n >= self._from)
        self._at.discard(n)
        self.log.append((n, self._failing))

    def _write(self) -> None:
        if self._failing:
            self._failing = False  # SQLite abandons the commit at its first failed write
            self.failures += 1
            raise self._kind.error()


class _File(apsw.VFSFile):  # type: ignore[misc]
    def __init__(self, faults: StoreFaults, name: apsw.URIFilename | str | None, flags: list[int]):
        super().__init__("", name, flags)
        filename = name.filename() if isinstance(name, apsw.URIFilename) else name
        self._faults = faults
        self._db = faults.db_path(filename)

    def xWrite(self, data: bytes, offset: int) -> None:
        plan = self._faults.plans.get(self._db) if self._db else None
        if plan is not None:
            plan._write()
        super().xWrite(data, offset)


class StoreFaults(apsw.VFS):  # type: ignore[misc]
    """The VFS and the plans of every store opened through it (one per process)."""

    def __init__(self) -> None:
        super().__init__(VFS_NAME, "")
        self.plans: dict[str, WritePlan] = {}
        self.lock = threading.Lock()

    def plan(self, path: Path | str) -> WritePlan:
        """The plan of the store at ``path`` (made empty if it has none)."""
        key = os.path.realpath(path)
        with self.lock:
            return self.plans.setdefault(key, WritePlan(key))

    def forget(self, path: Path | str) -> None:
        self.plans.pop(os.path.realpath(path), None)

    @staticmethod
    def db_path(filename: str | None) -> str | None:
        """The database a file of SQLite's belongs to (``x.db-wal`` -> ``x.db``)."""
        if not filename:
            return None
        for suffix in ("-wal", "-journal", "-shm"):
            if filename.endswith(suffix):
                filename = filename[: -len(suffix)]
        return os.path.realpath(filename)

    def xOpen(self, name: apsw.URIFilename | str | None, flags: list[int]) -> _File:
        return _File(self, name, flags)

    def hook(self, conn: apsw.Connection) -> None:
        """apsw calls this for every new connection: count the commits of ours."""
        if conn.open_vfs != VFS_NAME:
            return
        key = os.path.realpath(conn.filename)

        def commit() -> bool:
            plan = self.plans.get(key)  # a plan made after the store opened counts too
            if plan is not None:
                plan._begin()
            return False  # let it commit: the VFS fails its writes if it must

        conn.set_commit_hook(commit)


_installed: StoreFaults | None = None


def install() -> StoreFaults:
    """Register the VFS (once per process) and return it."""
    global _installed  # noqa: PLW0603 - SQLite's VFS registry is per process too
    if _installed is None:
        _installed = StoreFaults()
        apsw.connection_hooks.append(_installed.hook)
    return _installed
