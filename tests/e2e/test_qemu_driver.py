"""The QEMU driver end to end: real QEMU guests (TCG here), root only.

Proves, with the busybox guest of bootstrap/guest-image.sh (built once, cached):
* a microvm guest (cloud vmlinux + initramfs + NoCloud seed) boots within a bound and
  its console shows MESHD-GUEST-READY; a NEW driver instance reattaches to the same
  QEMU pid over QMP; stop presses the ACPI button and the guest powers off; destroy
  leaves no process and no file;
* a q35 guest on a qcow2 overlay of the base disk boots too, and destroy without stop
  removes it all;
* what happens behind meshd's back is reported through on_change: a guest power-off
  (stopped) and a killed QEMU (failed); a QEMU that died while meshd was away is
  reported failed by reattach; one still booting when meshd went away is reattached
  as starting and reported running once its marker appears;
* a tap on a bridge (in a namespace of its own) carries a microvm's and a q35 guest's
  traffic: each answers a ping at the address its kernel command line gave it;
* bad input is refused at create with a clear DriverError and nothing left behind; a
  kernel that never reaches the marker fails start within its boot timeout, and no
  QEMU is left running.

Every QEMU a test starts is killed by its own pid in ``finally`` (the pids come from
the driver's run records and from scanning /proc for the test's own directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from meshd.adapters.drivers import qemu_host as host
from meshd.adapters.drivers.base import Status, WorkloadState
from meshd.adapters.drivers.qemu import QemuDriver
from meshd.core.spec import Nic, WorkloadSpec
from meshd.errors import DriverError
from tests.e2e.needs import skip_reason

REPO = Path(__file__).resolve().parents[2]
MARKER = "MESHD-GUEST-READY"
MIB = 1024 * 1024
BOOT_TIMEOUT_S = 40.0  # TCG boots in ~1.5 s alone; generous for a loaded 2-core CI box

_NO_QEMU = "qemu-system-x86_64/qemu-img are not installed (bootstrap/setup.sh --test)"
reason = skip_reason(
    "QEMU e2e tests need root (they start VMs and read /proc)",
    ("qemu-system-x86_64", _NO_QEMU),
    ("qemu-img", _NO_QEMU),
)
pytestmark = [
    pytest.mark.skipif(reason is not None, reason=reason or ""),
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.timeout(120),
]


def _qemu_pids_under(path: Path) -> list[int]:
    """QEMU processes whose command line names ``path`` (this test's own directory)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and str(path) in cmdline:
            st = host.proc_stat(int(d.name))
            if st and st[0] not in "ZX":
                found.append(int(d.name))
    return found


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """The workloads directory; every QEMU started under it is SIGKILLed afterwards."""
    wl = tmp_path / "wl"
    try:
        yield wl
    finally:
        for pid in _qemu_pids_under(tmp_path):
            os.kill(pid, signal.SIGKILL)


class Changes:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Status]] = []
        self.event = asyncio.Event()

    def __call__(self, wid: str, status: Status) -> None:
        self.seen.append((wid, status))
        self.event.set()

    async def wait(self, wid: str, state: WorkloadState, timeout_s: float = 20.0) -> Status:
        deadline = time.monotonic() + timeout_s
        while True:
            for w, s in self.seen:
                if w == wid and s.state == state:
                    return s
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {state} for {wid}; saw {self.seen}")
            self.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), left)


@pytest.fixture
async def driver(root: Path) -> AsyncIterator[tuple[QemuDriver, Changes]]:
    changes = Changes()
    d = QemuDriver(root, changes)
    try:
        yield d, changes
    finally:
        await d.close()


def micro(guest: dict[str, str], wid: str, **kw: object) -> WorkloadSpec:
    fields: dict[str, object] = {
        "name": wid,
        "driver": "qemu",
        "cpus": 1.0,
        "memory": 128 * MIB,
        "kernel": guest["MESHD_GUEST_VMLINUX"],
        "initrd": guest["MESHD_GUEST_INITRD"],
        "ready_marker": MARKER,
        "boot_timeout_s": BOOT_TIMEOUT_S,
    }
    fields.update(kw)
    return WorkloadSpec(**fields)  # type: ignore[arg-type]


def assert_gone(root: Path, wid: str, pid: int | None) -> None:
    if pid is not None:
        st = host.proc_stat(pid)
        assert st is None or st[0] in "ZX", f"QEMU pid {pid} still runs"
    assert not (root / wid).exists()


