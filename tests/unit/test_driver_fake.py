"""The fake driver (the simulator's stand-in for real workloads) and the driver registry."""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest

from meshd.adapters.drivers import registry
from meshd.adapters.drivers.base import Driver, OnChange, Status, WorkloadState
from meshd.adapters.drivers.fake import FakeDriver, FakeHost, run_now
from meshd.adapters.drivers.process import ProcessDriver
from meshd.adapters.drivers.registry import driver_for, make_drivers
from meshd.core.spec import WorkloadSpec
from meshd.errors import DriverError

Events = list[tuple[str, Status]]


DriverName = Literal["process", "qemu", "firecracker", "fake"]


def spec(wid: str, driver: DriverName = "fake", name: str | None = None) -> WorkloadSpec:
    return WorkloadSpec(name=name or f"svc-{wid}", driver=driver, cpus=1, memory=1 << 20)


def make(host: FakeHost | None = None, **kw: object) -> tuple[FakeDriver, Events]:
    events: Events = []
    driver = FakeDriver(Path("/nonexistent"), lambda w, s: events.append((w, s)), host=host, **kw)  # type: ignore[arg-type]
    return driver, events


class Queue:
    """A tiny stand-in for the simulator's EventQueue.after."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def after(self, dt: float, fn: Callable[[], None]) -> None:
        self.pending.append((dt, fn))

    def run(self) -> None:
        for _, fn in sorted(self.pending, key=lambda p: p[0]):
            fn()
        self.pending.clear()


def test_lifecycle_runs_synchronously() -> None:
    host = FakeHost(clock=lambda: 42.0)
    d, events = make(host)
    assert run_now(d.create("w1", spec("w1"))).state is WorkloadState.STOPPED
    started = run_now(d.start("w1"))
    assert (started.state, started.pid, started.started_at) == (WorkloadState.RUNNING, 1001, 42.0)
    assert run_now(d.status("w1")) == started
    assert run_now(d.list()) == ["w1"]
    stopped = run_now(d.stop("w1", 1.0))
    assert stopped.state is WorkloadState.STOPPED and events == [("w1", stopped)]
    assert run_now(d.stop("w1", 1.0)) == stopped and len(events) == 1
    run_now(d.destroy("w1"))
    assert run_now(d.list()) == []
    with pytest.raises(DriverError, match="no fake workload"):
        run_now(d.status("w1"))
    ops = ["create", "start", "stop", "stop", "destroy", "stop"]
    assert d.calls == [(op, "w1") for op in ops]


def test_run_now_refuses_a_suspending_coroutine() -> None:
    async def suspends() -> None:
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="suspended"):
        run_now(suspends())


async def test_usable_as_async_driver() -> None:
    d, _ = make()
    assert isinstance(d, Driver)
    await d.create("w1", spec("w1"))
    assert (await d.start("w1")).state is WorkloadState.RUNNING
    assert d.log_path("w1") == Path("/nonexistent/w1/console.log")
    assert d.console("w1") == ["[fake] started svc-w1"]


def test_refuse_knob_by_id_and_name() -> None:
    d, _ = make()
    d.refuse["w1"] = "no room for w1"
    d.refuse["db"] = "db is refused"
    with pytest.raises(DriverError, match="no room for w1"):
        run_now(d.create("w1", spec("w1")))
    with pytest.raises(DriverError, match="db is refused"):
        run_now(d.create("w2", spec("w2", name="db")))
    with pytest.raises(DriverError, match="driver"):
        run_now(d.create("w3", spec("w3", driver="qemu")))
    assert run_now(d.list()) == []


def test_create_is_idempotent_and_refuses_a_different_spec() -> None:
    d, _ = make()
    run_now(d.create("w1", spec("w1")))
    run_now(d.create("w1", spec("w1")))
    with pytest.raises(DriverError, match="different spec"):
        run_now(d.create("w1", spec("w1", name="other")))


def test_fail_start_knob() -> None:
    d, events = make()
    d.fail_start["w1"] = "image missing"
    run_now(d.create("w1", spec("w1")))
    st = run_now(d.start("w1"))
    assert (st.state, st.detail, st.pid) == (WorkloadState.FAILED, "image missing", None)
    assert events == []


def test_crash_is_reported_once() -> None:
    d, events = make()
    run_now(d.create("w1", spec("w1")))
    run_now(d.start("w1"))
    d.host.crash("w1", 3)
    d.host.crash("w1", 4)  # already dead: ignored
    ((wid, st),) = events
    assert (wid, st.state, st.exit_code) == ("w1", WorkloadState.FAILED, 3)
    assert run_now(d.status("w1")) == st
    run_now(d.start("w1"))  # restartable, with a new pid
    assert run_now(d.status("w1")).pid == 1002


def test_clean_exit_is_stopped() -> None:
    d, events = make()
    run_now(d.create("w1", spec("w1")))
    run_now(d.start("w1"))
    d.host.crash("w1", 0)
    assert events[0][1].state is WorkloadState.STOPPED


def test_crash_after_on_a_virtual_clock() -> None:
    q = Queue()
    d, events = make(schedule=q.after)
    run_now(d.create("w1", spec("w1")))
    run_now(d.start("w1"))
    d.crash_after("w1", 5.0, exit_code=139, detail="segfault")
    assert events == []
    q.run()
    assert [(w, s.state, s.detail) for w, s in events] == [("w1", WorkloadState.FAILED, "segfault")]


async def test_crash_after_on_the_asyncio_loop() -> None:
    d, events = make()
    await d.create("w1", spec("w1"))
    await d.start("w1")
    d.crash_after("w1", 0.01)
    await asyncio.sleep(0.05)
    assert events and events[0][1].state is WorkloadState.FAILED


def test_restart_reattaches_survivors_and_reports_the_dead() -> None:
    host = FakeHost()
    d1, events1 = make(host)
    for wid in ("alive", "dies"):
        run_now(d1.create(wid, spec(wid)))
        run_now(d1.start(wid))
    d1.detach()  # meshd exits; the host keeps running them
    host.crash("dies", 1)
    assert events1 == []
    d2, events2 = make(host)
    assert run_now(d2.list()) == ["alive", "dies"]
    alive = run_now(d2.reattach("alive"))
    assert alive.state is WorkloadState.RUNNING
    dead = run_now(d2.reattach("dies"))
    assert dead.state is WorkloadState.FAILED and "while meshd was away" in dead.detail
    host.crash("alive", 2)  # the new driver watches it now
    assert [w for w, _ in events2] == ["alive"] and events1 == []


def test_power_off_tells_nobody() -> None:
    host = FakeHost()
    d, events = make(host)
    run_now(d.create("w1", spec("w1")))
    run_now(d.start("w1"))
    run_now(d.create("w2", spec("w2")))
    assert host.power_off() == ["w1"]
    assert events == []
    assert (
        "host powered off"
        in run_now(FakeDriver(Path("/x"), print, host=host).reattach("w1")).detail
    )


def test_name_override_stands_in_for_another_driver() -> None:
    d, _ = make(name="qemu")
    run_now(d.create("vm1", spec("vm1", driver="qemu")))
    assert run_now(d.list()) == ["vm1"]


# -- registry --


def noop(wid: str, status: Status) -> None:
    pass


def test_registry_always_has_process(tmp_path: Path) -> None:
    drivers = make_drivers(tmp_path, noop)
    assert isinstance(drivers["process"], ProcessDriver)
    assert set(drivers) <= {"process", "qemu", "firecracker"}
    assert all(d.root == tmp_path for d in drivers.values())
    assert driver_for(drivers, "process") is drivers["process"]


def test_driver_for_names_what_the_node_has() -> None:
    fakes: dict[str, Driver] = {
        n: FakeDriver(Path("/x"), noop, name=n) for n in ("process", "qemu")
    }
    with pytest.raises(DriverError) as err:
        driver_for(fakes, "x")
    assert str(err.value) == "unknown driver 'x'; this node has: process, qemu"


class Refusing(FakeDriver):
    def __init__(self, root: Path, on_change: OnChange) -> None:
        raise DriverError("no /dev/kvm")


def test_registry_skips_missing_and_refusing_drivers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("meshd_test_drivers")
    module.Refusing = Refusing  # type: ignore[attr-defined]
    module.Fake = FakeDriver  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "meshd_test_drivers", module)
    monkeypatch.setattr(
        registry,
        "OPTIONAL",
        {
            "missing": ("meshd.adapters.drivers.not_written_yet", "Nope"),
            "nameless": ("meshd_test_drivers", "Nope"),
            "refusing": ("meshd_test_drivers", "Refusing"),
            "fake": ("meshd_test_drivers", "Fake"),
        },
    )
    drivers = make_drivers(tmp_path, noop)
    assert sorted(drivers) == ["fake", "process"]


STEPS = ("create", "start", "stop", "start", "destroy")


@pytest.mark.parametrize("cut", range(len(STEPS)))
def test_a_restart_at_any_step_repeats_it_without_a_second_copy(cut: int) -> None:
    """A meshd killed after step ``cut`` (done, or not recorded by the runner) restarts
    with a new driver over the same host, which repeats that step and goes on: every
    repeat is no error, at most one copy runs, and the end state is the same as without
    the crash (the simulator crashes nodes between any two of these steps)."""

    def run(d: FakeDriver, step: str) -> Status | None:
        if step == "create":
            return run_now(d.create("w1", spec("w1")))
        if step == "destroy":
            run_now(d.destroy("w1"))
            return None
        if step == "stop":
            return run_now(d.stop("w1", 1.0))
        return run_now(d.start("w1"))

    host = FakeHost()
    d1, events1 = make(host)
    for step in STEPS[: cut + 1]:
        run(d1, step)
    pid = host.workloads["w1"].pid if "w1" in host.workloads else None
    d1.detach()  # killed: the host's workload runs on
    d2, events2 = make(host)
    if "w1" in run_now(d2.list()):
        run_now(d2.reattach("w1"))
    again = run(d2, STEPS[cut])  # the interrupted step, again
    if STEPS[cut] == "start":
        assert again is not None and (again.state, again.pid) == (WorkloadState.RUNNING, pid)
    if STEPS[cut] == "stop":
        assert again is not None and again.state is WorkloadState.STOPPED
    running = [w for w in host.workloads.values() if w.state is WorkloadState.RUNNING]
    assert len(running) <= 1
    for step in STEPS[cut + 1 :]:
        run(d2, step)
    assert host.workloads == {} and host.watchers == {}
    assert run_now(d2.list()) == []
    stops = [s for _, s in events1 + events2 if s.state is WorkloadState.STOPPED]
    # The stop and the destroy of the running workload, each reported once, a repeat never.
    assert len(stops) == 2
