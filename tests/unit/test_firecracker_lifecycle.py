"""The firecracker driver's behaviour, against the fake Firecracker binary.

No real Firecracker runs here (none is installable, and it needs a hardware KVM); the
fake (``firecracker_fake.py``) speaks the API, checks it against the spec and prints the
"kernel" as the serial console. These tests cover what the driver decides: refusing
bad specs and unusable nodes, the files it writes, start/stop/status/reattach/destroy,
the graceful-then-forceful stop, exits seen by the watcher, the pid-reuse guard, and
the jailer's command line. Every VM a test starts is destroyed in ``finally``, and
any process a record still names is SIGKILLed by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshd.adapters.drivers.base import Status, WorkloadState
from meshd.adapters.drivers.firecracker import FirecrackerDriver, FirecrackerOptions
from meshd.adapters.drivers.firecracker_api import MIB, NetworkInterface, boot_args
from meshd.adapters.drivers.firecracker_host import (
    JailerOptions,
    check_availability,
    jailer_argv,
    kvm_problem,
    prepare_jail,
)
from meshd.adapters.drivers.procfs import is_alive, read_stat
from meshd.core.spec import WorkloadSpec
from meshd.errors import DriverError

try:
    from tests.unit import firecracker_fake as fake
except ImportError:  # tests/unit is not a package, so pytest put it on sys.path
    import firecracker_fake as fake  # type: ignore[no-redef]


class Lab:
    """A short temp root, the fake binary, a fake guest, and every driver made here."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.guest = fake.guest(root / "g")
        self.changes: list[tuple[str, Status]] = []
        self.drivers: list[FirecrackerDriver] = []

    def driver(self, **kw: Any) -> FirecrackerDriver:
        opts = fake.options(self.root, **kw)
        d = FirecrackerDriver(self.root / "w", lambda w, s: self.changes.append((w, s)), opts)
        self.drivers.append(d)
        return d

    async def close(self) -> None:
        for d in self.drivers:
            d.detach()
            for wid in await d.list():
                with contextlib.suppress(DriverError):
                    await d.destroy(wid)
        for record in self.root.glob("w/*/process.json"):  # anything destroy missed
            rec = json.loads(record.read_text())
            if is_alive(rec["pid"], rec["start_ticks"]):
                os.kill(rec["pid"], signal.SIGKILL)


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    lab = Lab(Path(tempfile.mkdtemp(prefix="fc-", dir="/tmp")))
    try:
        yield lab
    finally:
        await lab.close()
        shutil.rmtree(lab.root, ignore_errors=True)


