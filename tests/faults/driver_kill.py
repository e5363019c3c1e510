"""Kill a process running one driver at a named step, reconcile with a fresh driver, count.

The driver-level half of the kill-point matrix (tests/faults/kill.py kills a whole
meshd). A child process builds the driver over ``DATA/workloads``, with
``MESHD_FAILPOINTS`` naming one failpoint, and drives a workload through the phase that
passes it (``submit``: create and start; ``stop``; ``rm``: destroy), so it SIGKILLs
itself exactly there, with whatever it spawned left running. Then a fresh driver in
this process does what a restarted meshd's runner does (list, reattach or create, then
the operator's stop or rm again, or a start where the crash left it stopped) and the
matrix counts, by scanning /proc with :func:`tests.faults.kill.copies`:

* ``lost``: the workload can't be brought back to running (after a stop: stopped,
  then started again);
* ``double``: more than one process of it runs at any check;
* ``untracked``: a process of it survives its destroy;
* ``reconcile_s``: from the fresh driver to the settled state.

Firecracker here is the stand-in binary of tests/unit/firecracker_fake.py (this host has
neither a firecracker binary nor a hardware KVM): a real process, spawned, adopted and
killed by the driver, that serves Firecracker's API on ``--api-sock``. It is made
stubborn (ignores Ctrl-Alt-Del and SIGTERM), so a stop passes every signal step.

Run as a program it is the child: ``driver_kill.py DRIVER DATA WID PHASE``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "tests" / "unit"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import firecracker_fake as fcfake  # noqa: E402

import meshd.adapters.drivers.firecracker  # noqa: E402, F401 - declares its failpoints
from meshd.adapters.drivers.base import Driver, Status, WorkloadState  # noqa: E402
from meshd.adapters.drivers.firecracker import FirecrackerDriver  # noqa: E402
from meshd.core.spec import WorkloadSpec  # noqa: E402
from tests.faults.kill import Outcome, armed, copies, phase  # noqa: E402

WID = "vm-1"
STOP_TIMEOUT_S = 0.5  # the operator's graceful budget; the stubborn guest ignores it
CHILD_TIMEOUT_S = 60.0
# The stand-in Firecracker ignores the guest-side shutdown and SIGTERM: only SIGKILL ends it.
STUBBORN_ENV = {"MESHD_FAKE_FC_CTRL_ALT_DEL": "ignore", "MESHD_FAKE_FC_IGNORE_TERM": "1"}


def build(driver: str, data: Path) -> tuple[Driver, WorkloadSpec]:
    """The driver over ``data/workloads`` and the spec of the workload it runs."""
    if driver != "firecracker":
        raise ValueError(f"no driver-level crash harness for {driver!r}")
    guest = fcfake.guest(data / "g")
    opts = fcfake.options(data, term_grace_s=1.0, api_timeout_s=1.0)
    d = FirecrackerDriver(data / "workloads", lambda w, s: None, opts)
    return d, fcfake.spec_for(guest, boot_timeout_s=20.0)


async def _child(driver: str, data: Path, wid: str, act: str) -> None:
    d, spec = build(driver, data)
    await d.create(wid, spec)
    started = await d.start(wid)
    if started.state is not WorkloadState.RUNNING:
        raise SystemExit(f"the workload did not start: {started.detail}")
    if act == "stop":
        await d.stop(wid, STOP_TIMEOUT_S)
    elif act == "rm":
        await d.destroy(wid)
    d.detach()


def run_child(
    driver: str, data: Path, point: str | None, wid: str = WID, act: str | None = None
) -> int:
    """Run the child with ``point`` armed; its return code (-9: killed at the point).
    ``act`` defaults to the phase that passes ``point`` (without one: ``rm``, which
    passes every step)."""
    act = act or (phase(point) if point else "rm")
    with armed(point):
        env = os.environ | STUBBORN_ENV  # armed() put MESHD_FAILPOINTS in os.environ
        argv = [sys.executable, __file__, driver, str(data), wid, act]
        proc = subprocess.run(argv, env=env, cwd=REPO, timeout=CHILD_TIMEOUT_S, check=False)
    return proc.returncode


async def run_driver_point(driver: str, point: str, data: Path, wid: str = WID) -> Outcome:
    """One cell: a child killed at ``point``, a fresh driver reconciles, then removes it."""
    out = Outcome(driver, point, False, 0, 0, 0, 0.0)
    act = phase(point)
    code = await asyncio.to_thread(run_child, driver, data, point, wid)
    out.killed = code == -9
    if not out.killed:
        out.detail = f"the child did not die at the point (exit {code})"
        return out
    most = len(copies(driver, data, wid))
    d, spec = build(driver, data)
    t0 = time.monotonic()
    try:
        if act == "rm":
            await d.list()  # finishes a removal the crash cut short
            await d.destroy(wid)  # the runner retries the destroy until it returns
            out.reconcile_s = time.monotonic() - t0
            left = len(copies(driver, data))
            out.untracked = left
            if wid in await d.list() or (data / "workloads" / wid).exists():
                out.detail = "the workload's directory survived its destroy"
                out.untracked = max(1, left)
            if any(p.name.startswith(".trash-") for p in (data / "workloads").iterdir()):
                out.detail += " a trash directory was left"
            return out
        status: Status
        if wid in await d.list():
            status = await d.reattach(wid)
        else:  # not created as far as the node can tell: the runner creates it again
            status = await d.create(wid, spec)
        most = max(most, len(copies(driver, data, wid)))
        if act == "stop":  # the operator's stop again: it must end with nothing running
            status = await d.stop(wid, STOP_TIMEOUT_S)
            if status.state is not WorkloadState.STOPPED or copies(driver, data, wid):
                out.lost = 1
                out.detail = f"the repeated stop left {status.state}: {status.detail}"
        if status.state is not WorkloadState.RUNNING:
            status = await d.start(wid)
        out.reconcile_s = time.monotonic() - t0
        n = len(copies(driver, data, wid))
        most = max(most, n)
        if status.state is not WorkloadState.RUNNING or n == 0:
            out.lost = 1
            out.detail += f" not running after the reconcile ({status.state}: {status.detail})"
        out.double = int(most > 1)
        await d.destroy(wid)
        out.untracked = len(copies(driver, data))
        return out
    except Exception as exc:  # a refusal is a lost workload; say which
        out.lost = 1
        out.detail += f" {type(exc).__name__}: {exc}"
        return out
    finally:
        d.detach()
        out.detail = out.detail.strip()


def _main(args: list[str]) -> Any:
    driver, data, wid, act = args
    asyncio.run(_child(driver, Path(data), wid, act))


if __name__ == "__main__":
    _main(sys.argv[1:])
