"""The ``qemu`` driver: one daemonized QEMU per workload, watched over QMP.

Theory of operation
-------------------
DESIGN.md §8. ``create`` checks the spec (qemu_args.validate, then the files: the
kernel must look like a bzImage or an ELF vmlinux, the image must be readable by
``qemu-img``), then prepares the workload's directory: ``spec.json``, a qcow2 overlay
on the base image, a NoCloud seed. Anything refused leaves no directory behind.

``start`` runs ``qemu-system-x86_64 ... -daemonize -pidfile``: the parent returns once
the VM is set up (0.06-0.2 s), with QEMU's own error on stderr if it refused. The pid,
its start time and the boot id go to ``run.json``; then QMP is connected. With a
``ready_marker`` the console file is polled (never blocking the loop) until the line
appears, the guest fails or the boot timeout passes (the spec's ``boot_timeout_s``,
else ``QemuTuning.boot_timeout_s``); a guest that does not make it
is quit (SIGKILL if need be) and ``start`` returns ``failed`` with the reason and the
last console lines. Without a marker the VM is running once QMP answers.

The accelerator is KVM only where it really works, else TCG (qemu_args.choose_accel);
it is in every status (``extra["accel"]``) and in the detail sentence.

``stop`` presses the ACPI power button (``system_powerdown``), waits ``timeout_s``,
then ``quit``, then SIGKILL by pid (checked against the start time). ``exit.json``
records how each run ended, so ``status`` (read from the host: ``/proc`` and QMP, not
from memory) tells a guest that powered off (``stopped``) from a crash (``failed``)
even after a daemon restart. ``reattach`` reconnects QMP (~1 ms) to a QEMU still
running, resumes waiting for the marker of one that was still booting, and reports one
that died while meshd was away. ``close`` hangs up QMP and leaves the VMs running.

Networking: a workload with NICs on mesh networks (``spec.nics``) gets one tap netdev
and virtio-net device per NIC, with its stable MAC; the taps are made (and removed) by
the runner (:mod:`meshd.shell.guests`), and a start whose tap is missing is refused. A
workload without NICs gets a tap on the driver's bridge when it has one (``bridge=`` or
``$MESHD_QEMU_BRIDGE``); root only, the bridge must exist. A workload does not choose it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from meshd.adapters.drivers import qemu_host as host
from meshd.adapters.drivers.base import Driver, OnChange, Status, WorkloadState
from meshd.adapters.drivers.qemu_args import (
    QemuTuning,
    choose_accel,
    plan_for,
    read_tsc_khz,
    tap_name,
    validate,
)
from meshd.adapters.drivers.specfile import SPEC_NAME, read_spec
from meshd.core.spec import WorkloadSpec
from meshd.errors import DriverError
from meshd.failpoints import failpoint

if TYPE_CHECKING:
    # qemu.qmp is imported with the first QMP connection: a node that runs no VM
    # never loads it (see _connect).
    from meshd.adapters.drivers.qemu_qmp import QmpSession

logger = logging.getLogger(__name__)
SOCK_PATH_MAX = 107  # sun_path
_BRIDGE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # an interface name (IFNAMSIZ)


class QemuDriver(Driver):
    name = "qemu"

    def __init__(
        self,
        root: Path,
        on_change: OnChange,
        *,
        tuning: QemuTuning | None = None,
        bridge: str | None = None,
        binary: str | None = None,
    ) -> None:
        super().__init__(root, on_change)
        self.tuning = tuning or QemuTuning()
        self.bridge = bridge or os.environ.get("MESHD_QEMU_BRIDGE") or None
        if self.bridge is not None and not _BRIDGE_RE.match(self.bridge):
            raise DriverError(
                f"the qemu bridge {self.bridge!r} is not an interface name; "
                "fix MESHD_QEMU_BRIDGE (or the driver's bridge setting)"
            )
        self.binary = binary or os.environ.get("MESHD_QEMU") or "qemu-system-x86_64"
        self.accel = choose_accel()
        self.tsc_khz = read_tsc_khz()
        self._sessions: dict[str, QmpSession] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._quiet: set[str] = set()  # wids whose changes the caller is waiting for
        self._boots: dict[str, asyncio.Task[None]] = {}

    def boot_timeout(self, spec: WorkloadSpec) -> float:
        """The spec's boot timeout, else this driver's default (the config's)."""
        return self.tuning.boot_timeout_s if spec.boot_timeout_s is None else spec.boot_timeout_s

    # -- the interface ------------------------------------------------------------

    def capabilities(self) -> frozenset[str]:
        if shutil.which(self.binary) is None:
            return frozenset()  # listed, but every create would fail: don't bid for it
        offers = {"driver:qemu", self.accel.name}
        if self.bridge is not None and host.has_netdev(self.bridge, "bridge"):
            offers.add(f"bridge:{self.bridge}")  # guests' taps can go on it here
        return frozenset(offers)

    async def create(self, wid: str, spec: WorkloadSpec) -> Status:
        validate(wid, spec)
        wdir = self.dir_of(wid)
        if shutil.which(self.binary) is None:
            raise DriverError(f"{self.binary} is not installed (apt-get install qemu-system-x86)")
        if len(str(wdir.resolve() / "qmp.sock")) > SOCK_PATH_MAX:
            raise DriverError(f"the workload directory {wdir} is too deep for a unix socket")
        spec = await asyncio.to_thread(host.check_files, wid, spec)
        if (wdir / SPEC_NAME).exists():  # created before: the same spec is no error
            if self._spec(wid) != spec:
                raise DriverError(f"workload {wid!r} already exists with a different spec")
            return await self.status(wid)
        if wdir.exists():  # no spec.json: a create cut short (it is written last); redo it
            logger.warning("removing a half-made qemu workload directory wid=%s", wid)
            await host.kill_strays(wdir, None, self.tuning.kill_timeout_s)
            await asyncio.to_thread(shutil.rmtree, wdir, True)
        base_fmt = ""
        if spec.image:
            base_fmt, vsize = await host.image_info(Path(spec.image), self.tuning.tool_timeout_s)
            if spec.disk and spec.disk < vsize:
                raise DriverError(
                    f"workload {wid!r}: disk {spec.disk} bytes is smaller than the "
                    f"image's {vsize} bytes"
                )
        await host.prepare(wdir, wid, spec, base_fmt, self.tuning.tool_timeout_s)
        return self._status(WorkloadState.STOPPED, f"created; will run on {self.accel.reason}")

    async def start(self, wid: str) -> Status:
        async with self._lock(wid):
            spec = self._spec(wid)
            rec = self._record(wid)
            if rec and host.alive(rec):
                if wid not in self._sessions:
                    await self._reconnect(wid, spec, rec)
                return await self.status(wid)
            await host.kill_strays(self.dir_of(wid), None, self.tuning.kill_timeout_s)
            self._quiet.add(wid)
            try:
                return await self._start(wid, spec)
            finally:
                self._quiet.discard(wid)

    async def stop(self, wid: str, timeout_s: float) -> Status:
        async with self._lock(wid):
            self._spec(wid)
            return await self._stop(wid, timeout_s)

    async def destroy(self, wid: str) -> None:
        wdir = self.dir_of(wid)
        async with self._lock(wid):
            if (wdir / SPEC_NAME).exists():
                self._spec(wid)  # refuses another driver's workload
                await self._stop(wid, self.tuning.destroy_grace_s)
            failpoint(host.FP + "destroy.after_stop")
            if wdir.exists():
                await host.kill_strays(wdir, None, self.tuning.kill_timeout_s)
            await host.tap_down(tap_name(wid), self.tuning.tool_timeout_s)
            if wdir.exists():  # one rename takes it away whole; list() purges the rest
                trash = self.root / f".trash-{wid}-{os.getpid()}-{time.monotonic_ns()}"
                await asyncio.to_thread(os.rename, wdir, trash)
                failpoint(host.FP + "destroy.after_rename")
                await asyncio.to_thread(shutil.rmtree, trash, True)
        self._locks.pop(wid, None)

    async def status(self, wid: str) -> Status:
        wdir = self.dir_of(wid)
        spec = self._spec(wid)
        rec = host.RunRecord.load(wdir / host.RUN_NAME)
        if rec and host.alive(rec):
            sess = self._sessions.get(wid)
            runstate = await sess.runstate() if sess else None
            extra = {"machine": rec.machine, "runstate": runstate}
            failure = sess.failure_of(runstate) if sess else None
            if failure is not None:
                return self._status(WorkloadState.FAILED, failure, rec, **extra)
            if not rec.ready and spec.ready_marker:
                return self._status(WorkloadState.STARTING, "booting", rec, **extra)
            return self._status(WorkloadState.RUNNING, "running", rec, **extra)
        ended = host.read_json(wdir / host.EXIT_NAME)
        if ended:
            return self._status(WorkloadState(ended["state"]), str(ended["detail"]))
        if rec:
            return self._status(*host.unwatched_exit(self.log_path(wid), rec))
        return self._status(WorkloadState.STOPPED, "created, not started")

    async def list(self) -> list[str]:
        await asyncio.to_thread(_purge_trash, self.root)
        return await asyncio.to_thread(host.scan, self.root, self.name)

    async def reattach(self, wid: str) -> Status:
        async with self._lock(wid):
            spec = self._spec(wid)
            wdir = self.dir_of(wid)
            rec = self._record(wid)
            alive = rec is not None and host.alive(rec)
            await host.kill_strays(wdir, rec if alive else None, self.tuning.kill_timeout_s)
            if rec is None:
                return await self.status(wid)
            await self._reconnect(wid, spec, rec)
            return await self.status(wid)

    async def _reconnect(self, wid: str, spec: WorkloadSpec, rec: host.RunRecord) -> None:
        """Watch a running QEMU again: QMP, and the rest of its boot if it was booting."""
        if host.alive(rec) and wid not in self._sessions:
            try:
                await self._connect(wid)
            except DriverError as exc:
                logger.warning("qemu reattach without QMP wid=%s error=%s", wid, exc)
        if not host.alive(rec):  # dead before, or died while we connected
            await self._finish(wid, rec, *host.unwatched_exit(self.log_path(wid), rec))
            return
        if not rec.ready and spec.ready_marker and wid not in self._boots:
            self._boots[wid] = asyncio.get_running_loop().create_task(
                self._resume_boot(wid, spec, rec)
            )

    def _record(self, wid: str) -> host.RunRecord | None:
        """The run record, or the QEMU a meshd launched before it died, adopted."""
        wdir = self.dir_of(wid)
        rec = host.RunRecord.load(wdir / host.RUN_NAME)
        if rec is not None and host.alive(rec):
            return rec
        adopted = host.adopt(wdir)
        if adopted is not None:
            logger.warning(
                "adopted a QEMU launched before meshd died wid=%s pid=%s", wid, adopted.pid
            )
            return adopted
        return rec

    def log_path(self, wid: str) -> Path:
        return self.dir_of(wid) / "console.log"

    async def close(self) -> None:
        """Hang up every QMP connection; the VMs keep running (a daemon restart)."""
        for task in self._boots.values():
            task.cancel()
        await asyncio.gather(*self._boots.values(), return_exceptions=True)
        self._boots.clear()
        sessions, self._sessions = list(self._sessions.values()), {}
        for sess in sessions:
            await sess.close()

    # -- start and stop -----------------------------------------------------------

    async def _start(self, wid: str, spec: WorkloadSpec) -> Status:
        wdir = self.dir_of(wid)
        if spec.env:  # create refuses env: only a spec.json from an older meshd has one
            logger.warning(
                "qemu ignores a workload's env id=%s keys=%s: QEMU_BRIDGE no longer chooses "
                "the bridge, the node's does (MESHD_QEMU_BRIDGE)",
                wid,
                ",".join(sorted(spec.env)),
            )
        await self._drop_session(wid)
        console = self.log_path(wid)
        plan = plan_for(
            wid,
            spec,
            wdir.resolve(),
            self.binary,
            self.accel.name,
            self.tsc_khz,
            self.bridge,
            has_disk=(wdir / host.OVERLAY_NAME).exists(),
            has_seed=(wdir / host.SEED_NAME).exists(),
        )
        t0 = time.monotonic()
        try:
            t = self.tuning
            rec = await host.launch(plan, wdir, t.launch_timeout_s, t.tool_timeout_s)
        except DriverError as exc:
            host.write_json(wdir / host.EXIT_NAME, {"state": "failed", "detail": str(exc)})
            return self._status(WorkloadState.FAILED, str(exc))
        pid = rec.pid
        logger.info("qemu started wid=%s pid=%s accel=%s", wid, pid, self.accel.name)
        why = None
        try:
            await self._connect(wid)
        except DriverError as exc:
            why = str(exc)
        if why is None and spec.ready_marker:
            deadline = t0 + self.boot_timeout(spec)
            why = await self._await_marker(wid, spec, rec, deadline)
        if why is not None:
            detail = f"workload {wid} did not boot: {why}"
            last = host.tail(console)
            detail += f" (console: {last})" if last else " (the console is empty)"
            await self._kill(wid, rec, 0)
            await self._finish(wid, rec, WorkloadState.FAILED, detail)
            return self._status(WorkloadState.FAILED, detail)
        rec = dataclasses.replace(rec, ready=True)
        rec.save(wdir / host.RUN_NAME)
        boot_s = round(time.monotonic() - t0, 3)
        return self._status(
            WorkloadState.RUNNING, f"running, ready in {boot_s} s", rec, boot_s=boot_s
        )

    async def _await_marker(
        self, wid: str, spec: WorkloadSpec, rec: host.RunRecord, deadline: float
    ) -> str | None:
        def failure() -> str | None:
            sess = self._sessions.get(wid)
            return sess.failure if sess else None

        assert spec.ready_marker is not None
        return await host.await_marker(
            self.log_path(wid),
            spec.ready_marker,
            rec,
            deadline,
            self.boot_timeout(spec),
            self.tuning.console_poll_s,
            failure,
        )

    async def _resume_boot(self, wid: str, spec: WorkloadSpec, rec: host.RunRecord) -> None:
        """A VM found still booting after a restart: finish its start in the background."""
        deadline = time.monotonic() + max(
            0.0, rec.started_at + self.boot_timeout(spec) - time.time()
        )
        why = await self._await_marker(wid, spec, rec, deadline)
        self._boots.pop(wid, None)
        async with self._lock(wid):
            if why is None:
                dataclasses.replace(rec, ready=True).save(self.dir_of(wid) / host.RUN_NAME)
            elif host.alive(rec):
                self._quiet.add(wid)
                try:
                    await self._kill(wid, rec, 0)
                finally:
                    self._quiet.discard(wid)
                await self._finish(wid, rec, WorkloadState.FAILED, f"did not boot: {why}")
        self.on_change(wid, await self.status(wid))

    async def _stop(self, wid: str, timeout_s: float) -> Status:
        rec = self._record(wid)
        if rec is None or not host.alive(rec):
            await host.kill_strays(self.dir_of(wid), None, self.tuning.kill_timeout_s)
        if rec is None:
            return await self.status(wid)
        if not host.alive(rec):
            await self._finish(wid, rec, *host.unwatched_exit(self.log_path(wid), rec))
            return await self.status(wid)
        if task := self._boots.pop(wid, None):
            task.cancel()
        self._quiet.add(wid)
        try:
            how = await self._kill(wid, rec, timeout_s)
        finally:
            self._quiet.discard(wid)
        await self._finish(wid, rec, WorkloadState.STOPPED, how)
        return self._status(WorkloadState.STOPPED, how)

    async def _kill(self, wid: str, rec: host.RunRecord, grace_s: float) -> str:
        """ACPI power button (if ``grace_s``), then ``quit``, then SIGKILL; how it ended."""
        if wid not in self._sessions:
            try:
                await self._connect(wid)
            except DriverError as exc:
                logger.warning("qemu stop without QMP wid=%s error=%s", wid, exc)
        sess = self._sessions.get(wid)
        t = self.tuning
        t0 = time.monotonic()
        if grace_s > 0 and sess and await sess.runstate() == "running":
            try:
                await sess.execute("system_powerdown")
                if await host.wait_dead(rec, grace_s, t.exit_poll_s):
                    return f"the guest powered off in {time.monotonic() - t0:.2f} s"
            except DriverError as exc:
                logger.warning("qemu powerdown failed wid=%s error=%s", wid, exc)
        how = f"the guest did not power off within {grace_s:g} s; " if grace_s > 0 else ""
        try:
            if sess:
                await sess.execute("quit")
            elif host.alive(rec):
                os.kill(rec.pid, signal.SIGTERM)  # QEMU quits on SIGTERM too
        except (DriverError, ProcessLookupError):
            pass
        failpoint(host.FP + "stop.after_quit")
        if await host.wait_dead(rec, t.quit_timeout_s, t.exit_poll_s):
            return how + "QEMU quit"
        host.kill(rec)
        if await host.wait_dead(rec, t.kill_timeout_s, t.exit_poll_s):
            return how + "QEMU was killed"
        raise DriverError(f"QEMU pid {rec.pid} of workload {wid} survived SIGKILL")

    async def _finish(
        self, wid: str, rec: host.RunRecord, state: WorkloadState, detail: str
    ) -> None:
        """QEMU is gone: record how it ended, drop QMP, remove its runtime files and tap."""
        await self._drop_session(wid)
        wdir = self.dir_of(wid)
        if wdir.exists():
            host.write_json(wdir / host.EXIT_NAME, {"state": state.value, "detail": detail})
            host.remove_runtime(wdir)
        if rec.tap:
            await host.tap_down(rec.tap, self.tuning.tool_timeout_s)
        logger.info("qemu ended wid=%s state=%s detail=%s", wid, state.value, detail)
        await host.reap_exited(rec.pid)

    # -- QMP ----------------------------------------------------------------------

    async def _connect(self, wid: str) -> None:
        from meshd.adapters.drivers.qemu_qmp import QmpSession  # noqa: PLC0415 - see top

        sock = self.dir_of(wid).resolve() / "qmp.sock"
        rec = host.RunRecord.load(self.dir_of(wid) / host.RUN_NAME)

        def failed(sentence: str) -> None:
            if wid not in self._quiet:
                self.on_change(wid, self._status(WorkloadState.FAILED, sentence))

        async def exited() -> None:
            if self._sessions.get(wid) is sess:
                del self._sessions[wid]
            if wid in self._quiet:
                return  # start or stop is driving this exit and will record it
            if rec is not None:
                await self._on_exit(wid, sess, rec)

        sess = QmpSession(wid, self.tuning.qmp_command_timeout_s, failed, exited)
        await sess.open(sock, self.tuning.qmp_connect_timeout_s)
        self._sessions[wid] = sess

    async def _on_exit(self, wid: str, sess: QmpSession, rec: host.RunRecord) -> None:
        """QEMU hung up on its own: record why (from its last events) and report it."""
        data = sess.shutdown or {}
        reason = str(data.get("reason", ""))
        if sess.failure:
            state, detail = WorkloadState.FAILED, sess.failure
        elif reason == "guest-shutdown":
            state, detail = WorkloadState.STOPPED, "the guest powered off"
        elif reason.startswith("host-"):  # quit over QMP, a signal: someone meant it
            state, detail = WorkloadState.STOPPED, f"QEMU was told to quit outside meshd ({reason})"
        elif reason:
            state, detail = WorkloadState.FAILED, f"QEMU exited ({reason})"
        else:
            state, detail = WorkloadState.FAILED, "QEMU exited without a shutdown event (killed?)"
        async with self._lock(wid):
            now = host.RunRecord.load(self.dir_of(wid) / host.RUN_NAME)
            if now is None or (now.pid, now.start_ticks) != (rec.pid, rec.start_ticks):
                return  # stop, destroy or a new start got there first
            await host.wait_dead(rec, self.tuning.kill_timeout_s, self.tuning.exit_poll_s)
            await self._finish(wid, rec, state, detail)
        self.on_change(wid, await self.status(wid))

    async def _drop_session(self, wid: str) -> None:
        sess = self._sessions.pop(wid, None)
        if sess:
            await sess.close()

    # -- helpers ------------------------------------------------------------------

    def _status(
        self,
        state: WorkloadState,
        detail: str,
        rec: host.RunRecord | None = None,
        **extra: object,
    ) -> Status:
        accel = rec.accel if rec else self.accel.name
        reason = self.accel.reason if accel == self.accel.name else accel
        return Status(
            state=state,
            pid=rec.pid if rec else None,
            detail=f"{detail} ({reason})" if rec else detail,
            started_at=rec.started_at if rec else None,
            extra={"accel": accel, **extra},
        )

    def _spec(self, wid: str) -> WorkloadSpec:
        try:
            spec = read_spec(self.dir_of(wid))
        except OSError as exc:
            raise DriverError(f"no qemu workload {wid!r} on this node") from exc
        if spec.driver != self.name:
            raise DriverError(f"workload {wid!r} belongs to the {spec.driver!r} driver")
        return spec

    def _lock(self, wid: str) -> asyncio.Lock:
        return self._locks.setdefault(wid, asyncio.Lock())


def _purge_trash(root: Path) -> None:
    """Finish removing what a destroy renamed away before meshd died."""
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith(".trash-"):
                shutil.rmtree(d, ignore_errors=True)
