"""One Firecracker VM on the host: its files, its process, and how it ended.

Theory of operation
-------------------
*Files.* Everything the driver knows about a VM is a file in ``DATA_DIR/workloads/<id>/``,
so a restarted meshd (or an operator) reads the same truth: ``spec.json``,
``vm-config.json``, ``process.json`` (pid, start time, boot id, API socket, jail),
``firecracker.pid``, ``console.log`` (the serial console: Firecracker's stdout),
``firecracker.log`` (Firecracker's own log), ``exit.json`` (how the last run ended),
``stop-requested`` (a stop was asked, so an exit is not a failure; it holds the stop's
deadline) and ``launch.json`` (the intent of a start: written before the spawn).

*Crash safety.* Every record is replaced atomically and fsynced
(:func:`~meshd.adapters.drivers.procfs.write_durably`) before the step it enables, so a
meshd killed at any point leaves files the next one reads: ``launch.json`` (a run id,
the API socket, the jail) precedes the spawn, and ``process.json`` names the same run
id once the pid is known. A Firecracker started by a meshd that died before writing
``process.json`` is found by what its command line names (the workload's directory:
``--api-sock <dir>/fc.sock``) or, jailed, by its root directory (the jail's), and
adopted (:func:`adopt`); any other process of the workload is a stray and is killed
(:func:`kill_strays`) before a start and on reattach, stop and destroy.

*Process.* Firecracker is started with :class:`subprocess.Popen` in its own session —
not with asyncio's subprocess, whose transport kills the child when it is closed,
while a VM must outlive the daemon. It is found again by pid *and* start time (field 22
of ``/proc/<pid>/stat``) *and* boot id, so a recycled pid or a rebooted host never
passes for the VM; a zombie counts as dead. While meshd is the parent, ``Popen.poll``
reaps it and yields the exit status.

*Endings.* Firecracker exits 0 when the guest reboots or powers off (``reboot=k`` turns
a guest reboot into an exit), so exit 0 is a clean shutdown — unless the console shows
a kernel panic, which ``panic=1`` also turns into a reboot. When meshd was not the
parent (it reattached after a restart) the status is lost, but Firecracker logs
``exit_code=N`` as it exits, so the log's tail is read instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meshd.adapters.drivers.base import Status, WorkloadState
from meshd.adapters.drivers.firecracker_host import (
    JAIL_API_SOCK,
    JailerOptions,
    find_jailer,
    firecracker_argv,
    jail_dir,
    jailer_argv,
    prepare_jail,
)
from meshd.adapters.drivers.process import describe_exit
from meshd.adapters.drivers.procfs import (
    DEAD,
    ProcStat,
    boot_id,
    find_by_cmdline,
    is_alive,
    read_stat,
    write_durably,
)
from meshd.adapters.drivers.specfile import SPEC_NAME, spec_driver
from meshd.errors import DriverError
from meshd.failpoints import declare, failpoint

_EXIT_CODE = re.compile(rb"exit_code=(\d+)")
_PANIC = b"Kernel panic"
_TAIL = 8192
TRASH = ".trash-"  # a destroyed workload's directory, renamed before it is removed
FP = "driver.firecracker."
declare(
    *(
        FP + step
        for step in (
            "create.after_mkdir",
            "create.after_rootfs",
            "create.after_config",
            "create.after_spec",
            "start.after_intent",
            "start.after_spawn",
            "start.after_record",
            "stop.after_mark",
            "stop.after_sigterm",
            "stop.after_sigkill",
            "destroy.after_stop",
            "destroy.after_rename",
        )
    )
)


class BootFailed(Exception):
    """The VM died or stalled before it was ready; the message says how."""


class VmFiles:
    """The paths of one workload's files."""

    def __init__(self, wdir: Path) -> None:
        self.dir = wdir
        self.spec = wdir / SPEC_NAME
        self.config = wdir / "vm-config.json"
        self.record = wdir / "process.json"
        self.pidfile = wdir / "firecracker.pid"
        self.console = wdir / "console.log"
        self.fclog = wdir / "firecracker.log"
        self.sock = wdir / "fc.sock"
        self.exit = wdir / "exit.json"
        self.stop = wdir / "stop-requested"
        self.rootfs = wdir / "rootfs.img"
        self.intent = wdir / "launch.json"