async def test_boot_reattach_stop_destroy(
    guest: dict[str, str], root: Path, driver: tuple[QemuDriver, Changes]
) -> None:
    d, _ = driver
    spec = micro(guest, "vm-a", user_data="#cloud-config\nhostname: a\n")
    created = await d.create("vm-a", spec)
    assert created.state == WorkloadState.STOPPED and created.extra["accel"] == d.accel.name
    assert (root / "vm-a" / "seed.img").stat().st_size > 0
    t0 = time.monotonic()
    st = await d.start("vm-a")
    boot_s = time.monotonic() - t0
    assert st.state == WorkloadState.RUNNING, st.detail
    assert boot_s < BOOT_TIMEOUT_S
    print(f"boot to marker: {boot_s:.2f} s ({st.detail})")
    assert MARKER in d.log_path("vm-a").read_text()
    assert st.extra["accel"] == d.accel.name and d.accel.name in st.detail
    pid = st.pid
    assert pid is not None and "-machine\0microvm" in Path(f"/proc/{pid}/cmdline").read_text()
    assert await d.list() == ["vm-a"]

    # A daemon restart: a new driver instance finds the same QEMU and talks QMP to it.
    await d.close()
    changes2 = Changes()
    d2 = QemuDriver(root, changes2)
    try:
        t0 = time.monotonic()
        again = await d2.reattach("vm-a")
        print(f"reattach: {(time.monotonic() - t0) * 1000:.1f} ms")
        assert again.state == WorkloadState.RUNNING and again.pid == pid
        assert again.extra["runstate"] == "running"

        stopped = await d2.stop("vm-a", timeout_s=20)
        assert stopped.state == WorkloadState.STOPPED
        assert "powered off" in stopped.detail, stopped.detail
        assert "MESHD-GUEST-POWEROFF" in d2.log_path("vm-a").read_text()
        assert (await d2.status("vm-a")).state == WorkloadState.STOPPED
        for name in ("qmp.sock", "qemu.pid", "run.json"):
            assert not (root / "vm-a" / name).exists()
        st2 = host.proc_stat(pid)
        assert st2 is None or st2[0] in "ZX"

        await d2.destroy("vm-a")
        assert_gone(root, "vm-a", pid)
        assert await d2.list() == []
        assert changes2.seen == []  # stop drove the exit; nothing happened behind our back
    finally:
        await d2.close()


async def test_q35_on_an_overlay_and_destroy_while_running(
    guest: dict[str, str], root: Path, driver: tuple[QemuDriver, Changes]
) -> None:
    d, _ = driver
    spec = micro(
        guest,
        "vm-q",
        kernel=guest["MESHD_GUEST_BZIMAGE"],
        image=guest["MESHD_GUEST_DISK"],
        disk=128 * MIB,
    )
    await d.create("vm-q", spec)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(root / "vm-q" / "overlay.qcow2")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "qcow2" and info["virtual-size"] == 128 * MIB
    assert info["backing-filename"] == guest["MESHD_GUEST_DISK"]
    st = await d.start("vm-q")
    assert st.state == WorkloadState.RUNNING, st.detail
    assert st.pid is not None and "-machine\0q35" in Path(f"/proc/{st.pid}/cmdline").read_text()
    await d.destroy("vm-q")
    assert_gone(root, "vm-q", st.pid)
    assert Path(guest["MESHD_GUEST_DISK"]).exists()  # the base image is never touched


async def test_changes_behind_our_back(
    guest: dict[str, str], root: Path, driver: tuple[QemuDriver, Changes]
) -> None:
    d, changes = driver
    await d.create("vm-off", micro(guest, "vm-off"))
    await d.create("vm-kill", micro(guest, "vm-kill"))
    off, killed = await asyncio.gather(d.start("vm-off"), d.start("vm-kill"))
    assert off.state == killed.state == WorkloadState.RUNNING, (off.detail, killed.detail)

    # The guest powers off by itself (here: its ACPI button, pressed over a second path).
    sess = d._sessions["vm-off"]
    await sess.execute("system_powerdown")
    s = await changes.wait("vm-off", WorkloadState.STOPPED)
    assert "powered off" in s.detail
    assert (await d.status("vm-off")).state == WorkloadState.STOPPED

    # QEMU is killed: failed, with a sentence saying there was no shutdown.
    assert killed.pid is not None
    os.kill(killed.pid, signal.SIGKILL)
    s = await changes.wait("vm-kill", WorkloadState.FAILED)
    assert "without a shutdown event" in s.detail
    assert not (root / "vm-kill" / "qmp.sock").exists()

    # Restartable after either.
    again = await d.start("vm-kill")
    assert again.state == WorkloadState.RUNNING and again.pid != killed.pid
    assert (root / "vm-kill" / "console.log.1").exists()
    for wid in ("vm-off", "vm-kill"):
        await d.destroy(wid)
    assert_gone(root, "vm-kill", again.pid)