async def wait_for(cond: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


# --- the node: binary and KVM -------------------------------------------------------------


def test_kvm_is_usable_only_when_it_opens_and_is_not_kvm_pvm(tmp_path: Path) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    assert kvm_problem(tmp_path / "nope", modules, False) == f"{tmp_path}/nope does not exist"
    dev = tmp_path / "kvm"
    dev.touch()
    assert kvm_problem(dev, modules, False) is None
    (modules / "kvm_pvm").mkdir()
    assert kvm_problem(dev, modules, False) == f"{dev} is kvm_pvm"
    assert kvm_problem(dev, modules, True) is None


def test_binary_from_options_then_env_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = fake.install(tmp_path / "bin")
    other = fake.install(tmp_path / "other")
    kvm, mods = tmp_path / "kvm", tmp_path
    kvm.touch()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv("MESHD_FIRECRACKER", raising=False)
    assert check_availability(None, kvm, mods, False).binary == exe
    monkeypatch.setenv("MESHD_FIRECRACKER", str(other))
    assert check_availability(None, kvm, mods, False).binary == other
    assert check_availability(exe, kvm, mods, False).binary == exe
    monkeypatch.setenv("MESHD_FIRECRACKER", str(tmp_path / "missing"))
    avail = check_availability(None, kvm, mods, False)
    assert avail.binary is None
    assert avail.sentence() == (
        "firecracker is not installed on this node; put the binary on PATH or set "
        f"MESHD_FIRECRACKER (MESHD_FIRECRACKER={tmp_path}/missing is not an executable file)"
    )


async def test_create_refuses_a_node_without_firecracker(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(lab.root / "empty"))
    monkeypatch.delenv("MESHD_FIRECRACKER", raising=False)
    (lab.root / "modules").mkdir()
    (lab.root / "modules" / "kvm_pvm").mkdir()
    d = lab.driver(binary=None)
    with pytest.raises(DriverError) as exc:
        await d.create(fake.WID, fake.spec_for(lab.guest))
    assert str(exc.value) == (
        "firecracker is not installed on this node; put the binary on PATH or set "
        f"MESHD_FIRECRACKER (this node also has no usable KVM: {lab.root}/kvm is kvm_pvm)"
    )
    assert d.availability().short() == (
        f"no firecracker binary on PATH and no usable KVM: {lab.root}/kvm is kvm_pvm"
    )
    assert not (lab.root / "w").exists()


async def test_create_refuses_a_node_without_usable_kvm(lab: Lab) -> None:
    d = lab.driver(kvm_device=lab.root / "no-kvm")
    with pytest.raises(DriverError, match=r"^firecracker cannot run on this node: it has no"):
        await d.create(fake.WID, fake.spec_for(lab.guest))


# --- create ---------------------------------------------------------------------------------

REFUSALS = {
    "no kernel": ({"kernel": None}, "needs a kernel"),
    "missing kernel": ({"kernel": "/nonexistent/vmlinux"}, "does not exist"),
    "missing initrd": ({"initrd": "/nonexistent/initrd"}, "initrd /nonexistent/initrd"),
    "little memory": ({"memory": 64 * MIB}, "at least 128 MiB"),
    "no cpus": ({"cpus": 0}, "1 to 32 vCPUs"),
    "too many cpus": ({"cpus": 33}, "1 to 32 vCPUs"),
    "cloud-init": ({"user_data": "#cloud-config\n"}, "no cloud-init seed"),
    "other driver": ({"driver": "qemu"}, "for the qemu driver"),
    "bad id": ({"wid": "../etc"}, "can't name a firecracker VM"),
}


@pytest.mark.parametrize("case", REFUSALS)
async def test_create_refuses_bad_specs_and_leaves_nothing(lab: Lab, case: str) -> None:
    fields, why = REFUSALS[case]
    fields = dict(fields)
    wid = str(fields.pop("wid", fake.WID))
    d = lab.driver()
    with pytest.raises(DriverError, match=why):
        await d.create(wid, fake.spec_for(lab.guest, **fields))
    assert not (lab.root / "w").exists() or list((lab.root / "w").iterdir()) == []


async def test_create_refuses_a_qcow2_rootfs(lab: Lab) -> None:
    lab.guest["rootfs"].write_bytes(b"QFI\xfb" + b"\0" * 100)
    with pytest.raises(DriverError, match="is qcow2; firecracker needs a raw image"):
        await lab.driver().create(fake.WID, fake.spec_for(lab.guest))


async def test_create_writes_the_config_and_copies_the_rootfs(lab: Lab) -> None:
    d = lab.driver()
    spec = fake.spec_for(lab.guest, cpus=1.5, memory=300 * MIB, cmdline="quiet console=hvc0")
    status = await d.create(fake.WID, spec)
    assert (status.state, status.detail) == (WorkloadState.STOPPED, "created; not started")
    wdir = lab.root / "w" / fake.WID
    config = json.loads((wdir / "vm-config.json").read_text())
    assert config["machine-config"] == {"vcpu_count": 2, "mem_size_mib": 300, "smt": False}
    assert config["boot-source"]["boot_args"] == "reboot=k panic=1 pci=off quiet console=hvc0"
    assert config["drives"][0]["path_on_host"] == str(wdir / "rootfs.img")
    assert (wdir / "rootfs.img").read_bytes() == lab.guest["rootfs"].read_bytes()
    assert await d.list() == [fake.WID]
    again = await d.create(fake.WID, spec)  # the same spec again is no error (Driver contract)
    assert again.state is WorkloadState.STOPPED
    with pytest.raises(DriverError, match="already exists with a different spec"):
        await d.create(fake.WID, fake.spec_for(lab.guest, cpus=2.0))
    assert (wdir / "spec.json").exists()  # the refusal left the first one alone
    assert json.loads((wdir / "vm-config.json").read_text()) == config


def test_boot_args_keep_the_specs_own_values() -> None:
    assert boot_args(None) == "console=ttyS0 reboot=k panic=1 pci=off"
    assert boot_args("panic=0 ro") == "console=ttyS0 reboot=k pci=off panic=0 ro"


# --- lifecycle ------------------------------------------------------------------------------


@pytest.mark.parametrize("boot", ["config-file", "api"])
async def test_start_status_stop_start_destroy(lab: Lab, boot: str) -> None:
    d = lab.driver(boot=boot)
    spec = fake.spec_for(lab.guest)
    await d.create(fake.WID, spec)
    started = await d.start(fake.WID)
    assert started.state is WorkloadState.RUNNING, started.detail
    assert started.pid is not None and started.extra["boot"] == boot
    assert "MESHD-READY" in d.log_path(fake.WID).read_text()
    assert (lab.root / "w" / fake.WID / "firecracker.pid").read_text() == f"{started.pid}\n"
    again = await d.start(fake.WID)
    assert (again.state, again.pid) == (WorkloadState.RUNNING, started.pid)
    status = await d.status(fake.WID)
    assert status.extra["vm_state"] == "Running"
    stopped = await d.stop(fake.WID, timeout_s=5.0)
    assert (stopped.state, stopped.detail, stopped.exit_code) == (
        WorkloadState.STOPPED,
        "stopped by ctrl-alt-del",
        0,
    )
    assert (await d.status(fake.WID)).state is WorkloadState.STOPPED
    # Firecracker leaves its socket file behind; a second start must not trip on it.
    restarted = await d.start(fake.WID)
    assert restarted.state is WorkloadState.RUNNING, restarted.detail
    assert restarted.pid != started.pid
    await d.destroy(fake.WID)
    assert not (lab.root / "w" / fake.WID).exists()
    assert restarted.pid is not None and read_stat(restarted.pid) is None
    assert lab.changes == []  # every change above was asked for, none was reported


@pytest.mark.parametrize(
    ("env", "how"),
    [({"MESHD_FAKE_FC_CTRL_ALT_DEL": "ignore"}, "SIGTERM"),
     ({"MESHD_FAKE_FC_CTRL_ALT_DEL": "ignore", "MESHD_FAKE_FC_IGNORE_TERM": "1"}, "SIGKILL")],
)  # fmt: skip
async def test_stop_falls_back_to_signals(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], how: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    d = lab.driver(term_grace_s=0.5)
    spec = fake.spec_for(lab.guest)
    await d.create(fake.WID, spec)
    pid = (await d.start(fake.WID)).pid
    stopped = await d.stop(fake.WID, timeout_s=0.3)
    assert (stopped.state, stopped.detail) == (WorkloadState.STOPPED, f"stopped by {how}")
    assert pid is not None and read_stat(pid) is None


@pytest.mark.parametrize(
    ("exit_env", "console", "state", "detail"),
    [("0.2:0", "MESHD-READY\n", WorkloadState.STOPPED, "the guest shut down"),
     ("0.2:3", "MESHD-READY\n", WorkloadState.FAILED, "firecracker exited with code 3"),
     ("0.2:0", "MESHD-READY\nKernel panic - not syncing: boom\n", WorkloadState.FAILED,
      "the guest kernel panicked: Kernel panic - not syncing: boom")],
)  # fmt: skip
async def test_the_watcher_reports_an_exit_once(
    lab: Lab,
    monkeypatch: pytest.MonkeyPatch,
    exit_env: str,
    console: str,
    state: WorkloadState,
    detail: str,
) -> None:
    monkeypatch.setenv("MESHD_FAKE_FC_EXIT", exit_env)
    lab.guest["kernel"].write_text(console)
    d = lab.driver()
    spec = fake.spec_for(lab.guest)
    await d.create(fake.WID, spec)
    assert (await d.start(fake.WID)).state is WorkloadState.RUNNING
    await wait_for(lambda: lab.changes)
    await asyncio.sleep(0.2)
    assert len(lab.changes) == 1
    wid, status = lab.changes[0]
    assert (wid, status.state) == (fake.WID, state)
    assert status.detail.startswith(detail), status.detail
    assert (await d.status(fake.WID)).state is state  # read back from exit.json


async def test_a_guest_that_never_gets_ready_fails_and_is_killed(lab: Lab) -> None:
    lab.guest["kernel"].write_text("Linux version 6.1 (fake)\nstuck\n")
    d = lab.driver()
    spec = fake.spec_for(lab.guest, boot_timeout_s=1.0)
    await d.create(fake.WID, spec)
    status = await d.start(fake.WID)
    assert status.state is WorkloadState.FAILED
    assert status.detail == "the guest did not print 'MESHD-READY' within 1 s"
    rec = json.loads((lab.root / "w" / fake.WID / "process.json").read_text())
    assert not is_alive(rec["pid"], rec["start_ticks"])
    assert (await d.status(fake.WID)).state is WorkloadState.FAILED


async def test_a_firecracker_that_refuses_its_config_fails_with_its_words(lab: Lab) -> None:
    d = lab.driver()
    spec = fake.spec_for(lab.guest)
    await d.create(fake.WID, spec)
    lab.guest["kernel"].unlink()  # gone between create and start
    status = await d.start(fake.WID)
    assert status.state is WorkloadState.FAILED
    assert status.detail.startswith("firecracker exited before its API answered (exit status 1")
    assert "Cannot open the kernel file" in status.detail


async def test_reattach_finds_the_vm_after_a_daemon_restart(lab: Lab) -> None:
    first = lab.driver()
    spec = fake.spec_for(lab.guest)
    await first.create(fake.WID, spec)
    pid = (await first.start(fake.WID)).pid
    first.detach()  # meshd exits; the VM stays
    second = lab.driver()
    assert await second.list() == [fake.WID]
    status = await second.reattach(fake.WID)
    assert (status.state, status.pid) == (WorkloadState.RUNNING, pid)
    stopped = await second.stop(fake.WID, timeout_s=5.0)
    assert stopped.detail == "stopped by ctrl-alt-del"
    assert stopped.exit_code is None  # not its child: the status went to init


async def test_reattach_after_an_upgrade_reads_the_old_spec_json(lab: Lab) -> None:
    first = lab.driver()
    spec = fake.spec_for(lab.guest)
    await first.create(fake.WID, spec)
    pid = (await first.start(fake.WID)).pid
    first.detach()
    # What the driver dataclass of meshd before the one model wrote: every field, nulls
    # for the unset ones, and the id.
    old = {
        "id": fake.WID, "name": "web", "driver": "firecracker", "cpus": 1.0,
        "memory": 256 * MIB, "disk": 0, "command": None, "image": str(lab.guest["rootfs"]),
        "kernel": str(lab.guest["kernel"]), "initrd": str(lab.guest["initrd"]),
        "cmdline": None, "user_data": None, "meta_data": None, "network_config": None,
        "env": {}, "boot_timeout_s": 20.0, "ready_marker": "MESHD-READY",
    }  # fmt: skip
    (lab.root / "w" / fake.WID / "spec.json").write_text(json.dumps(old, indent=2))
    second = lab.driver()
    assert await second.list() == [fake.WID]
    status = await second.reattach(fake.WID)
    assert (status.state, status.pid) == (WorkloadState.RUNNING, pid)
    await second.stop(fake.WID, timeout_s=5.0)
    restarted = await second.start(fake.WID)  # boot timeout and marker from the old file
    assert restarted.state is WorkloadState.RUNNING, restarted.detail
    assert restarted.pid != pid


async def test_the_nics_hook_is_given_the_workload_id(lab: Lab) -> None:
    asked: list[str] = []

    def nics(wid: str, spec: WorkloadSpec) -> list[NetworkInterface]:
        asked.append(wid)
        return [NetworkInterface("eth0", f"tap-{wid}")]

    d = lab.driver(nics=nics)
    await d.create(fake.WID, fake.spec_for(lab.guest))
    config = json.loads((lab.root / "w" / fake.WID / "vm-config.json").read_text())
    assert asked == [fake.WID]
    assert config["network-interfaces"] == [{"iface_id": "eth0", "host_dev_name": "tap-vm-1"}]


async def test_reattach_reports_a_vm_that_died_while_meshd_was_away(lab: Lab) -> None:
    first = lab.driver()
    spec = fake.spec_for(lab.guest)
    await first.create(fake.WID, spec)
    pid = (await first.start(fake.WID)).pid
    first.detach()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: not is_alive(pid, read_stat(pid).starttime if read_stat(pid) else 0))
    status = await lab.driver().reattach(fake.WID)
    assert status.state is WorkloadState.FAILED
    assert "firecracker exit status unknown" in status.detail


