"""What the QEMU driver does to the host: disk files, seeds, taps and processes.

Theory of operation
-------------------
*Files.* A workload's directory holds ``spec.json``, an optional ``overlay.qcow2`` (a
copy-on-write layer over the read-only base image: ``qemu-img create -f qcow2 -F FMT
-b BASE``), an optional ``seed.img`` (NoCloud: an ISO 9660 volume labelled ``cidata``
made by ``genisoimage``, or a vfat one by ``mkfs.vfat``+``mcopy`` when genisoimage is
missing), ``console.log`` (the serial console; the previous boot's is kept as
``console.log.1``), and while QEMU runs ``qemu.pid``, ``qmp.sock`` and ``run.json``.
``exit.json`` records how the last run ended, written by whoever saw it end.

*Processes.* QEMU daemonizes (its own session, parent init), so it outlives meshd. It
is found again by the pid in ``run.json`` *and* the start time (field 22 of
``/proc/<pid>/stat``, clock ticks since boot) and the boot id recorded when it started:
a recycled pid or a rebooted host never passes for the VM. A zombie (``Z``) or ``X``
state is dead: after a daemon restart an exited QEMU stays a zombie for ~1.4 s.

Every subprocess here is awaited with a timeout, never waited on in the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from meshd.adapters import taps
from meshd.adapters.drivers.base import WorkloadState
from meshd.adapters.drivers.procfs import (
    DEAD,
    boot_id,
    find_by_cmdline,
    processes,
    read_stat,
    write_durably,
)
from meshd.adapters.drivers.qemu_args import LaunchPlan, argv, kernel_kind, wants_seed
from meshd.adapters.drivers.specfile import SPEC_NAME, spec_driver
from meshd.core.spec import WorkloadSpec, dumps
from meshd.errors import DriverError
from meshd.failpoints import declare, failpoint

SEED_NAME = "seed.img"
OVERLAY_NAME = "overlay.qcow2"
RUN_NAME = "run.json"
EXIT_NAME = "exit.json"
LAUNCH_ERR_NAME = "launch.err"
INTENT_NAME = "launch.json"  # written before QEMU is run: how to adopt it if meshd dies
FP = "driver.qemu."
declare(
    *(
        FP + step
        for step in (
            "create.after_mkdir",
            "create.after_overlay",
            "create.after_spec",
            "start.after_intent",
            "start.after_launch",
            "start.after_record",
            "stop.after_quit",
            "destroy.after_stop",
            "destroy.after_rename",
        )
    )
)
T = TypeVar("T")


@dataclass(frozen=True)
class RunRecord:
    """How to find a running QEMU again after a daemon restart."""

    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22
    boot_id: str
    started_at: float  # wall clock
    accel: str
    machine: str
    tap: str | None = None
    ready: bool = False

    @classmethod
    def load(cls, path: Path) -> RunRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_durably(path, json.dumps(data, sort_keys=True).encode())


def strays(wdir: Path, keep: RunRecord | None) -> list[int]:
    """Live processes naming ``wdir`` on their command line (every QEMU of the workload
    does: its QMP socket, pidfile and console are there) other than ``keep``."""
    needle = str(wdir.resolve()) + "/"
    return [
        st.pid
        for st in find_by_cmdline(needle)
        if keep is None or (st.pid, st.starttime) != (keep.pid, keep.start_ticks)
    ]


async def kill_strays(wdir: Path, keep: RunRecord | None, timeout_s: float) -> None:
    """SIGKILL the QEMUs of ``wdir`` no run record accounts for, and wait until gone."""
    pids = strays(wdir, keep)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        pids = [p for p in strays(wdir, keep) if p in pids]
    if pids:
        raise DriverError(f"untracked QEMU pids {pids} of {wdir.name} outlived SIGKILL; try again")


def adopt(wdir: Path) -> RunRecord | None:
    """A QEMU launched by a meshd that died before saving its run record: found by its
    pidfile and the launch intent, recorded as this workload's run (not yet ready)."""
    intent = read_json(wdir / INTENT_NAME)
    try:
        pid = int((wdir / "qemu.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    st = read_stat(pid)
    if intent is None or st is None or st.state in DEAD or pid not in strays(wdir, None):
        return None
    tap = intent.get("tap")
    rec = RunRecord(
        pid=pid,
        start_ticks=st.starttime,
        boot_id=boot_id(),
        started_at=float(intent.get("at", time.time())),
        accel=str(intent.get("accel", "")),
        machine=str(intent.get("machine", "")),
        tap=tap if isinstance(tap, str) else None,
    )
    rec.save(wdir / RUN_NAME)
    return rec


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start ticks) of a pid, or None if there is no such process."""
    st = read_stat(pid)
    return None if st is None else (st.state, st.starttime)


def alive(rec: RunRecord) -> bool:
    """The recorded QEMU is this very process, and not dead or a zombie."""
    if rec.boot_id and rec.boot_id != boot_id():
        return False
    st = proc_stat(rec.pid)
    return st is not None and st[0] not in DEAD and st[1] == rec.start_ticks


def kill(rec: RunRecord) -> None:
    """SIGKILL the recorded QEMU, only if the pid is still that process."""
    if alive(rec):
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, signal.SIGKILL)


def reap_adopted() -> None:
    """Wait for the middle process QEMU's ``-daemonize`` leaves, when this meshd is pid
    1 of its PID namespace (in a container, or a blade of the e2e lab): the kernel
    hands orphans to pid 1, and an init that never waits keeps them as zombies. Only
    zombie session leaders named qemu-system-* are waited for (the middle process
    called setsid); never the launcher, which asyncio started and reaps itself.
    Elsewhere the host's init reaps them and this does nothing."""
    if os.getpid() != 1:
        return
    for st in processes():
        if (
            st.state == "Z"
            and st.ppid == 1
            and st.session == st.pid
            and st.comm.startswith("qemu-")
        ):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(st.pid, os.WNOHANG)


async def reap_exited(pid: int, timeout_s: float = 5.0, poll_s: float = 0.05) -> None:
    """Wait for an exited guest's QEMU when this meshd, as pid 1, adopted it (see
    :func:`reap_adopted`). Its threads may outlive its main one for a moment, and a
    process can only be reaped once they are all gone, so this polls. Not our child
    (meshd is not pid 1, or it was reaped): returns at once."""
    if os.getpid() != 1:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not _reaped(pid):
        if loop.time() >= deadline:
            return
        await asyncio.sleep(poll_s)


def _reaped(pid: int) -> bool:
    """Reap ``pid`` if it has exited (never blocks); True once it is no child of ours."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


async def wait_dead(rec: RunRecord, timeout_s: float, poll_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while alive(rec):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


async def run_tool(argv: list[str], what: str, timeout_s: float) -> str:
    """Run a host tool; its stdout, or a DriverError naming ``what`` with its stderr."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise DriverError(f"{what}: cannot run {argv[0]} ({exc.strerror})") from exc
    out, err = await _within(proc, proc.communicate(), argv[0], what, timeout_s)
    if proc.returncode != 0:
        msg = err.decode(errors="replace").strip().splitlines()
        raise DriverError(f"{what}: {msg[-1] if msg else f'exit code {proc.returncode}'}")
    return out.decode(errors="replace")


async def run_daemonizing(argv: list[str], what: str, errors: Path, timeout_s: float) -> None:
    """Run a program that daemonizes; return once its parent exited successfully.

    Its stderr goes to the file ``errors``, never to a pipe: the daemon may keep a
    copy of the parent's descriptors, so waiting for a pipe's end could wait for the
    daemon's whole life (it does under uvloop). The parent's exit status is the answer,
    and the file's last line the reason when it failed.
    """
    try:
        with errors.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=err,
            )
    except OSError as exc:
        raise DriverError(f"{what}: cannot run {argv[0]} ({exc.strerror})") from exc
    code = await _within(proc, proc.wait(), argv[0], what, timeout_s)
    if code != 0:
        raise DriverError(f"{what}: {_last_line(errors) or f'exit code {code}'}")


