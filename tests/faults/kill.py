"""Kill a real meshd with ``kill -9`` at a named step, restart it, and count the damage.

The tool behind tests/integration/test_crash_points.py and
benchmarks/bench_crash_points.py. A daemon is started with ``MESHD_FAILPOINTS`` naming
one failpoint (meshd/failpoints.py), so it SIGKILLs itself exactly there; the scenario
drives a workload through the phase that passes the point (submit for create/start,
``workload stop`` for stop, ``workload rm`` for destroy), waits for the daemon to die,
starts it again without the failpoint and measures:

* ``lost``: the workload is gone from the node's view, or it neither runs nor starts
  again with ``workload start`` (a stop the kill interrupted must first finish);
* ``double``: more than one copy of its process runs at any check;
* ``untracked``: a process of it survives its ``workload rm``;
* ``reconcile_s``: from the restart to the workload's settled state (running, or the
  removal finished).

Copies are counted by scanning /proc for the workload's own marks, not by asking meshd:
the process driver's ``MESHD_RUN=<id>:...`` environment variable; for QEMU the
workload's directory named on QEMU's command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

try:
    from tests.integration.daemon import Daemon, Mesh, wait_for
except ImportError:  # pragma: no cover - tests/integration put on sys.path by pytest
    from daemon import Daemon, Mesh, wait_for  # type: ignore[no-redef]

import meshd.adapters.drivers.process  # declares its failpoints
import meshd.adapters.drivers.qemu  # noqa: F401 - declares its failpoints
from meshd.adapters.drivers.procfs import find_by_cmdline, find_by_env
from meshd.failpoints import ENV, KNOWN

CAPACITY = ("--cpus", "4", "--memory", "2GiB", "--disk", "10GiB")
# One process that ignores SIGTERM: stop must end it with SIGKILL at its deadline.
STUBBORN = (
    f"{sys.executable} -c 'import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(100000)'"
)
DIE_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 30.0


def points(driver: str) -> list[str]:
    """Every failpoint a driver declares, in a stable order."""
    return sorted(p for p in KNOWN if p.startswith(f"driver.{driver}."))


def phase(point: str) -> str:
    """Which operator action passes ``point``: submit, stop or rm."""
    step = point.split(".")[2]
    return {"create": "submit", "start": "submit", "stop": "stop", "destroy": "rm"}[step]


def copies(driver: str, data_dir: Path, wid: str = "") -> list[int]:
    """Pids of the processes that are copies of workload ``wid`` of the node at
    ``data_dir`` (of any of its workloads when ``wid`` is empty), found in /proc."""
    where = str(data_dir.resolve() / "workloads" / wid)
    if driver == "process":  # marked, and running in the workload's directory
        found = []
        for st, _ in find_by_env("MESHD_RUN", wid + ":" if wid else ""):
            with contextlib.suppress(OSError):
                cwd = os.readlink(f"/proc/{st.pid}/cwd")
                if cwd == where or cwd.startswith(where.rstrip("/") + "/"):
                    found.append(st.pid)
        return sorted(found)
    return sorted(st.pid for st in find_by_cmdline(where.rstrip("/") + "/"))


def kill_copies(driver: str, data_dir: Path) -> None:
    for pid in copies(driver, data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


@contextlib.contextmanager
def armed(point: str | None) -> Iterator[None]:
    """``MESHD_FAILPOINTS=point`` for the daemons spawned inside (they copy os.environ)."""
    old = os.environ.pop(ENV, None)
    if point is not None:
        os.environ[ENV] = point
    try:
        yield
    finally:
        os.environ.pop(ENV, None)
        if old is not None:
            os.environ[ENV] = old


@dataclass
class Outcome:
    driver: str
    point: str
    killed: bool  # the daemon died at the point (False: the scenario never reached it)
    lost: int
    double: int
    untracked: int
    reconcile_s: float
    detail: str = ""

    def json(self) -> dict[str, Any]:
        return asdict(self)


def view(d: Daemon, name: str) -> dict[str, Any] | None:
    for row in d.api("GET", "/v1/workloads"):
        if row.get("name") == name:
            return dict(row)
    return None


def _died(d: Daemon) -> bool:
    assert d.proc is not None
    try:
        d.proc.wait(DIE_TIMEOUT_S)
    except Exception:
        return False
    return d.proc.returncode == -9


def run_point(
    mesh: Mesh,
    driver: str,
    point: str,
    submit_args: tuple[str, ...],
    running: Callable[[dict[str, Any]], bool] = lambda row: row.get("state") == "running",
) -> Outcome:
    """One cell of the matrix: a fresh node killed at ``point``, restarted, checked."""
    # Short: QEMU's QMP socket path must fit in sun_path (107 bytes).
    name = "k" + hashlib.sha1(point.encode()).hexdigest()[:7]
    d = mesh.daemon(name)
    d.init()
    out = Outcome(driver, point, False, 0, 0, 0, 0.0)
    wid = ""
    try:
        with armed(point):
            d.start(*CAPACITY)
        act = phase(point)
        sub = d.cli("submit", "--name", name, "--cpus", "1", "--memory", "64MiB",
                    "--driver", driver, *submit_args)  # fmt: skip
        if act != "submit":
            if sub.returncode != 0:
                out.detail = f"submit failed: {sub.stderr.strip()}"
                out.lost = 1
                return out
            wait_for("running", lambda: running(view(d, name) or {}), SETTLE_TIMEOUT_S)
            wid = str((view(d, name) or {})["workload"])
            if driver == "process" and act == "stop":
                # STUBBORN ignores SIGTERM only once its interpreter is up: a stop sent
                # sooner ends it with SIGTERM and never reaches the SIGKILL points.
                wait_for(
                    "the workload to ignore SIGTERM",
                    lambda: any(_ignores_sigterm(p) for p in copies(driver, d.data_dir, wid)),
                    SETTLE_TIMEOUT_S,
                )
            if act == "stop":
                with contextlib.suppress(Exception):
                    d.api("POST", f"/v1/workloads/{wid}/stop?timeout=1")
            else:
                d.cli("workload", "rm", wid)
        out.killed = _died(d)
        if not out.killed:
            out.detail = "the daemon did not die at the point"
            return out
        d.kill()
        t0 = time.monotonic()
        d.start(*CAPACITY)
        row = view(d, name)
        if act == "rm":
            if row is not None:  # the removal was not recorded before the kill
                wid = str(row["workload"])
                d.cli("workload", "rm", wid)
            settled = _wait(lambda: view(d, name) is None and not copies(driver, d.data_dir, wid))
            out.reconcile_s = time.monotonic() - t0
            out.untracked = len(copies(driver, d.data_dir))
            if not settled:
                out.detail = "the removal did not finish after the restart"
            return out
        if row is None:
            out.lost = 1
            out.detail = "the workload is gone from the node's view after the restart"
            return out
        wid = str(row["workload"])
        # A stop the kill interrupted is finished after the restart (the run may show as
        # running until its resumed stop ends it); anything else settles either way.
        ends = ("stopped", "failed") if act == "stop" else ("running", "stopped", "failed")
        settled = _wait(lambda: (view(d, name) or {}).get("state") in ends)
        if not settled and act == "stop":
            out.lost = 1  # counted: the operator's stop was lost
            out.detail = f"the interrupted stop did not finish ({view(d, name)});"
        state = (view(d, name) or {}).get("state")
        if state != "running":
            d.cli("workload", "start", wid)
            settled = _wait(lambda: running(view(d, name) or {}))
        out.reconcile_s = time.monotonic() - t0
        if not settled:
            out.lost = 1
            out.detail += f" not running after the restart and a start ({view(d, name)})"
        n = len(copies(driver, d.data_dir, wid))
        out.double = int(n > 1)
        if n == 0:
            out.lost = 1
            out.detail += " no process of it runs"
        d.cli("workload", "rm", wid)
        _wait(lambda: view(d, name) is None and not copies(driver, d.data_dir))
        out.untracked = len(copies(driver, d.data_dir))
        return out
    finally:
        if d.running:
            d.stop()
        kill_copies(driver, d.data_dir)


def _ignores_sigterm(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGTERM (its SigIgn mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(
        (line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), "0"
    )
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))


def _wait(check: Callable[[], bool], timeout: float = SETTLE_TIMEOUT_S) -> bool:
    try:
        wait_for("a settled state", check, timeout)
    except AssertionError:
        return False
    return True