@dataclass(frozen=True)
class ProcessRecord:
    """``process.json``: how a later meshd finds a running VM again."""

    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22
    boot_id: str
    started_at: float  # wall clock
    api_sock: str
    jail: str | None = None  # the jail directory (…/firecracker/<id>) when jailed
    run: str = ""  # the run id of launch.json (empty in records of older meshds)

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise DriverError(f"unreadable process record {path}: {exc}") from exc


class VmProcess:
    """One Firecracker process, with its Popen when this meshd started it."""

    def __init__(self, record: ProcessRecord, child: subprocess.Popen[bytes] | None = None):
        self.record = record
        self.child = child

    @classmethod
    def spawn(cls, argv: list[str], f: VmFiles, api_sock: Path, jail: str | None) -> VmProcess:
        """Start ``argv`` detached, console to console.log; write process.json and the pidfile.

        The intent (``launch.json``) is on disk before the fork, so a meshd killed
        between the fork and ``process.json`` adopts this process instead of starting a
        second one."""
        run = secrets.token_hex(8)
        intent = {"run": run, "at": time.time(), "api_sock": str(api_sock), "jail": jail}
        write_json(f.intent, intent)
        failpoint(FP + "start.after_intent")
        with f.console.open("ab") as console:
            child = subprocess.Popen(
                argv,
                cwd=f.dir,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        failpoint(FP + "start.after_spawn")
        try:
            st = read_stat(child.pid)
            if st is None:  # an unreaped child always has a /proc entry
                raise RuntimeError(f"no /proc entry for the firecracker just started ({child.pid})")
            rec = ProcessRecord(
                child.pid, st.starttime, boot_id(), time.time(), str(api_sock), jail, run
            )
            write_json(f.record, asdict(rec))
            write_durably(f.pidfile, f"{child.pid}\n".encode())
        except BaseException:
            child.kill()  # a VM nobody could find again must not run
            child.wait()
            raise
        failpoint(FP + "start.after_record")
        return cls(rec, child)

    def alive(self) -> bool:
        if self.child is not None and self.child.poll() is not None:
            return False
        rec = self.record
        return rec.boot_id == boot_id() and is_alive(rec.pid, rec.start_ticks)

    def exit_code(self) -> int | None:
        """The exit status if this meshd is the parent (reaping it), else None."""
        return self.child.poll() if self.child is not None else None

    def signal(self, sig: int) -> None:
        """Signal the VM's process group (it leads its own session: the jailer or
        Firecracker and anything they started), only while pid, start time and boot id
        still match."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.record.pid, sig)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.record.pid, sig)  # not a group leader (an adopted oddity)

    async def wait_dead(self, timeout_s: float, poll_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(poll_s)
        return True


def launch(
    f: VmFiles, wid: str, cpus: float, binary: Path, boot: str, jopts: JailerOptions | None
) -> tuple[VmProcess, dict[str, Any], int]:
    """Start Firecracker for a created VM, directly or jailed.

    Returns the process, the config to replay for an API boot (jail paths when jailed)
    and the console offset where this run's output starts.
    """
    config: dict[str, Any] = json.loads(f.config.read_text())
    f.exit.unlink(missing_ok=True)
    f.stop.unlink(missing_ok=True)
    f.fclog.touch()  # Firecracker opens its log, it does not create it
    with_file = boot == "config-file"
    if jopts is None:
        sock, jail = f.sock, None
        argv = firecracker_argv(binary, wid, sock, f.config if with_file else None)
    else:
        jd = jail_dir(jopts, binary, wid)
        config = prepare_jail(jd / "root", config, jopts)
        argv = jailer_argv(find_jailer(jopts), binary, wid, jopts, cpus, config_file=with_file)
        sock, jail = jd / "root" / JAIL_API_SOCK.lstrip("/"), str(jd)
    sock.unlink(missing_ok=True)  # Firecracker refuses to bind over a stale socket
    offset = f.console.stat().st_size if f.console.exists() else 0
    try:
        return VmProcess.spawn(argv, f, sock, jail), config, offset
    except OSError as exc:
        raise DriverError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Replace a record atomically and durably (temp file, fsync, rename, dir fsync)."""
    write_durably(path, json.dumps(data, sort_keys=True).encode())


def read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DriverError(f"unreadable {path}: {exc}") from exc
    return data if isinstance(data, dict) else None


def save_exit(f: VmFiles, status: Status, api_sock: str | None = None) -> None:
    """Record how the run ended (and drop its API socket, which Firecracker leaves)."""
    if api_sock is not None:
        Path(api_sock).unlink(missing_ok=True)
    body = {"state": str(status.state), "detail": status.detail, "exit_code": status.exit_code}
    write_json(f.exit, body)


def load_exit(f: VmFiles) -> Status | None:
    saved = read_json(f.exit)
    if saved is None:
        return None
    code = saved.get("exit_code")
    return Status(
        WorkloadState(str(saved.get("state"))),
        detail=str(saved.get("detail", "")),
        exit_code=code if isinstance(code, int) else None,
    )


def _tail(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - _TAIL))
            return fh.read()
    except FileNotFoundError:
        return b""