async def _within(
    proc: asyncio.subprocess.Process,
    done: Awaitable[T],
    program: str,
    what: str,
    timeout_s: float,
) -> T:
    """``done`` (the process's output or exit), or kill it after ``timeout_s``."""
    try:
        return await asyncio.wait_for(done, timeout_s)
    except TimeoutError as exc:
        with contextlib.suppress(ProcessLookupError):  # it may have exited meanwhile
            proc.kill()
        await proc.wait()
        raise DriverError(f"{what}: {program} did not finish within {timeout_s:g} s") from exc


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


async def image_info(image: Path, timeout_s: float) -> tuple[str, int]:
    """(format, virtual size in bytes) of a disk image, by ``qemu-img info``."""
    out = await run_tool(
        ["qemu-img", "info", "--output=json", str(image)], f"image {image} is unreadable", timeout_s
    )
    try:
        info = json.loads(out)
        return str(info["format"]), int(info["virtual-size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DriverError(f"image {image}: qemu-img info said nothing usable") from exc


async def create_overlay(base: Path, fmt: str, overlay: Path, size: int, timeout_s: float) -> None:
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base)]
    cmd += [str(overlay)] + ([str(size)] if size else [])
    await run_tool(cmd, f"cannot create an overlay on {base}", timeout_s)


