"""The process driver against real processes: lifecycle, exits, stop, and surviving meshd.

Every process a test starts is killed in ``finally`` by its own pid or process group:
the ``drivers`` fixture kills every workload still recorded under its root (checking
the recorded start time first), and tests that start helpers kill them themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from meshd.adapters.drivers.base import Status, WorkloadState
from meshd.adapters.drivers.process import ProcessDriver
from meshd.adapters.drivers.procfs import is_alive, parse_stat, read_stat, session_members
from meshd.core.spec import WorkloadSpec, dumps
from meshd.errors import DriverError

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]
Events = list[tuple[str, Status]]


def spec(wid: str, command: str | None, **kw: object) -> WorkloadSpec:
    """A process workload's spec, named ``svc-<wid>``."""
    fields: dict[str, object] = {"name": f"svc-{wid}", "driver": "process", "cpus": 1.0}
    fields |= {"memory": 64 << 20, "command": command} | kw
    return WorkloadSpec(**fields)  # type: ignore[arg-type]


def py(code: str) -> str:
    return f"{PY} -c {json.dumps(code)}"


def kill_group(pid: int) -> None:
    """SIGKILL a process group we started, then reap its leader if it is our child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return
        except ChildProcessError:
            return
        time.sleep(0.01)


def kill_recorded(root: Path) -> None:
    """Kill every workload still recorded under ``root``, by pid and start time."""
    for rec_path in root.glob("*/process.json"):
        rec = json.loads(rec_path.read_text())
        pid, start = rec.get("pid"), rec.get("starttime")
        if isinstance(pid, int) and isinstance(start, int) and is_alive(pid, start):
            kill_group(pid)
        if isinstance(pid, int) and read_stat(pid) is None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


async def until(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "workloads"


@pytest.fixture
async def drivers(root: Path) -> AsyncIterator[Callable[..., tuple[ProcessDriver, Events]]]:
    """``drivers()`` makes a ProcessDriver on ``root`` and the list its on_change fills."""
    made: list[ProcessDriver] = []

    def make(**kw: float) -> tuple[ProcessDriver, Events]:
        events: Events = []
        driver = ProcessDriver(root, lambda wid, st: events.append((wid, st)), **kw)
        made.append(driver)
        return driver, events

    try:
        yield make
    finally:
        for driver in made:
            driver.detach()
        kill_recorded(root)


Make = Callable[..., tuple[ProcessDriver, Events]]


async def test_lifecycle(drivers: Make, root: Path) -> None:
    d, events = drivers()
    created = await d.create("w1", spec("w1", "sleep 60"))
    assert created.state is WorkloadState.STOPPED
    assert json.loads((root / "w1" / "spec.json").read_text())["command"] == "sleep 60"
    started = await d.start("w1")
    assert started.state is WorkloadState.RUNNING and started.pid is not None
    assert (root / "w1" / "pidfile").read_text().strip() == str(started.pid)
    st = read_stat(started.pid)
    assert st is not None and st.session == started.pid  # its own session
    assert (await d.status("w1")).pid == started.pid
    assert await d.start("w1") == started  # already running: idempotent
    assert await d.list() == ["w1"]
    stopped = await d.stop("w1", 5.0)
    assert stopped.state is WorkloadState.STOPPED and stopped.exit_code == -signal.SIGTERM
    assert events == [("w1", stopped)]
    assert not is_alive(started.pid, st.starttime)
    assert (await d.status("w1")).state is WorkloadState.STOPPED
    assert not (root / "w1" / "pidfile").exists()
    await d.destroy("w1")
    assert not (root / "w1").exists() and await d.list() == []
    await d.destroy("w1")  # idempotent


async def test_console_log_and_clean_exit(drivers: Make) -> None:
    d, events = drivers()
    code = "import sys; print('marker-out'); print('marker-err', file=sys.stderr)"
    await d.create("w1", spec("w1", py(code)))
    await d.start("w1")
    await until(lambda: bool(events))
    ((wid, st),) = events
    assert (wid, st.state, st.exit_code) == ("w1", WorkloadState.STOPPED, 0)
    log = d.log_path("w1").read_text()
    assert "marker-out" in log and "marker-err" in log
    await d.start("w1")  # a restart appends
    await until(lambda: len(events) == 2)
    assert d.log_path("w1").read_text().count("marker-out") == 2


async def test_nonzero_exit_is_failed(drivers: Make) -> None:
    d, events = drivers()
    await d.create("w1", spec("w1", "sh -c 'exit 3'"))
    await d.start("w1")
    await until(lambda: bool(events))
    st = events[0][1]
    assert (st.state, st.exit_code, st.detail) == (WorkloadState.FAILED, 3, "exited with code 3")
    assert await d.status("w1") == st


async def test_killed_by_signal_is_failed(drivers: Make) -> None:
    d, events = drivers()
    await d.create("w1", spec("w1", "sleep 60"))
    pid = (await d.start("w1")).pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    await until(lambda: bool(events))
    st = events[0][1]
    assert (st.state, st.exit_code) == (WorkloadState.FAILED, -9)
    assert "SIGKILL" in st.detail


async def test_env_cwd_stdin(drivers: Make, root: Path) -> None:
    d, events = drivers()
    code = (
        "import os, sys; print(os.getcwd()); print(os.environ['FOO']);"
        "print(os.environ['MESHD_WORKLOAD_ID']); print(repr(sys.stdin.read()));"
        "print('SECRET_TEST_VAR' in os.environ)"
    )
    os.environ["SECRET_TEST_VAR"] = "1"  # meshd's own environment must not leak
    try:
        await d.create("w1", spec("w1", py(code), env={"FOO": "bar baz"}))
        await d.start("w1")
    finally:
        del os.environ["SECRET_TEST_VAR"]
    await until(lambda: bool(events))
    lines = d.log_path("w1").read_text().splitlines()
    assert lines == [os.path.realpath(root / "w1"), "bar baz", "w1", "''", "False"]


async def test_stop_escalates_to_sigkill(drivers: Make) -> None:
    d, events = drivers()
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "print('ready', flush=True); time.sleep(60)"
    )
    await d.create("w1", spec("w1", py(code)))
    await d.start("w1")
    await until(lambda: "ready" in d.log_path("w1").read_text())
    t0 = time.monotonic()
    st = await d.stop("w1", 0.5)
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 3.0
    assert (st.state, st.exit_code) == (WorkloadState.STOPPED, -9)
    assert events == [("w1", st)]


async def test_stop_kills_the_whole_group_and_leftovers(drivers: Make) -> None:
    d, events = drivers()
    await d.create("grp", spec("grp", "sh -c 'sleep 60 & sleep 60 & wait'"))
    grp = (await d.start("grp")).pid
    assert grp is not None
    await until(lambda: len(session_members(grp)) == 3)
    await d.stop("grp", 5.0)
    await until(lambda: session_members(grp) == [])
    # A leader that exits cleanly but leaves a child behind: stop sweeps the leftover.
    await d.create("left", spec("left", "sh -c 'sleep 60 & exit 0'"))
    pid = (await d.start("left")).pid
    assert pid is not None
    await until(lambda: len(events) == 2)
    assert events[1][1].state is WorkloadState.STOPPED
    assert len(session_members(pid)) == 1
    await d.stop("left", 1.0)
    await until(lambda: session_members(pid) == [])


async def test_survives_driver_discard(drivers: Make) -> None:
    d1, events1 = drivers()
    await d1.create("w1", spec("w1", "sleep 60"))
    pid = (await d1.start("w1")).pid
    d1.detach()
    del d1
    d2, events2 = drivers()
    st = await d2.reattach("w1")
    assert (st.state, st.pid) == (WorkloadState.RUNNING, pid)
    assert (await d2.status("w1")).state is WorkloadState.RUNNING
    stopped = await d2.stop("w1", 5.0)
    assert stopped.state is WorkloadState.STOPPED
    assert events2 == [("w1", stopped)] and events1 == []


CHILD = """
import asyncio, sys
from pathlib import Path
from meshd.adapters.drivers.process import ProcessDriver
from meshd.core.spec import WorkloadSpec