def last_line(path: Path) -> str:
    """The last non-empty line of a log, for one-sentence failure details."""
    lines = [ln.strip() for ln in _tail(path).decode(errors="replace").splitlines()]
    return next((ln for ln in reversed(lines) if ln), "no output")


def exit_status(f: VmFiles, code: int | None, *, stop_requested: bool) -> Status:
    """The state of an exited VM from its exit status (None: unknown) and its files."""
    if stop_requested:
        return Status(WorkloadState.STOPPED, detail="stopped", exit_code=code)
    if code is None and (logged := _EXIT_CODE.findall(_tail(f.fclog))):
        code = int(logged[-1])
    console = _tail(f.console)
    if _PANIC in console:
        panic = console[console.rindex(_PANIC) :].split(b"\n", 1)[0].decode(errors="replace")
        return Status(WorkloadState.FAILED, detail=f"the guest kernel panicked: {panic.strip()}")
    if code == 0:
        return Status(WorkloadState.STOPPED, detail="the guest shut down", exit_code=0)
    detail = f"firecracker {describe_exit(code)}: {last_line(f.console)}"
    return Status(WorkloadState.FAILED, detail=detail, exit_code=code)


async def wait_for_marker(
    f: VmFiles,
    marker: str,
    offset: int,
    deadline: float,
    poll_s: float,
    alive: Callable[[], bool],
) -> None:
    """Return once ``marker`` is on the console past ``offset``; TimeoutError at deadline."""
    want = marker.encode()
    buf = b""
    with f.console.open("rb") as fh:
        fh.seek(offset)
        while True:
            buf += fh.read()
            if want in buf:
                return
            buf = buf[-len(want) :]
            if not alive():
                if want in buf + fh.read():  # printed just before it exited
                    return
                raise BootFailed(f"the VM exited before printing {marker!r}")
            if time.monotonic() >= deadline:
                raise TimeoutError(repr(marker))
            await asyncio.sleep(poll_s)


def list_ids(root: Path, driver: str) -> list[str]:
    dirs = sorted(root.iterdir()) if root.is_dir() else []
    return [
        d.name
        for d in dirs
        if d.is_dir() and not d.name.startswith(TRASH) and spec_driver(d) == driver
    ]