async def create_seed(wdir: Path, wid: str, spec: WorkloadSpec, timeout_s: float) -> Path:
    """A NoCloud seed (volume ``cidata``) in ``wdir``; meta-data defaults to the id."""
    files = {
        "user-data": spec.user_data or "",
        "meta-data": spec.meta_data if spec.meta_data is not None else f"instance-id: {wid}\n",
    }
    if spec.network_config is not None:
        files["network-config"] = spec.network_config
    src = wdir / "seed.d"
    src.mkdir()
    try:
        for name, text in files.items():
            (src / name).write_text(text)
        seed = wdir / SEED_NAME
        names = [str(src / n) for n in files]
        if shutil.which("genisoimage"):
            cmd = ["genisoimage", "-quiet", "-output", str(seed), "-volid", "cidata"]
            await run_tool([*cmd, "-joliet", "-rock", *names], "cannot build the seed", timeout_s)
        elif shutil.which("mkfs.vfat") and shutil.which("mcopy"):
            await run_tool(
                ["mkfs.vfat", "-n", "CIDATA", "-C", str(seed), "1024"],
                "cannot build the seed",
                timeout_s,
            )
            await run_tool(
                ["mcopy", "-oi", str(seed), *names, "::"], "cannot build the seed", timeout_s
            )
        else:
            raise DriverError(
                "a NoCloud seed needs genisoimage (or dosfstools and mtools); "
                "apt-get install genisoimage"
            )
        return seed
    finally:
        shutil.rmtree(src, ignore_errors=True)


def has_netdev(name: str, sub: str = "") -> bool:
    """A network interface (``sub="bridge"``: a bridge) exists here; a sysfs stat."""
    return (Path("/sys/class/net") / name / sub).exists()


async def tap_up(tap: str, bridge: str, timeout_s: float) -> None:
    """A tap for QEMU on ``bridge`` (root; the bridge must exist in this namespace)."""
    if not has_netdev(bridge, "bridge"):
        raise DriverError(f"bridge {bridge} does not exist in this network namespace")
    await tap_down(tap, timeout_s)
    taps.make(tap, bridge)  # ioctls: no process on the way to the guest's start


async def tap_down(tap: str, timeout_s: float) -> None:
    if has_netdev(tap):
        with contextlib.suppress(DriverError):  # gone meanwhile
            await run_tool(["ip", "link", "del", tap], f"cannot delete tap {tap}", timeout_s)


def read_from(path: Path, offset: int) -> tuple[bytes, int]:
    """The bytes appended to ``path`` since ``offset`` (the console grows while we read)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return b"", offset
    return data, offset + len(data)


def tail(path: Path, n: int = 5) -> str:
    """The last ``n`` non-empty lines of a console, for a failure's sentence."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return ""
    return " | ".join([ln for ln in lines if ln][-n:])[-400:]


def remove_runtime(wdir: Path) -> None:
    """What only a running QEMU needs: QEMU leaves its socket file behind on exit."""
    for name in ("qmp.sock", "qemu.pid", RUN_NAME, INTENT_NAME):
        (wdir / name).unlink(missing_ok=True)


def check_files(wid: str, spec: WorkloadSpec) -> WorkloadSpec:
    """Absolute paths (QEMU daemonizes into /), each file present and plausible."""
    paths: dict[str, str] = {}
    for field in ("kernel", "initrd", "image"):
        value = getattr(spec, field)
        if value is None:
            continue
        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise DriverError(f"workload {wid!r}: {field} {value} does not exist")
        paths[field] = str(path)
    if "kernel" in paths:
        with open(paths["kernel"], "rb") as f:
            head = f.read(1024)
        if kernel_kind(head) is None:
            raise DriverError(
                f"workload {wid!r}: kernel {spec.kernel} is neither a bzImage nor an ELF vmlinux"
            )
    return msgspec.structs.replace(
        spec,
        kernel=paths.get("kernel", spec.kernel),
        initrd=paths.get("initrd", spec.initrd),
        image=paths.get("image", spec.image),
    )