async def test_died_while_meshd_was_away(
    guest: dict[str, str], root: Path, driver: tuple[QemuDriver, Changes]
) -> None:
    d, _ = driver
    await d.create("vm-away", micro(guest, "vm-away"))
    st = await d.start("vm-away")
    assert st.state == WorkloadState.RUNNING and st.pid is not None
    await d.close()
    os.kill(st.pid, signal.SIGKILL)
    while (ps := host.proc_stat(st.pid)) is not None and ps[0] not in "ZX":
        await asyncio.sleep(0.01)
    d2 = QemuDriver(root, Changes())
    try:
        found = await d2.reattach("vm-away")
        assert found.state == WorkloadState.FAILED
        assert "while meshd was not watching" in found.detail
        assert not (root / "vm-away" / "qemu.pid").exists()
        await d2.destroy("vm-away")
        assert_gone(root, "vm-away", st.pid)
    finally:
        await d2.close()


async def test_restart_while_a_guest_boots(
    guest: dict[str, str], root: Path, driver: tuple[QemuDriver, Changes]
) -> None:
    d, _ = driver
    await d.create("vm-boot", micro(guest, "vm-boot"))
    start = asyncio.ensure_future(d.start("vm-boot"))
    while not (root / "vm-boot" / "run.json").exists():
        await asyncio.sleep(0.01)
    start.cancel()  # the daemon goes away mid-boot; the VM does not
    with contextlib.suppress(asyncio.CancelledError):
        await start
    await d.close()
    changes = Changes()
    d2 = QemuDriver(root, changes)
    try:
        found = await d2.reattach("vm-boot")
        # Usually mid-boot (the guest needs ~1 s); on a quick run it may have finished
        # booting while no driver watched, which reattach must report just as well.
        assert found.state in (WorkloadState.STARTING, WorkloadState.RUNNING), found.detail
        if found.state == WorkloadState.STARTING:
            done = await changes.wait("vm-boot", WorkloadState.RUNNING, BOOT_TIMEOUT_S)
            assert done.pid == found.pid
        assert (await d2.status("vm-boot")).state == WorkloadState.RUNNING
        await d2.destroy("vm-boot")
        assert_gone(root, "vm-boot", found.pid)
    finally:
        await d2.close()


async def test_bad_input_is_refused_with_nothing_left(
    guest: dict[str, str], root: Path, tmp_path: Path, driver: tuple[QemuDriver, Changes]
) -> None:
    d, _ = driver
    junk = tmp_path / "random.bin"
    junk.write_bytes(os.urandom(64 * 1024))
    cases = {
        "b1": (micro(guest, "b1", kernel=str(tmp_path / "nope")), "kernel .* does not exist"),
        "b2": (micro(guest, "b2", image=str(tmp_path / "nope.qcow2")), "image .* does not exist"),
        "b3": (micro(guest, "b3", kernel=str(junk)), "neither a bzImage nor an ELF vmlinux"),
        "b4": (micro(guest, "b4", user_data="#" * (64 * 1024 + 1)), "over the 64 KiB limit"),
        "b5": (micro(guest, "b5", env={"PATH": "/bin"}), "does not use env PATH"),
        "b6": (micro(guest, "b6", kernel=None, initrd=None, image=str(junk), disk=1), "smaller"),
        "b7": (micro(guest, "b7", env={"QEMU_BRIDGE": "br0"}), r"node's bridge \(MESHD_QEMU"),
    }
    for wid, (spec, message) in cases.items():
        with pytest.raises(DriverError, match=message):
            await d.create(wid, spec)
        assert not (root / wid).exists()
    with pytest.raises(DriverError, match="no qemu workload"):
        await d.start("never-created")
    # A NIC's tap is made by the runner (meshd.shell.guests) before the driver starts the
    # guest: started without it, the guest is refused rather than put on no bridge.
    await d.create("b8", micro(guest, "b8", nics=(Nic("lan", "10.40.0.9"),)))
    started = await d.start("b8")
    assert started.state is WorkloadState.FAILED, started
    assert re.search(r"tap \S+ of workload b8 does not exist", started.detail), started.detail
    await d.destroy("b8")
    await d.create("dup", micro(guest, "dup"))
    # Idempotent (the Driver contract): the same spec again is no error, another one is.
    assert (await d.create("dup", micro(guest, "dup"))).state is WorkloadState.STOPPED
    with pytest.raises(DriverError, match="different spec"):
        await d.create("dup", micro(guest, "dup", memory=256 * MIB))
    (root / "half").mkdir()  # a create cut short (no spec.json): done again, not refused
    await d.create("half", micro(guest, "half"))
    await d.destroy("half")
    await d.destroy("dup")
    assert _qemu_pids_under(tmp_path) == []
    assert await d.list() == []