async def test_a_recycled_pid_is_never_taken_for_the_vm(lab: Lab) -> None:
    d = lab.driver()
    spec = fake.spec_for(lab.guest)
    await d.create(fake.WID, spec)
    me = read_stat(os.getpid())
    assert me is not None
    record = {
        "pid": os.getpid(),  # alive, but started at another time: not the VM
        "start_ticks": me.starttime + 1,
        "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        "started_at": 0.0,
        "api_sock": str(lab.root / "w" / fake.WID / "fc.sock"),
        "jail": None,
    }
    (lab.root / "w" / fake.WID / "process.json").write_text(json.dumps(record))
    assert (await d.reattach(fake.WID)).state is WorkloadState.FAILED
    stopped = await d.stop(fake.WID, timeout_s=0.1)  # must not signal this test's process
    assert stopped.detail == "stopped by nothing: it was not running"


async def test_status_of_an_unknown_workload_is_refused(lab: Lab) -> None:
    with pytest.raises(DriverError, match="no firecracker workload nope on this node"):
        await lab.driver().status("nope")
    await lab.driver().destroy("nope")  # nothing to do, no error


# --- jailer ---------------------------------------------------------------------------------


def test_jailer_argv() -> None:
    opts = JailerOptions(uid=1001, gid=1002, netns=Path("/var/run/netns/m0"),
                         resource_limits=("no-file=1024",))  # fmt: skip
    argv = jailer_argv(Path("/usr/bin/jailer"), Path("/usr/bin/firecracker"), "vm-1", opts, 1.5)
    assert argv == [
        "/usr/bin/jailer", "--id", "vm-1", "--exec-file", "/usr/bin/firecracker",
        "--uid", "1001", "--gid", "1002", "--chroot-base-dir", "/srv/jailer",
        "--cgroup-version", "2", "--cgroup", "cpu.max=150000 100000",
        "--netns", "/var/run/netns/m0", "--resource-limit", "no-file=1024",
        "--", "--api-sock", "/fc.sock", "--config-file", "/vm-config.json",
    ]  # fmt: skip
    plain = JailerOptions(uid=1, gid=1, limit_cpu=False, parent_cgroup="meshd")
    api_boot = jailer_argv(Path("j"), Path("firecracker"), "vm-1", plain, 1, config_file=False)
    assert api_boot[api_boot.index("--") :] == ["--", "--api-sock", "/fc.sock"]
    assert "--parent-cgroup" in api_boot and "--cgroup" not in api_boot
    assert "--daemonize" not in argv + api_boot and "--new-pid-ns" not in argv + api_boot