def scan(root: Path, driver: str) -> list[str]:
    """Ids of the workloads under ``root`` whose spec names ``driver``."""
    if not root.is_dir():
        return []
    return [
        d.name
        for d in sorted(root.iterdir())
        if not d.name.startswith(".") and d.is_dir() and spec_driver(d) == driver
    ]


def unwatched_exit(console: Path, rec: RunRecord) -> tuple[WorkloadState, str]:
    """How a QEMU ended that nobody watched: the console's last words tell a power-off."""
    if "reboot: Power down" in tail(console, 3):
        return WorkloadState.STOPPED, "the guest powered off while meshd was not watching"
    return WorkloadState.FAILED, f"QEMU pid {rec.pid} exited while meshd was not watching"


async def await_marker(
    console: Path,
    marker: str,
    rec: RunRecord,
    deadline: float,
    timeout_s: float,
    poll_s: float,
    failure: Callable[[], str | None],
) -> str | None:
    """None once ``marker`` is on the console (read off the loop); else why it never came.
    ``deadline`` is on the monotonic clock."""
    needle = marker.encode()
    offset, carry = 0, b""
    while True:
        data, offset = await asyncio.to_thread(read_from, console, offset)
        window = carry + data
        if needle in window:
            return None
        carry = window[-len(needle) :]
        why = failure()
        if why:
            return why
        if not alive(rec):
            return "QEMU exited before the guest was ready"
        if time.monotonic() >= deadline:
            return f"no {marker!r} on the console within {timeout_s:g} s"
        await asyncio.sleep(poll_s)


async def prepare(
    wdir: Path, wid: str, spec: WorkloadSpec, base_fmt: str, timeout_s: float
) -> None:
    """The workload's directory: spec, overlay, seed; nothing is left if one fails."""
    await asyncio.to_thread(wdir.mkdir, parents=True)  # fails if it exists: never rmtree that
    failpoint(FP + "create.after_mkdir")
    try:
        if spec.image:
            await create_overlay(
                Path(spec.image), base_fmt, wdir / OVERLAY_NAME, spec.disk, timeout_s
            )
            failpoint(FP + "create.after_overlay")
        if wants_seed(spec):
            await create_seed(wdir, wid, spec, timeout_s)
        # spec.json last: its presence says the directory is complete. One without it
        # is a create cut short, which the next create removes and does again.
        await asyncio.to_thread(write_durably, wdir / SPEC_NAME, dumps(spec))
        failpoint(FP + "create.after_spec")
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, wdir, True)
        raise


async def launch(
    plan: LaunchPlan, wdir: Path, timeout_s: float, tool_timeout_s: float
) -> RunRecord:
    """Run QEMU daemonized; its run record, saved. On failure nothing runs or is left
    but the console, and the DriverError carries QEMU's own sentence."""
    remove_runtime(wdir)
    (wdir / EXIT_NAME).unlink(missing_ok=True)
    if plan.console.exists():
        plan.console.replace(plan.console.with_name("console.log.1"))
    try:
        if plan.tap and plan.bridge:
            await tap_up(plan.tap, plan.bridge, tool_timeout_s)
        for tap, _ in plan.nics:
            if not has_netdev(tap):  # else QEMU would make one on no bridge
                raise DriverError(
                    f"tap {tap} of workload {wdir.name} does not exist: a NIC's tap is "
                    "made by meshd (the runner) before the driver starts the guest"
                )
        err = wdir / LAUNCH_ERR_NAME
        intent = {"at": time.time(), "accel": plan.accel, "machine": plan.machine}
        write_json(wdir / INTENT_NAME, intent | {"tap": plan.tap})
        failpoint(FP + "start.after_intent")
        await run_daemonizing(argv(plan), f"QEMU refused workload {wdir.name}", err, timeout_s)
        reap_adopted()  # the middle process -daemonize left
        failpoint(FP + "start.after_launch")
        pid = int(plan.pidfile.read_text().strip())
    except (DriverError, OSError, ValueError) as exc:
        if plan.tap:
            await tap_down(plan.tap, tool_timeout_s)
        remove_runtime(wdir)
        if isinstance(exc, DriverError):
            raise
        raise DriverError(f"QEMU left no pid for workload {wdir.name}: {exc}") from exc
    st = proc_stat(pid)
    rec = RunRecord(
        pid=pid,
        start_ticks=st[1] if st else -1,
        boot_id=boot_id(),
        started_at=time.time(),
        accel=plan.accel,
        machine=plan.machine,
        tap=plan.tap,
    )
    rec.save(wdir / RUN_NAME)
    failpoint(FP + "start.after_record")
    return rec
