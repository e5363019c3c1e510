"""The firecracker driver: microVMs run by Firecracker, driven over its API socket.

Theory of operation
-------------------
DESIGN.md §8. ``create`` checks the node (a firecracker binary and a usable KVM, see
:mod:`meshd.adapters.drivers.firecracker_host`) and the spec (a kernel, at least 128 MiB, 1 to
32 vCPUs), copies the rootfs image into the workload directory (no two VMs share a
writable disk) and writes ``vm-config.json``, the VM's ``FullVmConfiguration``.

``start`` runs ``firecracker --id <id> --api-sock <dir>/fc.sock`` detached (its own
session; the serial console, Firecracker's stdout, appended to ``console.log``). With
``boot="config-file"`` it adds ``--config-file vm-config.json`` and Firecracker boots
at once; with ``boot="api"`` the driver replays the same config through the API and
sends ``InstanceStart``. Optionally the jailer runs it (see ``firecracker_host``).
``start`` returns once ``GET /`` answers and, if the spec names one, the ready marker
is on the console; past the boot timeout (the spec's ``boot_timeout_s``, else
``FirecrackerOptions.boot_timeout_s``) it kills the VM and reports it failed.

A watcher polls each VM it started or reattached and reports an exit through
``on_change`` (see ``firecracker_vm`` for how an ending is judged). ``stop`` writes a
stop marker, sends ``SendCtrlAltDel`` (x86 guests with the i8042 driver; with
``reboot=k`` the guest's reboot ends Firecracker), waits ``timeout_s``, then sends
SIGTERM and SIGKILL by pid, each only while pid, start time and boot id still match.
``reattach`` trusts the same triple, then asks ``GET /``. ``destroy`` stops the VM and
removes its directory, its jail and its cgroup.

Crash safety (as the process and qemu drivers; see ``firecracker_vm``): every step is
written down durably before its effect can't be taken back, and a restarted meshd
reconciles from those files. ``create`` writes ``spec.json`` last, so a directory
without it is a create cut short, removed and redone (never "File exists"); the same
spec again is no error. ``start`` writes its intent before the spawn and adopts a
Firecracker that a killed meshd started but never recorded; ``start``, ``stop``,
``reattach`` and ``destroy`` kill any process of the workload no record accounts for
(never two copies, never an untracked one). ``stop`` writes its deadline before the
first signal, and a restarted meshd finishes an interrupted stop by it; it ends in
SIGKILL to the VM's process group, and nothing is reported stopped before the process
is gone. ``destroy`` renames the directory away in one step, then removes it; ``list``
finishes removals a crash cut short. Every step has a failpoint
(:mod:`meshd.failpoints`) named ``driver.firecracker.<step>``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshd.adapters.drivers.base import Driver, OnChange, Status, WorkloadState
from meshd.adapters.drivers.firecracker_api import (
    FirecrackerApi,
    NetworkInterface,
    check_spec,
    mesh_nics,
    vm_config,
)
from meshd.adapters.drivers.firecracker_host import (
    Availability,
    FirecrackerOptions,
    JailerOptions,
    check_availability,
    find_jailer,
    valid_instance_id,
)
from meshd.adapters.drivers.firecracker_vm import (
    FP,
    TRASH,
    BootFailed,
    ProcessRecord,
    VmFiles,
    VmProcess,
    adopt,
    exit_status,
    kill_strays,
    last_line,
    launch,
    list_ids,
    load_exit,
    purge_trash,
    read_json,
    remove_jail,
    save_exit,
    stop_deadline,
    wait_for_marker,
    write_json,
)
from meshd.adapters.drivers.procfs import write_durably
from meshd.adapters.drivers.specfile import read_spec
from meshd.core.spec import WorkloadSpec, dumps
from meshd.errors import DriverError, FirecrackerApiError
from meshd.failpoints import failpoint

__all__ = ["FirecrackerDriver", "FirecrackerOptions", "JailerOptions", "NetworkInterface"]

logger = logging.getLogger(__name__)
SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the NUL


class FirecrackerDriver(Driver):
    """Runs each workload as a Firecracker microVM; see the module doc."""

    name = "firecracker"

    def __init__(
        self, root: Path, on_change: OnChange, options: FirecrackerOptions | None = None
    ) -> None:
        # Absolute: the workload's directory on Firecracker's command line is how a
        # later meshd (whatever its cwd) recognises the process as the workload's.
        super().__init__(root.absolute(), on_change)
        self.options = options or FirecrackerOptions()
        self._locks: dict[str, asyncio.Lock] = {}
        self._procs: dict[str, VmProcess] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, asyncio.Task[None]] = {}  # stops resumed after a restart

    def availability(self) -> Availability:
        o = self.options
        return check_availability(o.binary, o.kvm_device, o.sys_modules, o.allow_kvm_pvm)

    def log_path(self, wid: str) -> Path:
        return VmFiles(self.dir_of(wid)).console

    def detach(self) -> None:
        """Stop watching every VM and leave them running (what meshd does on exit)."""
        for wid in list(self._watchers):
            self._unwatch(wid)
        self._procs.clear()
        for task in self._stops.values():
            task.cancel()
        self._stops.clear()

    async def create(self, wid: str, spec: WorkloadSpec) -> Status:
        avail = self.availability()
        if not avail.ok:
            raise DriverError(avail.sentence())
        if not valid_instance_id(wid):
            raise DriverError(
                f"workload id {wid!r} can't name a firecracker VM: "
                "use 1 to 64 letters, digits and hyphens"
            )
        check_spec(wid, spec)
        if self.options.jailer is not None:
            find_jailer(self.options.jailer)
        f = VmFiles(self.dir_of(wid))
        if len(os.fsencode(f.sock)) > SUN_PATH_MAX:
            raise DriverError(f"the API socket path {f.sock} is too long for a unix socket")
        async with self._lock(wid):
            if f.spec.is_file():  # created before (spec.json is written last)
                try:
                    same = await asyncio.to_thread(read_spec, f.dir) == spec
                except OSError as exc:
                    raise DriverError(f"workload {wid}: its spec is unreadable: {exc}") from exc
                if not same:
                    raise DriverError(f"workload {wid} already exists with a different spec")
                return await self._status(wid, f)
            if f.dir.exists():  # no spec.json: a create cut short; redo it
                logger.warning("removing a half-made firecracker workload directory id=%s", wid)
                await kill_strays(f.dir, None, None, self.options.term_grace_s)
                await asyncio.to_thread(shutil.rmtree, f.dir, True)
            try:
                await asyncio.to_thread(self._prepare, wid, spec, f)
            except subprocess.CalledProcessError as exc:
                why = exc.stderr.decode(errors="replace").strip()
                raise DriverError(f"cannot copy the rootfs of {wid}: {why}") from exc
            except OSError as exc:
                raise DriverError(f"cannot prepare workload {wid}: {exc}") from exc
        logger.info("firecracker workload created id=%s", wid)
        return Status(WorkloadState.STOPPED, detail="created; not started")

    async def start(self, wid: str) -> Status:
        async with self._lock(wid):
            f = self._files(wid)
            o = self.options
            running = self._settle(wid, f)
            if running is not None and running.alive():
                await kill_strays(f.dir, running.record.jail, running.record, o.term_grace_s)
                if wid not in self._watchers:
                    self._procs[wid] = running
                    self._watch(wid, running)
                return await self._running_status(wid, running)
            # Nothing of the workload may run beside the new run.
            await kill_strays(f.dir, self._jail(f, running), None, o.term_grace_s)
            avail = self.availability()
            if avail.binary is None or not avail.ok:
                raise DriverError(avail.sentence())
            try:
                spec = await asyncio.to_thread(read_spec, f.dir)
            except OSError as exc:
                raise DriverError(f"workload {wid}: its spec is unreadable: {exc}") from exc
            proc, config, offset = await asyncio.to_thread(
                launch, f, wid, spec.cpus, avail.binary, o.boot, o.jailer
            )
            self._procs[wid] = proc
            logger.info(
                "firecracker started id=%s pid=%s boot=%s", wid, proc.record.pid, self.options.boot
            )
            return await self._boot(wid, spec, proc, config, offset)

    async def stop(self, wid: str, timeout_s: float) -> Status:
        async with self._lock(wid):
            return await self._stop(wid, self._files(wid), timeout_s)

    async def destroy(self, wid: str) -> None:
        if not valid_instance_id(wid):
            return  # no VM of ours can have this id, and its path may be anywhere
        o = self.options
        async with self._lock(wid):
            f = VmFiles(self.dir_of(wid))
            if not f.dir.is_dir():  # never made, or a destroy got past its rename and died
                await kill_strays(f.dir, None, None, o.term_grace_s)
                await asyncio.to_thread(purge_trash, self.root)
                return
            if (task := self._stops.pop(wid, None)) is not None:
                task.cancel()
            proc = self._settle(wid, f)
            jail = self._jail(f, proc)
            if proc is not None and proc.alive():
                await self._stop(wid, f, o.destroy_timeout_s)
            failpoint(FP + "destroy.after_stop")
            await kill_strays(f.dir, jail, None, o.term_grace_s)
            self._unwatch(wid)
            self._procs.pop(wid, None)
            await asyncio.to_thread(remove_jail, jail, o.jailer)
            # One rename takes the workload away whole; what a crash leaves of the
            # removal is a trash directory, which list() finishes.
            trash = self.root / f"{TRASH}{wid}-{secrets.token_hex(4)}"
            try:
                await asyncio.to_thread(os.rename, f.dir, trash)
            except OSError as exc:
                raise DriverError(f"workload {wid}: can't remove {f.dir}: {exc}") from exc
            failpoint(FP + "destroy.after_rename")
            await asyncio.to_thread(shutil.rmtree, trash, True)
        self._locks.pop(wid, None)
        logger.info("firecracker workload destroyed id=%s", wid)

    async def status(self, wid: str) -> Status:
        return await self._status(wid, self._files(wid))

    async def reattach(self, wid: str) -> Status:
        async with self._lock(wid):
            f = self._files(wid)
            proc = self._settle(wid, f)
            alive = proc is not None and proc.alive()
            keep = proc.record if proc is not None and alive else None
            await kill_strays(f.dir, self._jail(f, proc), keep, self.options.term_grace_s)
            if proc is not None and alive:
                self._procs[wid] = proc
                self._watch(wid, proc)
                logger.info("firecracker reattached id=%s pid=%s", wid, proc.record.pid)
                if (deadline := stop_deadline(f)) is not None:
                    self._resume_stop(wid, deadline)
                return await self._running_status(wid, proc)
            if proc is not None and load_exit(f) is None:  # it ended while meshd was away
                status = exit_status(f, None, stop_requested=f.stop.exists())
                save_exit(f, status)
                return status
            return await self._status(wid, f)

    async def list(self) -> list[str]:
        await asyncio.to_thread(purge_trash, self.root)
        return await asyncio.to_thread(list_ids, self.root, self.name)

    # --- internals --------------------------------------------------------------------

    def _api(self, proc: VmProcess, timeout_s: float | None = None) -> FirecrackerApi:
        return FirecrackerApi(Path(proc.record.api_sock), timeout_s or self.options.api_timeout_s)

    def _lock(self, wid: str) -> asyncio.Lock:
        return self._locks.setdefault(wid, asyncio.Lock())

    def _files(self, wid: str) -> VmFiles:
        f = VmFiles(self.dir_of(wid))
        if not valid_instance_id(wid) or not f.spec.is_file() or not f.config.is_file():
            raise DriverError(f"no firecracker workload {wid} on this node")
        return f

    def _proc(self, wid: str, f: VmFiles) -> VmProcess | None:
        rec = ProcessRecord.load(f.record)
        known = self._procs.get(wid)
        if rec is None or (known is not None and known.record == rec):
            return known if rec is not None else None
        return VmProcess(rec)

    def _settle(self, wid: str, f: VmFiles) -> VmProcess | None:
        """The workload's process: the recorded one, or one a meshd killed between the
        spawn and ``process.json`` started, adopted (see ``firecracker_vm.adopt``)."""
        proc = self._proc(wid, f)
        if proc is not None and proc.alive():
            return proc
        adopted = adopt(f)
        if adopted is None:
            return proc
        logger.warning(
            "adopted a firecracker started before meshd died id=%s pid=%s", wid, adopted.pid
        )
        return VmProcess(adopted)

    def _jail(self, f: VmFiles, proc: VmProcess | None) -> str | None:
        """The jail of the workload's last run (whose chrooted processes are its own)."""
        if proc is not None:
            return proc.record.jail
        intent = read_json(f.intent) or {}
        jail = intent.get("jail")
        return jail if isinstance(jail, str) else None

    def _resume_stop(self, wid: str, deadline: float) -> None:
        """A stop meshd began before it died: finish it, forcing it at its deadline."""
        if wid in self._stops:
            return
        left = max(0.0, deadline - time.time())

        async def finish() -> None:
            try:
                async with self._lock(wid):
                    status = await self._stop(wid, self._files(wid), left)
            except DriverError as exc:
                logger.error("resumed stop failed id=%s error=%s", wid, exc)
                return
            finally:
                self._stops.pop(wid, None)
            self.on_change(wid, status)

        logger.info("resuming an interrupted stop id=%s left_s=%.1f", wid, left)
        self._stops[wid] = asyncio.get_running_loop().create_task(finish())

    def _prepare(self, wid: str, spec: WorkloadSpec, f: VmFiles) -> None:
        # The caller removed any half-made directory; FileExistsError here is a race.
        f.dir.mkdir(parents=True)
        failpoint(FP + "create.after_mkdir")
        try:
            rootfs = None
            if spec.image:
                # A sparse copy (and a reflink where the filesystem can): images are mostly holes.
                cp = ["cp", "--sparse=always", "--reflink=auto", spec.image, str(f.rootfs)]
                subprocess.run(cp, check=True, capture_output=True)
                fd = os.open(f.rootfs, os.O_RDONLY)
                try:
                    os.fsync(fd)  # on disk before spec.json says the directory is complete
                finally:
                    os.close(fd)
                rootfs = f.rootfs
                failpoint(FP + "create.after_rootfs")
            nics: Sequence[NetworkInterface] = mesh_nics(wid, spec)
            if not nics and self.options.nics:
                nics = self.options.nics(wid, spec)
            write_json(f.config, vm_config(spec, rootfs=rootfs, log_path=f.fclog, nics=nics))
            failpoint(FP + "create.after_config")
            # spec.json last: its presence says the directory is complete (list() and
            # every other call go by it); one without it is a create cut short.
            write_durably(f.spec, dumps(spec))
            failpoint(FP + "create.after_spec")
        except BaseException:
            shutil.rmtree(f.dir, ignore_errors=True)
            raise

    async def _boot(
        self, wid: str, spec: WorkloadSpec, proc: VmProcess, config: dict[str, Any], offset: int
    ) -> Status:
        f, o = VmFiles(self.dir_of(wid)), self.options
        began = time.monotonic()
        limit = o.boot_timeout_s if spec.boot_timeout_s is None else spec.boot_timeout_s
        deadline = began + limit
        try:
            info = await self._wait_api(proc, deadline)
            if o.boot == "api":
                async with self._api(proc) as api:
                    await api.configure(config)
                    await api.action("InstanceStart")
            if spec.ready_marker:
                await wait_for_marker(
                    f, spec.ready_marker, offset, deadline, o.boot_poll_s, proc.alive
                )
        except (BootFailed, FirecrackerApiError, TimeoutError) as exc:
            proc.signal(signal.SIGKILL)
            await proc.wait_dead(o.term_grace_s, o.boot_poll_s)
            code = proc.exit_code()
            self._procs.pop(wid, None)
            detail = str(exc)
            if isinstance(exc, TimeoutError):
                detail = f"the guest did not print {exc} within {limit:g} s"
            elif code is not None:
                detail += f" (exit status {code}: {last_line(f.console)})"
            status = Status(WorkloadState.FAILED, detail=detail, exit_code=code)
            save_exit(f, status)
            logger.warning("firecracker boot failed id=%s detail=%s", wid, detail)
            return status
        self._watch(wid, proc)
        return Status(
            WorkloadState.RUNNING,
            pid=proc.record.pid,
            detail=f"booted in {time.monotonic() - began:.2f} s ({o.boot} boot)",
            started_at=proc.record.started_at,
            extra={"boot": o.boot, "jailed": proc.record.jail is not None, **info},
        )

    async def _wait_api(self, proc: VmProcess, deadline: float) -> dict[str, Any]:
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not proc.alive():
                raise BootFailed("firecracker exited before its API answered")
            try:
                async with self._api(proc) as api:
                    info = await api.describe()
                return {"vmm_version": info.get("vmm_version"), "vm_state": info.get("state")}
            except FirecrackerApiError as exc:
                last = exc
            await asyncio.sleep(self.options.boot_poll_s)
        raise BootFailed(f"firecracker's API did not answer in time ({last})")

    async def _status(self, wid: str, f: VmFiles) -> Status:
        proc = self._proc(wid, f)
        if proc is not None and proc.alive():
            return await self._running_status(wid, proc)
        saved = load_exit(f)
        if saved is not None:
            return saved
        if proc is not None:  # it ended and its watcher has not written exit.json yet
            return exit_status(f, proc.exit_code(), stop_requested=f.stop.exists())
        return Status(WorkloadState.STOPPED, detail="created; not started")

    async def _running_status(self, wid: str, proc: VmProcess) -> Status:
        rec = proc.record
        try:
            async with self._api(proc) as api:
                info = await api.describe()
        except FirecrackerApiError as exc:
            return Status(
                WorkloadState.RUNNING,
                pid=rec.pid,
                started_at=rec.started_at,
                detail=f"running, but its API does not answer: {exc}",
            )
        if info.get("id") != wid:
            logger.warning("firecracker id mismatch id=%s api_id=%s", wid, info.get("id"))
        vm_state = str(info.get("state"))
        state = WorkloadState.STARTING if vm_state == "Not started" else WorkloadState.RUNNING
        return Status(
            state,
            pid=rec.pid,
            started_at=rec.started_at,
            detail=f"firecracker {info.get('vmm_version')}: {vm_state}",
            extra={"vm_state": vm_state, "jailed": rec.jail is not None},
        )

    async def _stop(self, wid: str, f: VmFiles, timeout_s: float) -> Status:
        o = self.options
        # Written before the first signal: a meshd that dies now still knows, once
        # restarted, that this run is to end by the deadline (see reattach).
        write_json(f.stop, {"deadline": time.time() + max(timeout_s, 0.0)})
        failpoint(FP + "stop.after_mark")
        self._unwatch(wid)
        proc = self._settle(wid, f)
        alive = proc is not None and proc.alive()
        keep = proc.record if proc is not None and alive else None
        await kill_strays(f.dir, self._jail(f, proc), keep, o.term_grace_s)
        how = "nothing: it was not running"
        if proc is not None and alive:
            how = await self._shut_down(wid, proc, timeout_s)
        await kill_strays(f.dir, self._jail(f, proc), None, o.term_grace_s)
        code = proc.exit_code() if proc is not None else None
        self._procs.pop(wid, None)
        status = Status(WorkloadState.STOPPED, detail=f"stopped by {how}", exit_code=code)
        save_exit(f, status, proc.record.api_sock if proc is not None else None)
        logger.info("firecracker stopped id=%s how=%s exit=%s", wid, how, code)
        return status

    async def _shut_down(self, wid: str, proc: VmProcess, timeout_s: float) -> str:
        o = self.options
        if timeout_s > 0:
            try:
                async with self._api(proc, min(o.api_timeout_s, timeout_s)) as api:
                    await api.action("SendCtrlAltDel")
                if await proc.wait_dead(timeout_s, o.boot_poll_s):
                    return "ctrl-alt-del"
            except FirecrackerApiError as exc:
                logger.info("firecracker ctrl-alt-del failed id=%s error=%s", wid, exc)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            proc.signal(sig)
            failpoint(f"{FP}stop.after_{sig.name.lower()}")
            if await proc.wait_dead(o.term_grace_s, o.boot_poll_s):
                return sig.name
        raise DriverError(f"firecracker pid {proc.record.pid} of {wid} outlived SIGKILL")

    def _watch(self, wid: str, proc: VmProcess) -> None:
        self._unwatch(wid)
        self._watchers[wid] = asyncio.get_running_loop().create_task(self._monitor(wid, proc))

    def _unwatch(self, wid: str) -> None:
        task = self._watchers.pop(wid, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _monitor(self, wid: str, proc: VmProcess) -> None:
        while proc.alive():  # noqa: ASYNC110 - no event to wait for
            await asyncio.sleep(self.options.poll_interval_s)
        # Nothing below awaits, so a stop() or destroy() cannot interleave.
        self._watchers.pop(wid, None)
        if self._procs.get(wid) is proc:
            del self._procs[wid]
        f = VmFiles(self.dir_of(wid))
        status = exit_status(f, proc.exit_code(), stop_requested=f.stop.exists())
        try:
            save_exit(f, status, proc.record.api_sock)
        except OSError as exc:
            logger.warning("cannot record the exit id=%s error=%s", wid, exc)
        logger.info("firecracker exited id=%s state=%s detail=%s", wid, status.state, status.detail)
        try:
            self.on_change(wid, status)
        except Exception:
            logger.exception("on_change failed id=%s", wid)