def test_prepare_jail_links_the_vms_files_into_the_chroot(tmp_path: Path) -> None:
    wdir = tmp_path / "w"
    wdir.mkdir()
    rootfs, log = wdir / "rootfs.img", wdir / "firecracker.log"
    rootfs.write_bytes(b"\0" * 512)
    log.touch()
    g = fake.guest(tmp_path / "g")
    g["kernel"].chmod(0o644)
    g["initrd"].chmod(0o600)  # not world-readable: copied and handed to the jail's uid
    config = {
        "boot-source": {"kernel_image_path": str(g["kernel"]), "initrd_path": str(g["initrd"])},
        "drives": [{"drive_id": "rootfs", "path_on_host": str(rootfs), "is_root_device": True}],
        "logger": {"log_path": str(log)},
    }
    root = tmp_path / "jail" / "firecracker" / "vm-1" / "root"
    opts = JailerOptions(uid=os.getuid(), gid=os.getgid(), chroot_base=tmp_path / "jail")
    jailed = prepare_jail(root, config, opts)
    assert jailed["boot-source"] == {
        "kernel_image_path": "/vmlinux",
        "initrd_path": "/initrd.cpio.gz",
    }
    assert jailed["drives"][0]["path_on_host"] == "/rootfs.img"
    assert (root / "rootfs.img").stat().st_ino == rootfs.stat().st_ino  # the VM's own disk
    assert (root / "vmlinux").stat().st_ino == g["kernel"].stat().st_ino
    assert (root / "initrd.cpio.gz").stat().st_ino != g["initrd"].stat().st_ino
    assert json.loads((root / "vm-config.json").read_text()) == jailed
    assert config["drives"][0]["path_on_host"] == str(rootfs)  # the original is untouched


def test_options_are_documented_knobs() -> None:
    opts = FirecrackerOptions()
    assert (opts.boot, opts.jailer, opts.allow_kvm_pvm) == ("config-file", None, False)
