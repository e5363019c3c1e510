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

Every workload has one directory, ``DATA_DIR/workloads/<id>/``, holding at least
``spec.json`` (what was asked) and the driver's own files. A driver refuses bad input
at ``create`` with a :class:`DriverError` whose sentence says what is wrong, and
leaves nothing behind when it refuses.

States: ``pending`` (placed, not created here yet), ``starting``, ``running``,
``stopped``, ``failed``. A driver reports asynchronous changes (the guest powered
off, QEMU reported an internal error, the process exited) through the ``on_change``
callback it is given.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from meshd.errors import DriverError


class WorkloadState(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything a driver may need; which fields matter depends on the driver."""

    id: str
    name: str
    driver: str
    cpus: float
    memory: int  # bytes
    disk: int = 0  # bytes (overlay size for qemu)
    command: str | None = None  # process: a shell-free argv string (shlex-split)
    image: str | None = None  # qemu: a base disk image (qcow2 or raw) path
    kernel: str | None = None  # qemu/firecracker: direct kernel boot
    initrd: str | None = None
    cmdline: str | None = None  # kernel command line; drivers add what they need
    user_data: str | None = None  # cloud-init NoCloud seed (qemu)
    meta_data: str | None = None
    network_config: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # process driver
    # The guest must reach its ready marker within this; None: the driver's
    # boot_timeout_s ([drivers.qemu] or [drivers.firecracker] in the config).
    boot_timeout_s: float | None = None
    ready_marker: str | None = None  # a line on the console that means "booted"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> WorkloadSpec:
        try:
            raw = json.loads(text)
            return cls(**raw)
        except (ValueError, TypeError) as exc:
            raise DriverError(f"unreadable workload spec: {exc}") from exc


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
    async def create(self, spec: WorkloadSpec) -> Status:
        """Check the spec and prepare everything to start; raise DriverError if it can't."""

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
