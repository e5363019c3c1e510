"""The ``process`` driver: a supervised host process that outlives meshd.

Theory of operation
-------------------
A workload is one command (``spec.command``, split with :func:`shlex.split`, never
given to a shell) started by :class:`subprocess.Popen` in its own session: its pid is
also its process group and session id, so ``stop`` signals the whole group and a sweep
by session id finds what is left of it. stdin is ``/dev/null``; stdout and stderr are
appended to ``console.log``; the working directory is the workload's directory; the
environment is PATH (meshd's), HOME (the workload directory), LANG=C.UTF-8,
MESHD_WORKLOAD_ID and MESHD_WORKLOAD_NAME, with ``spec.env`` on top.

Files in ``root/<id>/``: ``spec.json`` (what was asked), ``process.json`` (pid, start
time in clock ticks since boot from /proc/<pid>/stat field 22, the boot id, whether
meshd asked it to stop, and how the last run ended), ``pidfile`` (while it may be
running) and ``console.log``.

Crash safety: every step is written down before its effect can't be taken back, in a
form the next meshd reads (every record is replaced atomically: temp file, fsync,
rename). ``start`` writes the *intent* (state ``spawning`` and a fresh run id) before
the fork and gives the process ``MESHD_RUN=<id>:<run>`` in its environment (set last,
so spec.env can't hide it); a meshd that dies between the fork and writing the pid
finds the process by that marker and adopts it, or learns that it never ran (stopped,
so ``start`` works). Any marked process that no record accounts for (a copy from an
older run) is killed, and waited for, before a new run starts and on reattach, stop
and destroy: never two copies, never an untracked one. ``stop`` writes its deadline
before the first signal; a restarted meshd finishes an interrupted stop by it (SIGKILL
to the whole group at the deadline). ``destroy`` renames the directory away in one
step before removing it; ``list`` finishes the removal of such leftovers. A directory
without ``spec.json`` (a create cut short) is reused by the next ``create``. Every
step has a failpoint (:mod:`meshd.failpoints`) named ``driver.process.<step>``.

Identity: a pid proves nothing, since a zombie or a recycled pid passes ``kill(pid, 0)``.
A workload runs iff /proc/<pid>/stat exists, its state is not Z/X, its start time is
the recorded one, and the boot id is this boot's.

Monitoring: Popen is disowned right after the spawn (left alone, its ``__del__`` would
queue a running child on ``subprocess._active``, whose cleanup reaps it behind our back
and loses the exit status) and each running workload gets a :class:`_Watch`: a pidfd
registered with the event loop, readable when the process exits, or where pidfds are
missing a poll of /proc every ``poll_interval_s``. On exit ``waitid`` reaps the process
if it is our child and yields its exit status; a process adopted by ``reattach``
belongs to init, so its status is lost. No thread, pipe or parent link ties a workload
to meshd: if meshd dies, the kernel reparents it and the next meshd reattaches.

Outcome: exit 0, or any exit meshd caused with ``stop``, is *stopped*; a non-zero
code, a signal or an unknown status is *failed*. Every exit seen by a watch is
written to process.json and reported once through ``on_change`` (also after ``stop``).

Not done: resource limits. ``memory`` and ``cpus`` are checked, not enforced.
RLIMIT_AS caps address space (which JITs and Go reserve by the gigabyte), not memory
use; enforcement belongs to a delegated cgroup v2 subtree (memory.max, cpu.max). Only
spec.json was fsynced: process.json need only survive meshd restarts, and a reboot
ends the workloads anyway (the boot id check sees that). Since the crash-safety work
every record is fsynced too: the cost is a few milliseconds per start and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshd.adapters.drivers.base import Driver, OnChange, Status, WorkloadState
from meshd.adapters.drivers.procfs import (
    boot_id,
    environ_value,
    find_by_env,
    is_alive,
    read_stat,
    session_members,
    write_durably,
)
from meshd.adapters.drivers.specfile import SPEC_NAME, read_spec, spec_driver
from meshd.core.spec import WorkloadSpec, dumps
from meshd.errors import DriverError
from meshd.failpoints import declare, failpoint

logger = logging.getLogger(__name__)

SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FALLBACK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Set last in every workload's environment (spec.env can't override it): "<id>:<run>".
# Its processes and their children carry it, so a scan of /proc finds every one of
# them, recorded or not (a meshd killed between the fork and writing the pid down).
MARKER = "MESHD_RUN"
ROOT_MARKER = "MESHD_ROOT"  # the driver root that started the process (see marked())
TRASH = ".trash-"  # a destroyed workload's directory, renamed before it is removed

_FP = "driver.process."
declare(
    *(
        _FP + step
        for step in (
            "create.after_mkdir",
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


def _write(path: Path, text: str | bytes, durable: bool = True) -> None:
    write_durably(path, text.encode() if isinstance(text, str) else text)


def _load(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("unreadable process record path=%s error=%s", path, exc)
        return {}
    return raw if isinstance(raw, dict) else {}


def _list_ids(root: Path, driver: str) -> list[str]:
    if not root.is_dir():
        return []
    return [
        d.name
        for d in sorted(root.iterdir())
        if SAFE_ID.fullmatch(d.name) and d.is_dir() and spec_driver(d) == driver
    ]


def purge_trash(root: Path) -> None:
    """Finish removing what a destroy renamed away before meshd died."""
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith(TRASH):
                shutil.rmtree(d, ignore_errors=True)


def marked(wid: str, root: Path) -> list[tuple[int, str]]:
    """(pid, run) of every live process started for workload ``wid`` by a meshd whose
    driver root is ``root`` (or by one that did not say: before ``MESHD_ROOT``).

    Several meshd on one host (the ``local`` preset, tests) may each run a generation
    of one workload id when it moves between them: a node must not kill the copy its
    successor on the same host runs."""
    prefix = wid + ":"
    return [
        (st.pid, value[len(prefix) :])
        for st, value in find_by_env(MARKER, prefix)
        if environ_value(st.pid, ROOT_MARKER) in (None, str(root))
    ]


def kill_marked(wid: str, root: Path, keep_run: str | None = None) -> list[int]:
    """SIGKILL every process of ``wid`` (under ``root``) except those of run
    ``keep_run``; their pids."""
    killed = []
    for pid, run in marked(wid, root):
        if keep_run is not None and run == keep_run:
            continue
        logger.warning("killing an untracked process of a workload id=%s pid=%s", wid, pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown (meshd did not start this process)"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with code {code}"


def check_spec(wid: str, spec: WorkloadSpec, driver: str) -> list[str]:
    """The argv of workload ``wid``, or a DriverError saying what is wrong with it."""
    command, cpus, memory = spec.command, spec.cpus, spec.memory
    if not isinstance(wid, str) or not SAFE_ID.fullmatch(wid):
        raise DriverError(f"workload id {wid!r} is not a safe name (letters, digits, . _ -)")
    if spec.driver != driver:
        raise DriverError(f"workload {wid} is for the {spec.driver!r} driver, not {driver!r}")
    cpu_value: object = cpus
    if not isinstance(cpu_value, int | float) or not math.isfinite(cpu_value) or cpu_value <= 0:
        raise DriverError(f"workload {wid}: cpus must be a positive number, not {cpus!r}")
    mem_value: object = memory
    if not isinstance(mem_value, int) or isinstance(mem_value, bool) or mem_value <= 0:
        raise DriverError(f"workload {wid}: memory must be a positive byte count, not {memory!r}")
    env: object = spec.env
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
        for k, v in env.items()
    ):
        raise DriverError(f"workload {wid}: env must map names (no '=' or NUL) to strings")
    if not isinstance(command, str) or not command.strip():
        raise DriverError(f"workload {wid}: a process workload needs a command")
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise DriverError(f"workload {wid}: can't split command {command!r}: {exc}") from exc
    if not argv or "\0" in command:
        raise DriverError(f"workload {wid}: command {command!r} is not a usable argv")
    exe, path = argv[0], env.get("PATH") or os.environ.get("PATH") or _FALLBACK_PATH
    if "/" in exe:
        if not os.path.isabs(exe):
            raise DriverError(f"workload {wid}: give {exe!r} as an absolute path or a name")
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise DriverError(f"workload {wid}: {exe} is not an executable file")
    elif shutil.which(exe, path=path) is None:
        raise DriverError(f"workload {wid}: {exe!r} is not on PATH ({path})")
    return argv


class ProcessDriver(Driver):
    """Runs each workload as a host process in its own session; see the module doc."""

    name = "process"

    def __init__(
        self,
        root: Path,
        on_change: OnChange,
        *,
        poll_interval_s: float = 0.5,  # exit detection period where pidfds are missing
        destroy_timeout_s: float = 10.0,  # graceful-stop budget of destroy
        kill_wait_s: float = 5.0,  # how long SIGKILL may take before stop gives up
    ) -> None:
        super().__init__(root, on_change)
        self.poll_interval_s = poll_interval_s
        self.destroy_timeout_s = destroy_timeout_s
        self.kill_wait_s = kill_wait_s
        self.boot_id = boot_id()
        self._watches: dict[str, _Watch] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._stops: dict[str, asyncio.Task[None]] = {}  # stops resumed after a restart

    def log_path(self, wid: str) -> Path:
        return self.dir_of(wid) / "console.log"

    def detach(self) -> None:
        """Stop watching every workload and leave them running (what meshd does on exit)."""
        for watch in list(self._watches.values()):
            watch.close()
        self._watches.clear()
        for task in self._stops.values():
            task.cancel()
        self._stops.clear()

    async def create(self, wid: str, spec: WorkloadSpec) -> Status:
        check_spec(wid, spec, self.name)
        async with self._lock(wid):
            if (self.dir_of(wid) / SPEC_NAME).exists():
                return self._create(wid, spec)
            # mkdir and an fsynced spec.json: file IO only, off the event loop.
            return await asyncio.to_thread(self._create, wid, spec)

    async def start(self, wid: str) -> Status:
        async with self._lock(wid):
            rec = self._settle(wid)
            status = self._status(wid)
            if status.state is WorkloadState.RUNNING and status.pid is not None:
                self._watch(wid, status.pid)
                return status
            self._sweep(rec)
            await self._kill_strays(wid, None)  # nothing of it may run beside the new run
            # The fsynced intent, the fork and the fsynced record: off the event loop;
            # the watch (loop state) is set up back on it.
            status = await asyncio.to_thread(self._spawn, wid, self._spec(wid))
            if status.pid is not None:
                self._watch(wid, status.pid)
                logger.info("workload started id=%s pid=%s", wid, status.pid)
            return status

    async def stop(self, wid: str, timeout_s: float) -> Status:
        async with self._lock(wid):
            self._settle(wid)
            status = self._status(wid)
            rec = _load(self.dir_of(wid) / "process.json")
            if status.state is not WorkloadState.RUNNING or status.pid is None:
                self._sweep(rec)
                await self._kill_strays(wid, None)
                return status
            # Written before the first signal: a meshd that dies now still knows, once
            # restarted, that this run is to end by the deadline (see reattach).
            rec |= {"stopping": True, "stop_deadline": time.time() + max(timeout_s, 0.0)}
            _write(self.dir_of(wid) / "process.json", json.dumps(rec))
            failpoint(_FP + "stop.after_mark")
            pid, watch = status.pid, self._watch(wid, status.pid)
            self._signal(pid, rec, signal.SIGTERM)
            failpoint(_FP + "stop.after_sigterm")
            if not await _wait(watch.exited, timeout_s):
                await self._force(wid, pid, rec, watch, timeout_s)
            self._sweep(rec)
            await self._kill_strays(wid, None)
            return watch.exited.result()

    async def _force(
        self, wid: str, pid: int, rec: dict[str, Any], watch: _Watch, waited_s: float
    ) -> None:
        """SIGKILL the run's whole process group; a DriverError if even that fails."""
        logger.warning("workload ignored SIGTERM id=%s pid=%s timeout_s=%s", wid, pid, waited_s)
        self._signal(pid, rec, signal.SIGKILL)
        failpoint(_FP + "stop.after_sigkill")
        if not await _wait(watch.exited, self.kill_wait_s):
            raise DriverError(
                f"workload {wid}: pid {pid} outlived SIGKILL by {self.kill_wait_s} s "
                "(stuck in the kernel, state D?); it is still counted as running"
            )

    async def destroy(self, wid: str) -> None:
        d = self.dir_of(wid)
        if not SAFE_ID.fullmatch(wid):
            return
        if not d.is_dir():  # never made, or a destroy got past its rename before dying
            await self._kill_strays(wid, None)
            purge_trash(self.root)
            return
        if (d / SPEC_NAME).is_file():
            await self.stop(wid, self.destroy_timeout_s)
        failpoint(_FP + "destroy.after_stop")
        async with self._lock(wid):
            self._sweep(_load(d / "process.json"))
            await self._kill_strays(wid, None)
            if (watch := self._watches.pop(wid, None)) is not None:
                watch.close()
            if (task := self._stops.pop(wid, None)) is not None:
                task.cancel()
            # One rename takes the workload away whole; what a crash leaves of the
            # removal is a trash directory, which purge_trash finishes.
            trash = self.root / f"{TRASH}{wid}-{secrets.token_hex(4)}"
            try:
                os.rename(d, trash)
                failpoint(_FP + "destroy.after_rename")
                shutil.rmtree(trash)
            except OSError as exc:
                raise DriverError(f"workload {wid}: can't remove {d}: {exc}") from exc
        self._locks.pop(wid, None)

    async def status(self, wid: str) -> Status:
        self._settle(wid)
        return self._status(wid)

    async def list(self) -> list[str]:
        purge_trash(self.root)
        return _list_ids(self.root, self.name)

    async def reattach(self, wid: str) -> Status:
        async with self._lock(wid):
            rec = self._settle(wid)
            status = self._status(wid)
            if status.state is WorkloadState.RUNNING and status.pid is not None:
                self._watch(wid, status.pid)
                if isinstance(run := rec.get("run"), str):
                    await self._kill_strays(wid, run)  # an older run's, or a second copy
                if rec.get("stopping"):
                    self._resume_stop(wid, status.pid, rec)
                return status
            d = self.dir_of(wid)
            rec = _load(d / "process.json")
            if rec.get("state") == "running":  # it ended while nobody watched
                status = self._conclude(wid, rec, None, away=True)
            self._sweep(rec)
            await self._kill_strays(wid, None)
            return status

    def _resume_stop(self, wid: str, pid: int, rec: dict[str, Any]) -> None:
        """A stop meshd began before it died: SIGTERM again, SIGKILL at its deadline."""
        if wid in self._stops:
            return
        deadline = rec.get("stop_deadline")
        left = max(0.0, float(deadline) - time.time()) if isinstance(deadline, int | float) else 0.0

        async def finish() -> None:
            async with self._lock(wid):
                watch = self._watch(wid, pid)
                self._signal(pid, rec, signal.SIGTERM)
                if not await _wait(watch.exited, left):
                    try:
                        await self._force(wid, pid, rec, watch, left)
                    except DriverError as exc:
                        logger.error("resumed stop failed id=%s error=%s", wid, exc)
                        return
                self._sweep(rec)
            self._stops.pop(wid, None)

        logger.info("resuming an interrupted stop id=%s pid=%s left_s=%.1f", wid, pid, left)
        self._stops[wid] = asyncio.get_running_loop().create_task(finish())

    async def _kill_strays(self, wid: str, keep_run: str | None) -> None:
        """Kill the processes of ``wid`` no record accounts for (all but run ``keep_run``)
        and wait until they are gone, so no second copy ever runs beside a new one."""
        if not _may_have_forked(_load(self.dir_of(wid) / "process.json")):
            return  # no fork since the directory was made: nothing of it can run
        # A scan of every process's environment (~2 ms with 150 processes): off the loop.
        killed = await asyncio.to_thread(kill_marked, wid, self.root, keep_run)
        deadline = time.monotonic() + self.kill_wait_s
        while killed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            left = {pid for pid, _ in marked(wid, self.root)}
            killed = [pid for pid in killed if pid in left]
        if killed:
            raise DriverError(
                f"workload {wid}: untracked pids {killed} outlived SIGKILL by "
                f"{self.kill_wait_s} s; try again"
            )

    def _settle(self, wid: str) -> dict[str, Any]:
        """Resolve a start that meshd died in the middle of: the recorded intent names the
        run, and the run's marker finds its process if the fork happened. Adopted, it
        is recorded as running; never forked, the workload is stopped (start works)."""
        d = self.dir_of(wid)
        rec = _load(d / "process.json")
        if rec.get("state") != "spawning":
            return rec
        run = rec.get("run")
        leaders = []
        if rec.get("boot_id") == self.boot_id:
            for pid, r in marked(wid, self.root):
                st = read_stat(pid)
                if r == run and st is not None and st.session == pid:
                    leaders.append(st)
        if leaders:
            st = leaders[0]
            rec |= {"pid": st.pid, "starttime": st.starttime, "state": "running"}
            rec["started_at"] = rec.get("requested_at")
            _write(d / "process.json", json.dumps(rec))
            _write(d / "pidfile", f"{st.pid}\n")
            logger.warning("adopted a process started before meshd died id=%s pid=%s", wid, st.pid)
        else:
            detail = "meshd stopped while starting it, before the process ran"
            rec = {"state": "stopped", "detail": detail, "run": run}
            _write(d / "process.json", json.dumps(rec))
            logger.warning("an interrupted start left no process id=%s", wid)
        return rec

    # -- the synchronous work behind the coroutines (all of it is short) --

    def _lock(self, wid: str) -> asyncio.Lock:
        return self._locks.setdefault(wid, asyncio.Lock())

    def _spec(self, wid: str) -> WorkloadSpec:
        try:
            return read_spec(self.dir_of(wid))
        except OSError as exc:
            raise DriverError(f"no process workload {wid!r} on this node") from exc

    def _create(self, wid: str, spec: WorkloadSpec) -> Status:
        d = self.dir_of(wid)
        if (d / SPEC_NAME).exists():
            if self._spec(wid) != spec:
                raise DriverError(f"workload {wid} already exists with a different spec")
            return self._status(wid)
        try:  # a directory without spec.json is what a crash left half made: reuse it
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DriverError(f"workload {wid}: can't create {d}: {exc}") from exc
        failpoint(_FP + "create.after_mkdir")
        try:
            _write(d / SPEC_NAME, dumps(spec))
        except (OSError, TypeError, ValueError) as exc:
            shutil.rmtree(d, ignore_errors=True)
            raise DriverError(f"workload {wid}: can't write its spec: {exc}") from exc
        failpoint(_FP + "create.after_spec")
        logger.info("workload created id=%s command=%r", wid, spec.command)
        return Status(WorkloadState.STOPPED, detail="created, not started")

    def _spawn(self, wid: str, spec: WorkloadSpec) -> Status:
        """Start a run (in a worker thread: it touches no loop state; the caller watches
        the pid it returns)."""
        d = self.dir_of(wid)
        env = {"PATH": os.environ.get("PATH") or _FALLBACK_PATH, "HOME": str(d), "LANG": "C.UTF-8"}
        run = secrets.token_hex(8)
        env |= {"MESHD_WORKLOAD_ID": wid, "MESHD_WORKLOAD_NAME": spec.name, **spec.env}
        env[ROOT_MARKER] = str(self.root)
        env[MARKER] = f"{wid}:{run}"
        argv = shlex.split(spec.command or "")
        # The intent goes to disk before the fork: a meshd that dies after it finds the
        # run by its marker (_settle) instead of starting a second copy.
        intent: dict[str, Any] = {"state": "spawning", "run": run, "boot_id": self.boot_id}
        intent |= {"requested_at": time.time(), "stopping": False}
        _write(d / "process.json", json.dumps(intent))
        failpoint(_FP + "start.after_intent")
        try:
            with open(d / "console.log", "ab") as log:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=d,
                    env=env,
                    start_new_session=True,
                )
        except (OSError, ValueError) as exc:
            detail = f"could not start {argv[0] if argv else spec.command!r}: {exc}"
            _write(
                d / "process.json", json.dumps({"state": "failed", "detail": detail, "run": run})
            )
            (d / "pidfile").unlink(missing_ok=True)
            return Status(WorkloadState.FAILED, detail=detail)
        proc.returncode = 0  # disowned: our watch reaps it (see the module doc)
        failpoint(_FP + "start.after_spawn")
        st = read_stat(proc.pid)  # unreaped, so present even if it already exited
        if st is None:
            raise RuntimeError(f"/proc/{proc.pid}/stat of our own unreaped child is missing")
        rec: dict[str, Any] = {"pid": proc.pid, "starttime": st.starttime, "boot_id": self.boot_id}
        rec |= {"started_at": time.time(), "stopping": False, "state": "running", "run": run}
        _write(d / "process.json", json.dumps(rec))
        _write(d / "pidfile", f"{proc.pid}\n")
        failpoint(_FP + "start.after_record")
        return Status(
            WorkloadState.RUNNING, proc.pid, f"running as pid {proc.pid}", rec["started_at"]
        )

    def _running_pid(self, wid: str, rec: dict[str, Any]) -> int | None:
        """The pid in the pidfile if it is the process recorded in ``rec``, still alive."""
        try:
            pid = int((self.dir_of(wid) / "pidfile").read_text())
        except (OSError, ValueError):
            return None
        start, boot = rec.get("starttime"), rec.get("boot_id")
        ok = isinstance(start, int) and boot == self.boot_id and is_alive(pid, start)
        return pid if ok else None

    def _status(self, wid: str) -> Status:
        d = self.dir_of(wid)
        # An unreadable spec.json says why (read_spec's sentence), not "no workload".
        if not SAFE_ID.fullmatch(wid) or self._spec(wid).driver != self.name:
            raise DriverError(f"no process workload {wid!r} on this node")
        rec = _load(d / "process.json")
        if (pid := self._running_pid(wid, rec)) is not None:
            return Status(
                WorkloadState.RUNNING, pid, f"running as pid {pid}", rec.get("started_at")
            )
        watch = self._watches.get(wid)
        if rec.get("state") == "running" and watch is not None:
            watch.fire()  # dead, and our watch has not run yet: settle it now
            rec = _load(d / "process.json")
        state = rec.get("state")
        if state == "spawning":  # status() settles this first; a bare _status can't
            return Status(WorkloadState.STARTING, detail="being started")
        if state == "running":  # dead, unwatched: reattach will record it
            stopped = bool(rec.get("stopping"))
            state = WorkloadState.STOPPED if stopped else WorkloadState.FAILED
            detail = "exited while meshd was away; exit status unknown"
            return Status(
                state, None, detail, rec.get("started_at"), None, {"last_pid": rec.get("pid")}
            )
        if state in (WorkloadState.STOPPED, WorkloadState.FAILED):
            detail, code, last = rec.get("detail", ""), rec.get("exit_code"), rec.get("pid")
            return Status(
                WorkloadState(state), None, detail, rec.get("started_at"), code, {"last_pid": last}
            )
        return Status(WorkloadState.STOPPED, detail="created, not started")

    def _watch(self, wid: str, pid: int) -> _Watch:
        """The watch of the run ``pid`` (which ``_running_pid`` has just verified)."""
        watch = self._watches.get(wid)
        if watch is None or watch.pid != pid:
            if watch is not None:
                watch.close()
            start = int(_load(self.dir_of(wid) / "process.json")["starttime"])
            watch = self._watches[wid] = _Watch(self, wid, pid, start)
        return watch

    def _exited(self, watch: _Watch, code: int | None) -> Status:
        if self._watches.get(watch.wid) is watch:
            del self._watches[watch.wid]
        rec = _load(self.dir_of(watch.wid) / "process.json")
        if rec.get("pid") != watch.pid or rec.get("state") != "running":
            return Status(WorkloadState.STOPPED, detail=describe_exit(code), exit_code=code)
        status = self._conclude(watch.wid, rec, code, away=False)
        try:
            self.on_change(watch.wid, status)
        except Exception:  # a broken callback must not stop the other watches
            logger.exception("on_change failed id=%s", watch.wid)
        return status

    def _conclude(self, wid: str, rec: dict[str, Any], code: int | None, away: bool) -> Status:
        """Record how the run in ``rec`` ended and forget its pid."""
        detail = describe_exit(code)
        if away:
            detail = "exited while meshd was away; exit status unknown"
        stopped = bool(rec.get("stopping")) or code == 0
        if rec.get("stopping"):
            detail = f"stopped by meshd ({detail})"
        state = WorkloadState.STOPPED if stopped else WorkloadState.FAILED
        rec |= {"state": str(state), "detail": detail, "exit_code": code, "ended_at": time.time()}
        d = self.dir_of(wid)
        with contextlib.suppress(FileNotFoundError):  # destroyed meanwhile
            _write(d / "process.json", json.dumps(rec))
            (d / "pidfile").unlink(missing_ok=True)
        logger.info(
            "workload ended id=%s pid=%s state=%s detail=%r", wid, rec.get("pid"), state, detail
        )
        return Status(
            state, None, detail, rec.get("started_at"), code, {"last_pid": rec.get("pid")}
        )

    def _signal(self, pid: int, rec: dict[str, Any], sig: signal.Signals) -> None:
        # Checked just before: while the leader lives its pid (the group id) can't be reused.
        if is_alive(pid, int(rec["starttime"])):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError as exc:
                raise DriverError(f"not allowed to signal process group {pid}: {exc}") from exc

    def _sweep(self, rec: dict[str, Any]) -> None:
        """SIGKILL what is left of a run's session after its leader is gone."""
        pid, start = rec.get("pid"), rec.get("starttime")
        if not isinstance(pid, int) or rec.get("boot_id") != self.boot_id:
            return
        leader = read_stat(pid)
        if leader is not None and leader.starttime != start:
            return  # the pid was reused; so may have been the session id
        for member in session_members(pid):
            logger.info("killing a leftover of the workload pid=%s session=%s", member, pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member, signal.SIGKILL)


