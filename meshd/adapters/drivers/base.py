"""The driver interface: how a node runs the workloads the mesh placed on it.

Theory of operation
-------------------
One interface (DESIGN.md §8), four drivers: ``process`` (a supervised host process),
``qemu`` (QEMU/KVM or TCG, QMP), ``firecracker`` (its API over a unix socket) and
``fake`` (in memory, for the simulator and unit tests).

Workloads **outlive the daemon**. A driver never keeps a workload as a child that
dies with meshd: it starts it in its own session, writes what it needs to find it
again (pid, process start time, control sockets) under the workload's directory, and
``reattach`` finds it after a restart — by pid *and* start time, so a recycled pid is
never mistaken for the workload. ``stop`` is graceful first (ACPI/SIGTERM), forceful
after ``timeout_s``. ``destroy`` removes every process and file the workload had.

Drivers read the one workload model, :class:`meshd.core.spec.WorkloadSpec`; the workload's
id is given beside it (``create(wid, spec)``), never inside it. Every workload has one
directory, ``DATA_DIR/workloads/<id>/``, holding at least ``spec.json`` (what was
asked; see :mod:`meshd.adapters.drivers.specfile`) and the driver's own files. A driver
refuses bad input at ``create`` with a :class:`DriverError` whose sentence says what
is wrong, and leaves nothing behind when it refuses.

States: ``pending`` (placed, not created here yet), ``starting``, ``running``,
``stopped``, ``failed``. A driver reports asynchronous changes (the guest powered
off, QEMU reported an internal error, the process exited) through the ``on_change``
callback it is given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from meshd.core.spec import WorkloadSpec


class WorkloadState(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class Status:
    state: WorkloadState
    pid: int | None = None
    detail: str = ""  # one sentence: why failed, how it exited, which accelerator
    started_at: float | None = None  # wall clock
    exit_code: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"accel": "tcg"}


OnChange = Callable[[str, Status], None]


class Driver(ABC):
    """One kind of workload runner. All methods are coroutines safe to call on the loop;
    blocking work (qemu-img, waiting for a boot) must not block it."""

    name: str = ""

    def __init__(self, root: Path, on_change: OnChange) -> None:
        self.root = root  # DATA_DIR/workloads
        self.on_change = on_change

    def dir_of(self, wid: str) -> Path:
        return self.root / wid

    @abstractmethod
    async def create(self, wid: str, spec: WorkloadSpec) -> Status:
        """Check the spec and prepare everything to start workload ``wid``; raise
        DriverError if it can't. The same ``wid`` with an equal spec is no error."""

    @abstractmethod
    async def start(self, wid: str) -> Status:
        """Start (or restart) a created workload; returns once it is running or failed."""

    @abstractmethod
    async def stop(self, wid: str, timeout_s: float) -> Status:
        """Graceful stop, forceful after ``timeout_s``; the workload stays created."""

    @abstractmethod
    async def destroy(self, wid: str) -> None:
        """Stop if needed and remove every process and file of the workload."""

    @abstractmethod
    async def status(self, wid: str) -> Status:
        """The workload's state now, read from the host (not from memory)."""

    @abstractmethod
    async def list(self) -> list[str]:
        """Ids of every workload of this driver that has a directory under ``root``."""

    @abstractmethod
    async def reattach(self, wid: str) -> Status:
        """After a daemon restart: find the running workload again (or report it died)."""

    @abstractmethod
    def log_path(self, wid: str) -> Path:
        """The console (serial) or stdout/stderr file of the workload."""

    def capabilities(self) -> frozenset[str]:
        """What this driver lets the node offer in its bids (``driver:NAME`` and, for
        hypervisors, ``kvm`` or ``tcg``); empty when it can't run anything here."""
        return frozenset({f"driver:{self.name}"})

    def detach(self) -> None:  # noqa: B027 - optional hook; most drivers hold nothing
        """Stop watching workloads (the daemon is stopping); they keep running."""

    async def close(self) -> None:
        """Let go of workloads for a daemon shutdown (monitor sockets, watchers); they
        keep running. Drivers holding connections (QMP) override this."""
        self.detach()