def purge_trash(root: Path) -> None:
    """Finish removing what a destroy renamed away before meshd died."""
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith(TRASH):
                shutil.rmtree(d, ignore_errors=True)


# --- finding a workload's processes ------------------------------------------------------


def _root_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/root")
    except OSError:
        return None


def members(wdir: Path, jail: str | None) -> list[ProcStat]:
    """Every live process of the workload at ``wdir``: those whose command line names the
    directory (a direct Firecracker: ``--api-sock <dir>/fc.sock``) and, when jailed,
    those chrooted into the jail (whose command line names only chroot paths)."""
    found = {st.pid: st for st in find_by_cmdline(str(wdir) + "/")}
    if jail is not None:
        root = str(Path(jail) / "root")
        with os.scandir("/proc") as entries:
            for entry in entries:
                if entry.name.isdigit() and _root_of(int(entry.name)) == root:
                    st = read_stat(int(entry.name))
                    if st is not None and st.state not in DEAD:
                        found[st.pid] = st
    return sorted(found.values(), key=lambda st: st.pid)


def strays(wdir: Path, jail: str | None, keep: ProcessRecord | None) -> list[int]:
    """The workload's processes other than ``keep`` (the run its records account for)."""
    return [
        st.pid
        for st in members(wdir, jail)
        if keep is None or (st.pid, st.starttime) != (keep.pid, keep.start_ticks)
    ]


async def kill_strays(
    wdir: Path, jail: str | None, keep: ProcessRecord | None, timeout_s: float
) -> None:
    """SIGKILL the processes of the workload that no record accounts for and wait until
    they are gone: never a second copy beside the recorded one, never an untracked one."""
    pids = strays(wdir, jail, keep)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        pids = [p for p in strays(wdir, jail, keep) if p in pids]
    if pids:
        raise DriverError(
            f"untracked firecracker pids {pids} of {wdir.name} outlived SIGKILL; try again"
        )


def adopt(f: VmFiles) -> ProcessRecord | None:
    """The Firecracker a meshd launched before it died without writing ``process.json``:
    found by the launch intent and the processes of the workload (a session leader, as
    each spawn makes it), recorded as this workload's run. None if there is none."""
    intent = read_json(f.intent)
    if intent is None or not isinstance(run := intent.get("run"), str):
        return None
    rec = ProcessRecord.load(f.record)
    if rec is not None and rec.run == run:
        return None  # the run was recorded: nothing to adopt
    jail = intent.get("jail")
    jail = jail if isinstance(jail, str) else None
    leaders = [st for st in members(f.dir, jail) if st.session == st.pid]
    if not leaders:
        return None
    st = leaders[0]
    at = intent.get("at")
    rec = ProcessRecord(
        st.pid,
        st.starttime,
        boot_id(),
        float(at) if isinstance(at, int | float) else time.time(),
        str(intent.get("api_sock", f.sock)),
        jail,
        run,
    )
    write_json(f.record, asdict(rec))
    write_durably(f.pidfile, f"{st.pid}\n".encode())
    return rec


def remove_jail(jail: str | None, opts: JailerOptions | None) -> None:
    """Remove a VM's jail and its cgroup (the workload's directory goes by rename)."""
    if jail is None:
        return
    shutil.rmtree(jail, ignore_errors=True)
    if opts is not None and opts.cgroup_version == 2:
        parent = opts.parent_cgroup or Path(jail).parent.name
        with contextlib.suppress(OSError):  # busy or never made: nothing of ours is left
            (Path("/sys/fs/cgroup") / parent / Path(jail).name).rmdir()


def stop_deadline(f: VmFiles) -> float | None:
    """The wall-clock deadline of the stop ``stop-requested`` records, None without one
    (an empty file, from an older meshd, asks for the stop to end now)."""
    try:
        data = json.loads(f.stop.read_bytes() or b"{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return 0.0
    deadline = data.get("deadline") if isinstance(data, dict) else None
    return float(deadline) if isinstance(deadline, int | float) else 0.0