def _may_have_forked(rec: dict[str, Any]) -> bool:
    """Could a process of this workload's directory exist? Not if no start was ever
    recorded (the intent is written before every fork), nor if the last start failed
    before it forked (Popen raised: its record has no pid, and a child whose exec
    failed was reaped by Popen)."""
    if not rec:
        return False
    return not (rec.get("state") == "failed" and "pid" not in rec and "stop_deadline" not in rec)


async def _wait(fut: asyncio.Future[Status], timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(asyncio.shield(fut), max(timeout_s, 0.0))
    except TimeoutError:
        return False
    return True


class _Watch:
    """Waits for one run of a workload to exit, then concludes it exactly once."""

    def __init__(self, driver: ProcessDriver, wid: str, pid: int, starttime: int) -> None:
        self.driver, self.wid, self.pid, self.starttime = driver, wid, pid, starttime
        self.loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[Status] = self.loop.create_future()
        self.fd: int | None = None
        self.task: asyncio.Task[None] | None = None
        with contextlib.suppress(OSError, AttributeError):
            self.fd = os.pidfd_open(pid)
        if self.fd is None:
            self.task = self.loop.create_task(self._poll())
            return
        self.loop.add_reader(self.fd, self.fire)
        if not is_alive(pid, starttime):  # it died (or the pid moved on) before the open
            self.loop.call_soon(self.fire)

    async def _poll(self) -> None:
        while is_alive(self.pid, self.starttime):  # noqa: ASYNC110 - no event to wait for
            await asyncio.sleep(self.driver.poll_interval_s)
        self.fire()

    def fire(self) -> None:
        if self.exited.done() or is_alive(self.pid, self.starttime):
            return
        code = self._reap()
        self.close()
        self.exited.set_result(self.driver._exited(self, code))

    def _reap(self) -> int | None:
        """The exit status if the process is our child (-N for signal N); None if not ours."""
        flags = os.WEXITED | os.WNOHANG
        try:
            if self.fd is not None:
                info = os.waitid(os.P_PIDFD, self.fd, flags)
            else:
                info = os.waitid(os.P_PID, self.pid, flags)
        except ChildProcessError:
            return None
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def close(self) -> None:
        if self.fd is not None:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = None
        if self.task is not None and self.task is not asyncio.current_task(self.loop):
            self.task.cancel()