async def test_a_kernel_that_does_not_boot(
    guest: dict[str, str], root: Path, tmp_path: Path, driver: tuple[QemuDriver, Changes]
) -> None:
    d, changes = driver
    # Looks like a bzImage (the header magic), boots nothing: no marker ever.
    fake = bytearray(os.urandom(256 * 1024))
    fake[0x202:0x206] = b"HdrS"
    (tmp_path / "fake-bzImage").write_bytes(bytes(fake))
    spec = micro(guest, "vm-bad", kernel=str(tmp_path / "fake-bzImage"), boot_timeout_s=3.0)
    await d.create("vm-bad", spec)
    t0 = time.monotonic()
    st = await d.start("vm-bad")
    took = time.monotonic() - t0
    assert st.state == WorkloadState.FAILED
    assert "did not boot" in st.detail and "within 3 s" in st.detail, st.detail
    assert took < 3.0 + 5.0
    assert _qemu_pids_under(tmp_path) == []
    for name in ("qmp.sock", "qemu.pid", "run.json"):
        assert not (root / "vm-bad" / name).exists()
    assert (await d.status("vm-bad")).state == WorkloadState.FAILED
    assert changes.seen == []  # start returned the failure itself

    # A base image that vanished after create: QEMU refuses, start says why.
    base = tmp_path / "base.qcow2"
    shutil.copy(guest["MESHD_GUEST_DISK"], base)
    await d.create("vm-gone", micro(guest, "vm-gone", image=str(base)))
    base.unlink()
    st = await d.start("vm-gone")
    assert st.state == WorkloadState.FAILED and "QEMU refused" in st.detail, st.detail
    for wid in ("vm-bad", "vm-gone"):
        await d.destroy(wid)
        assert_gone(root, wid, None)
    assert _qemu_pids_under(tmp_path) == []


# Runs inside a network namespace holding bridge br0 (10.99.0.1/24): a microvm and a
# q35 guest, each on a tap on br0 with a static address, must answer a ping.
NET_SCRIPT = """
import asyncio, json, subprocess, sys
from pathlib import Path
from meshd.adapters.drivers.qemu import QemuDriver
from meshd.core.spec import WorkloadSpec

root, vmlinux, bzimage, initrd, disk = sys.argv[1:6]

async def boot(d, wid, addr, **kw):
    spec = WorkloadSpec(name=wid, driver="qemu", cpus=1.0, memory=128 << 20,
                        initrd=initrd, cmdline=f"meshd.ip={addr}/24",
                        ready_marker="MESHD-GUEST-READY", boot_timeout_s=40.0, **kw)
    await d.create(wid, spec)
    st = await d.start(wid)
    ping = subprocess.run(["busybox", "ping", "-c", "1", "-W", "5", addr], capture_output=True)
    return {"state": st.state.value, "detail": st.detail, "ping": ping.returncode}

async def main():
    d = QemuDriver(Path(root), lambda w, s: None, bridge="br0")
    out = {}
    try:
        out["micro"], out["q35"] = await asyncio.gather(
            boot(d, "net-micro", "10.99.0.2", kernel=vmlinux),
            boot(d, "net-q35", "10.99.0.3", kernel=bzimage, image=disk),
        )
    finally:
        for wid in await d.list():
            await d.destroy(wid)
        await d.close()
    out["links"] = sorted(p.name for p in Path("/sys/class/net").iterdir())
    print(json.dumps(out))

asyncio.run(main())
"""


def test_tap_on_a_bridge(guest: dict[str, str], root: Path) -> None:
    if not shutil.which("ip") or not shutil.which("busybox"):
        pytest.skip("needs iproute2 and busybox (bootstrap/setup.sh --test)")
    ns = f"meshd-qemu-{os.getpid()}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)

    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    try:
        ip("link", "add", "br0", "type", "bridge")
        ip("addr", "add", "10.99.0.1/24", "dev", "br0")
        ip("link", "set", "br0", "up")
        argv = [
            "ip", "netns", "exec", ns, sys.executable, "-c", NET_SCRIPT, str(root),
            guest["MESHD_GUEST_VMLINUX"], guest["MESHD_GUEST_BZIMAGE"],
            guest["MESHD_GUEST_INITRD"], guest["MESHD_GUEST_DISK"],
        ]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        for kind in ("micro", "q35"):
            assert out[kind]["state"] == "running", out[kind]["detail"]
            assert out[kind]["ping"] == 0, f"{kind} guest did not answer a ping on br0"
        assert out["links"] == ["br0", "lo"]  # destroy removed both taps
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