async def main() -> None:
    root, wid, command = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    d = ProcessDriver(root, lambda w, s: None)
    spec = WorkloadSpec(name=wid, driver="process", cpus=1, memory=1 << 20, command=command)
    await d.create(wid, spec)
    print((await d.start(wid)).pid, flush=True)

asyncio.run(main())
"""


def start_in_child_meshd(root: Path, wid: str, command: str) -> int:
    """Start a workload from a separate Python process that then exits; the workload's pid."""
    child = subprocess.run(
        [PY, "-c", CHILD, str(root), wid, command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if child.returncode != 0:
        # the workload may have started before the failure: the fixture kills it
        raise AssertionError(f"child meshd failed: {child.stderr}")
    return int(child.stdout.strip())


async def test_survives_the_daemon_exiting(drivers: Make, root: Path) -> None:
    pid = start_in_child_meshd(root, "w1", "sleep 60")
    st = read_stat(pid)
    assert st is not None and st.state not in ("Z", "X")  # outlived its meshd
    d, events = drivers()
    got = await d.reattach("w1")
    assert (got.state, got.pid) == (WorkloadState.RUNNING, pid)
    assert (await d.status("w1")).pid == pid
    stopped = await d.stop("w1", 5.0)
    assert stopped.state is WorkloadState.STOPPED
    assert stopped.exit_code is None  # not our child: its status went to its new parent
    assert events == [("w1", stopped)]
    assert not is_alive(pid, st.starttime)


# spec.json as the driver dataclass of meshd before the one workload model wrote it
# (json.dumps(asdict(spec), sort_keys=True, indent=2)): every field, nulls, and the id.
OLD_SPEC_JSON = """{
  "boot_timeout_s": 60.0,
  "cmdline": null,
  "command": "sh -c 'echo foo=$FOO; exec sleep 60'",
  "cpus": 1.0,
  "disk": 0,
  "driver": "process",
  "env": {
    "FOO": "bar"
  },
  "id": "w1",
  "image": null,
  "initrd": null,
  "kernel": null,
  "memory": 67108864,
  "meta_data": null,
  "name": "svc-w1",
  "network_config": null,
  "ready_marker": null,
  "user_data": null
}"""


async def test_reattach_after_an_upgrade_reads_the_old_spec_json(drivers: Make, root: Path) -> None:
    """A workload an older meshd started (and described in the old format) is found, run
    and restarted by this one, from that file as it is."""
    d1, _ = drivers()
    same = spec("w1", "sh -c 'echo foo=$FOO; exec sleep 60'", env={"FOO": "bar"})
    await d1.create("w1", same)
    pid = (await d1.start("w1")).pid
    d1.detach()
    (root / "w1" / "spec.json").write_text(OLD_SPEC_JSON)  # the upgrade: only the file is old
    d2, events = drivers()
    assert await d2.list() == ["w1"]
    got = await d2.reattach("w1")
    assert (got.state, got.pid) == (WorkloadState.RUNNING, pid)
    assert (await d2.create("w1", same)).pid == pid  # the old file reads as the same spec
    with pytest.raises(DriverError, match="different spec"):
        await d2.create("w1", spec("w1", "sleep 61"))
    stopped = await d2.stop("w1", 5.0)
    assert events == [("w1", stopped)]
    restarted = await d2.start("w1")  # command and env come from the old file
    assert restarted.state is WorkloadState.RUNNING and restarted.pid != pid
    await until(lambda: d2.log_path("w1").read_text().count("foo=bar") == 2)
    assert (root / "w1" / "spec.json").read_text() == OLD_SPEC_JSON  # reading never rewrites


async def test_an_unreadable_spec_json_is_refused_with_a_sentence(
    drivers: Make, root: Path
) -> None:
    d, _ = drivers()
    await d.create("w1", spec("w1", "sleep 60"))
    old = json.loads(OLD_SPEC_JSON) | {"memory": 0}  # the model never had room for this
    (root / "w1" / "spec.json").write_text(json.dumps(old))
    with pytest.raises(DriverError, match="written by an older meshd and does not fit"):
        await d.reattach("w1")
    (root / "w1" / "spec.json").write_text("{")
    with pytest.raises(DriverError, match="is not a workload spec meshd can read"):
        await d.status("w1")
    assert await d.list() == []  # whose it is can't be told


async def test_reattach_after_exit_while_away(drivers: Make, root: Path) -> None:
    pid = start_in_child_meshd(root, "w1", "sleep 60")
    st = read_stat(pid)
    assert st is not None
    kill_group(pid)
    await until(lambda: not is_alive(pid, st.starttime))
    d, events = drivers()
    got = await d.reattach("w1")
    assert got.state is WorkloadState.FAILED
    assert "exited while meshd was away" in got.detail
    assert await d.status("w1") == got and got.extra["last_pid"] == pid
    assert not (root / "w1" / "pidfile").exists() and events == []


async def test_reattach_watches_an_adopted_process(drivers: Make, root: Path) -> None:
    pid = start_in_child_meshd(root, "w1", "sleep 60")
    d, events = drivers()
    assert (await d.reattach("w1")).state is WorkloadState.RUNNING
    kill_group(pid)
    await until(lambda: bool(events))
    st = events[0][1]
    assert (st.state, st.exit_code) == (WorkloadState.FAILED, None)


@pytest.mark.parametrize("tamper", ["starttime", "boot_id"])
async def test_recycled_pid_is_not_adopted(drivers: Make, root: Path, tamper: str) -> None:
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        d, _ = drivers()
        await d.create("w1", spec("w1", "sleep 60"))
        st = read_stat(other.pid)
        assert st is not None
        rec = {"pid": other.pid, "starttime": st.starttime, "boot_id": d.boot_id}
        rec |= {"started_at": time.time(), "stopping": False, "state": "running"}
        rec[tamper] = st.starttime + 1 if tamper == "starttime" else "another-boot"
        (root / "w1" / "process.json").write_text(json.dumps(rec))
        (root / "w1" / "pidfile").write_text(f"{other.pid}\n")
        assert (await d.status("w1")).state is not WorkloadState.RUNNING
        got = await d.reattach("w1")
        assert got.state is WorkloadState.FAILED and got.pid != other.pid
        await d.stop("w1", 0.1)
        await d.destroy("w1")
        assert other.poll() is None and is_alive(other.pid, st.starttime)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(other.pid, signal.SIGKILL)
        other.wait(5)


async def test_pidfd_less_fallback_polls(drivers: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "pidfd_open unavailable")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    d, events = drivers(poll_interval_s=0.05)
    await d.create("w1", spec("w1", "sh -c 'sleep 0.2; exit 4'"))
    await d.start("w1")
    await until(lambda: bool(events))
    assert (events[0][1].state, events[0][1].exit_code) == (WorkloadState.FAILED, 4)


async def test_start_failure_is_reported(drivers: Make, tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    d, _ = drivers()
    await d.create("w1", spec("w1", str(script)))
    script.unlink()
    st = await d.start("w1")
    assert st.state is WorkloadState.FAILED and "could not start" in st.detail
    assert (await d.status("w1")).state is WorkloadState.FAILED


BAD_SPECS = {
    "missing command": ("w1", spec("w1", None)),
    "blank command": ("w1", spec("w1", "   ")),
    "unknown executable": ("w1", spec("w1", "no-such-command-meshd-test --flag")),
    "bad quoting": ("w1", spec("w1", "sleep 'unclosed")),
    "relative path": ("w1", spec("w1", "./run.sh")),
    "not executable": ("w1", spec("w1", "/dev/null")),
    "zero cpus": ("w1", spec("w1", "sleep 1", cpus=0)),
    "zero memory": ("w1", spec("w1", "sleep 1", memory=0)),
    "unsafe id": ("../evil", spec("evil", "sleep 1")),
    "empty id": ("", spec("empty", "sleep 1")),
    "other driver": ("w1", spec("w1", "sleep 1", driver="qemu")),
    "bad env": ("w1", spec("w1", "sleep 1", env={"A=B": "x"})),
}


def test_nan_cpus_never_reach_the_driver() -> None:
    with pytest.raises(ValueError, match="cpus must be a finite number"):
        spec("w1", "sleep 1", cpus=math.nan)  # the model refuses it when it is built


@pytest.mark.parametrize(("wid", "bad"), BAD_SPECS.values(), ids=BAD_SPECS.keys())
async def test_bad_specs_are_refused_without_leftovers(
    drivers: Make, root: Path, wid: str, bad: WorkloadSpec
) -> None:
    d, _ = drivers()
    with pytest.raises(DriverError):
        await d.create(wid, bad)
    assert not root.exists() or list(root.iterdir()) == []
    assert not (root.parent / "evil").exists()


async def test_create_is_idempotent_and_refuses_a_different_spec(drivers: Make, root: Path) -> None:
    d, _ = drivers()
    await d.create("w1", spec("w1", "sleep 60"))
    assert (await d.create("w1", spec("w1", "sleep 60"))).state is WorkloadState.STOPPED
    with pytest.raises(DriverError, match="different spec"):
        await d.create("w1", spec("w1", "sleep 61"))
    # A directory without spec.json is a create that meshd died in: it is finished,
    # not refused with "File exists".
    (root / "half").mkdir()
    assert (await d.create("half", spec("half", "sleep 1"))).state is WorkloadState.STOPPED
    assert (root / "half" / "spec.json").is_file()


async def test_list_only_process_workloads(drivers: Make, root: Path) -> None:
    d, _ = drivers()
    assert await d.list() == []
    await d.create("b", spec("b", "sleep 1"))
    await d.create("a", spec("a", "sleep 1"))
    (root / "vm").mkdir()
    vm = WorkloadSpec(name="vm", driver="qemu", cpus=1, memory=64 << 20, kernel="/k")
    (root / "vm" / "spec.json").write_bytes(dumps(vm))
    (root / "junk").mkdir()
    (root / "file.txt").write_text("x")
    assert await d.list() == ["a", "b"]
    with pytest.raises(DriverError):
        await d.status("vm")
    with pytest.raises(DriverError):
        await d.start("nope")


async def test_destroy_running(drivers: Make, root: Path) -> None:
    d, events = drivers()
    await d.create("w1", spec("w1", "sleep 60"))
    pid = (await d.start("w1")).pid
    assert pid is not None
    await d.destroy("w1")
    assert not (root / "w1").exists()
    await until(lambda: read_stat(pid) is None)
    assert [e[1].state for e in events] == [WorkloadState.STOPPED]


def test_parse_stat_with_a_hostile_comm() -> None:
    rest = " ".join(["S", "1", "4242", "4242"] + ["0"] * 15 + ["98765"] + ["0"] * 30)
    st = parse_stat(f"4242 (a) b) (c ) {rest}\n")
    assert (st.pid, st.state, st.session, st.starttime) == (4242, "S", 4242, 98765)


async def test_two_meshd_on_one_host_each_kill_only_their_own_copy(tmp_path: Path) -> None:
    """A workload moved between two meshd on one host (a drain, a re-placement, the
    ``local`` preset) runs under the same id in both roots: destroying the old copy
    must not kill the new one (the marker scan once matched every root's)."""
    roots = [tmp_path / "a" / "workloads", tmp_path / "b" / "workloads"]
    a, b = (ProcessDriver(r, lambda wid, st: None) for r in roots)
    try:
        for d in (a, b):
            await d.create("w1", spec("w1", "sleep 60"))
        old = await a.start("w1")
        new = await b.start("w1")
        assert old.pid is not None and new.pid is not None
        await a.stop("w1", 5.0)
        await a.destroy("w1")
        st = read_stat(new.pid)
        assert st is not None and (await b.status("w1")).state is WorkloadState.RUNNING
        await b.start("w1")  # its own start's stray scan spares it too
        assert (await b.status("w1")).pid == new.pid
    finally:
        for d in (a, b):
            d.detach()
        for r in roots:
            kill_recorded(r)
