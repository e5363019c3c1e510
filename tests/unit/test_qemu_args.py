"""The QEMU driver's pure half: accelerator choice, checks, kernel args, command line."""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

import pytest

from meshd.adapters.drivers import qemu_host as host
from meshd.adapters.drivers.qemu import QemuDriver
from meshd.adapters.drivers.qemu_args import (
    MICROVM_OPTS,
    USER_DATA_MAX,
    LaunchPlan,
    argv,
    choose_accel,
    kernel_args,
    kernel_kind,
    mac_for,
    machine_for,
    plan_for,
    tap_name,
    tsc_khz,
    validate,
)
from meshd.adapters.drivers.specfile import read_spec
from meshd.core import nic
from meshd.core.spec import Nic, WorkloadSpec, dumps
from meshd.errors import DriverError

MIB = 1024 * 1024
WID = "vm1"


def spec(**kw: object) -> WorkloadSpec:
    base: dict[str, object] = {
        "name": "vm1",
        "driver": "qemu",
        "cpus": 1.0,
        "memory": 128 * MIB,
        "kernel": "/k/vmlinux",
    }
    base.update(kw)
    return WorkloadSpec(**base)  # type: ignore[arg-type]


# -- accelerator ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modules", "dev", "accel", "reason"),
    [
        (["kvm", "kvm_intel"], "file", "kvm", "kvm (kvm_intel)"),
        (["kvm", "kvm_amd"], "file", "kvm", "kvm (kvm_amd)"),
        (["kvm", "kvm_pvm"], "file", "tcg", "kvm_pvm"),
        (["kvm", "kvm_intel", "kvm_pvm"], "file", "tcg", "kvm_pvm"),
        (["kvm"], "file", "tcg", "neither kvm_intel nor kvm_amd"),
        ([], "missing", "tcg", "neither kvm_intel nor kvm_amd"),
        (["kvm", "kvm_intel"], "missing", "tcg", "is not usable"),
        (["kvm", "kvm_intel"], "dir", "tcg", "is not usable"),  # open(O_RDWR) fails
    ],
)
def test_accel_table(tmp_path: Path, modules: list[str], dev: str, accel: str, reason: str) -> None:
    sys_root = tmp_path / "sys"
    for m in modules:
        (sys_root / "module" / m).mkdir(parents=True)
    kvm = tmp_path / "kvm"
    if dev == "file":
        kvm.write_bytes(b"")
    elif dev == "dir":
        kvm.mkdir()
    got = choose_accel(sys_root, kvm)
    assert got.name == accel
    assert reason in got.reason
    assert got.reason.startswith(accel)


def test_accel_here_avoids_kvm_pvm() -> None:
    got = choose_accel()
    if os.path.exists("/sys/module/kvm_pvm"):
        assert got.name == "tcg"


# -- host facts ----------------------------------------------------------------------


def test_tsc_khz_from_cpuinfo_then_cpufreq() -> None:
    cpuinfo = "processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2596.122\ncache size\t: 1 KB\n"
    assert tsc_khz(cpuinfo) == 2596122
    assert tsc_khz("processor: 0\n", "3000000\n") == 3000000
    assert tsc_khz("cpu MHz : 0.000\n", None) is None
    assert tsc_khz(None, None) is None


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x7fELF\x02\x01\x01" + bytes(1000), "elf"),
        (bytes(0x202) + b"HdrS" + bytes(100), "bzimage"),
        (b"#!/bin/sh\necho hi\n" + bytes(1000), None),
        (b"", None),
    ],
)
def test_kernel_kind(head: bytes, kind: str | None) -> None:
    assert kernel_kind(head) == kind


# -- checks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"driver": "process"}, "for the 'process' driver"),
        ({"wid": "../etc"}, "an id is"),
        ({"wid": ""}, "an id is"),
        ({"command": "/bin/true"}, "not a command"),
        ({"env": {"FOO": "1"}}, "does not use env FOO"),
        # The bridge is the node's: a workload's env no longer smuggles one in.
        ({"env": {"QEMU_BRIDGE": "br0"}}, "the node's bridge (MESHD_QEMU_BRIDGE)"),
        ({"kernel": None}, "needs a kernel or a disk image"),
        ({"kernel": None, "image": "/i.qcow2", "initrd": "/i"}, "needs a kernel"),
        ({"kernel": None, "image": "/i.qcow2", "cmdline": "x"}, "needs a kernel"),
        ({"cpus": 0.0}, "cpus must be positive"),
        ({"memory": 8 * MIB}, "at least 16 MiB"),
        ({"disk": 1 << 30}, "needs an image"),
        ({"disk": -1, "image": "/i"}, "must not be negative"),
        ({"boot_timeout_s": 0.0}, "boot_timeout_s"),
        ({"ready_marker": "a\nb"}, "one non-empty line"),
        ({"ready_marker": ""}, "one non-empty line"),
        ({"user_data": "x" * (USER_DATA_MAX + 1)}, "user-data is 65537 bytes, over the 64 KiB"),
        ({"meta_data": "x" * (16 * 1024 + 1)}, "meta-data"),
        ({"network_config": "x" * (16 * 1024 + 1)}, "network-config"),
    ],
)
def test_refused(changes: dict[str, object], fragment: str) -> None:
    fields = dict(changes)
    wid = str(fields.pop("wid", WID))
    with pytest.raises(DriverError, match="workload") as err:
        validate(wid, spec(**fields))
    assert fragment in str(err.value)


def test_nan_cpus_never_reach_the_driver() -> None:
    with pytest.raises(ValueError, match="cpus must be a finite number"):
        spec(cpus=float("nan"))  # the model refuses it when it is built


def test_size_limits_count_bytes_not_characters() -> None:
    validate(WID, spec(user_data="x" * USER_DATA_MAX))  # exactly at the limit is fine
    with pytest.raises(DriverError, match="user-data"):
        validate(WID, spec(user_data="é" * (USER_DATA_MAX // 2 + 1)))  # 2 bytes each


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"image": "/base.qcow2", "kernel": None, "disk": 1 << 30},
        {"image": "/base.qcow2", "initrd": "/i", "cmdline": "x=1"},
        {"user_data": "#cloud-config\n", "cpus": 0.5},
    ],
)
def test_accepted(changes: dict[str, object]) -> None:
    validate(WID, spec(**changes))


def test_unknown_json_fields_are_refused(tmp_path: Path) -> None:
    wdir = tmp_path / WID
    wdir.mkdir()
    raw = dumps(spec()).replace(b'"cpus"', b'"vcpus":2,"cpus"')
    (wdir / "spec.json").write_bytes(raw)
    with pytest.raises(DriverError, match="is not a workload spec meshd can read") as err:
        read_spec(wdir)
    assert "vcpus" in str(err.value)


# -- machine, kernel args, command line ----------------------------------------------


def test_machine_choice() -> None:
    assert machine_for(spec()) == "microvm"
    assert machine_for(spec(image="/b.qcow2")) == "q35"
    assert machine_for(spec(kernel=None, image="/b.qcow2")) == "q35"


def test_kernel_args() -> None:
    assert kernel_args("microvm", 2596122, None) == (
        "console=ttyS0 quiet cryptomgr.notests tsc_early_khz=2596122"
    )
    assert kernel_args("microvm", None, None) == "console=ttyS0 quiet cryptomgr.notests"
    q35 = kernel_args("q35", 2596122, " root=/dev/vda1 ")
    assert "tsc_early_khz" not in q35
    assert q35.endswith("cryptomgr.notests root=/dev/vda1")  # the workload's come last


def _plan(tmp: Path, s: WorkloadSpec, **kw: object) -> LaunchPlan:
    args: dict[str, object] = {
        "binary": "qemu-system-x86_64",
        "accel": "tcg",
        "khz": 2596122,
        "bridge": None,
        "has_disk": False,
        "has_seed": False,
    }
    args.update(kw)
    return plan_for(WID, s, tmp, **args)  # type: ignore[arg-type]


def _pairs(cmd: list[str]) -> list[tuple[str, str]]:
    return list(itertools.pairwise(cmd))


def test_argv_microvm(tmp_path: Path) -> None:
    s = spec(cpus=1.5, memory=100 * MIB + 1, initrd="/k/initrd", cmdline="meshd.ip=dhcp")
    cmd = argv(_plan(tmp_path, s))
    pairs = _pairs(cmd)
    assert cmd[0] == "qemu-system-x86_64"
    assert ("-machine", MICROVM_OPTS) in pairs
    assert "acpi=on" in MICROVM_OPTS and "x-option-roms=off" in MICROVM_OPTS
    assert ("-accel", "tcg") in pairs
    assert ("-m", "101") in pairs  # MiB, rounded up
    assert ("-smp", "2") in pairs  # ceil(cpus)
    assert ("-kernel", "/k/vmlinux") in pairs
    assert ("-initrd", "/k/initrd") in pairs
    append = cmd[cmd.index("-append") + 1]
    assert append == ("console=ttyS0 quiet cryptomgr.notests tsc_early_khz=2596122 meshd.ip=dhcp")
    for flag in ("-nodefaults", "-no-user-config", "-daemonize"):
        assert flag in cmd
    assert ("-display", "none") in pairs
    assert ("-pidfile", str(tmp_path / "qemu.pid")) in pairs
    assert ("-qmp", f"unix:{tmp_path / 'qmp.sock'},server=on,wait=off") in pairs
    assert ("-chardev", f"file,id=con0,path={tmp_path / 'console.log'}") in pairs
    assert ("-serial", "chardev:con0") in pairs
    assert "-cpu" not in cmd  # TCG: QEMU's default model
    assert not any("pvpanic" in a or "pci" in a for a in cmd)


def test_argv_q35_with_overlay_seed_and_kvm(tmp_path: Path) -> None:
    s = spec(kernel=None, image="/base.qcow2", user_data="#cloud-config\n")
    cmd = argv(_plan(tmp_path, s, accel="kvm", has_disk=True, has_seed=True))
    pairs = _pairs(cmd)
    assert ("-machine", "q35") in pairs
    assert ("-cpu", "host") in pairs
    assert "-kernel" not in cmd and "-append" not in cmd
    assert ("-drive", f"id=disk0,if=none,format=qcow2,file={tmp_path / 'overlay.qcow2'}") in pairs
    assert ("-device", "virtio-blk-pci,drive=disk0,bootindex=1") in pairs
    seed = f"id=seed0,if=none,format=raw,readonly=on,file={tmp_path / 'seed.img'}"
    assert ("-drive", seed) in pairs
    assert ("-device", "virtio-blk-pci,drive=seed0") in pairs
    assert ("-device", "pvpanic") in pairs


def test_argv_q35_direct_kernel_has_no_tsc_hint(tmp_path: Path) -> None:
    cmd = argv(_plan(tmp_path, spec(image="/base.qcow2"), has_disk=True))
    assert ("-machine", "q35") in _pairs(cmd)
    assert ("-device", "virtio-blk-pci,drive=disk0") in _pairs(cmd)
    assert "tsc_early_khz" not in cmd[cmd.index("-append") + 1]


def test_argv_tap(tmp_path: Path) -> None:
    micro = argv(_plan(tmp_path, spec(), bridge="br0"))
    tap = tap_name("vm1")
    netdev = f"tap,id=net0,ifname={tap},script=no,downscript=no"
    assert ("-netdev", netdev) in _pairs(micro)
    assert ("-device", f"virtio-net-device,netdev=net0,mac={mac_for('vm1')}") in _pairs(micro)
    q35 = argv(_plan(tmp_path, spec(image="/b"), bridge="br0", has_disk=True))
    assert any(a.startswith("virtio-net-pci,") and a.endswith(",romfile=") for a in q35)
    on_node_bridge = _plan(tmp_path, spec(), bridge="br9")
    assert (on_node_bridge.bridge, on_node_bridge.tap) == ("br9", tap)
    no_bridge = _plan(tmp_path, spec())
    assert (no_bridge.bridge, no_bridge.tap, no_bridge.mac) == (None, None, None)
    assert "-netdev" not in argv(no_bridge)


def test_argv_mesh_nics(tmp_path: Path) -> None:
    s = spec(nics=(Nic("lan", "10.0.0.5"), Nic("san", "10.1.0.5")))
    validate(WID, s)  # NICs on mesh networks are accepted
    plan = _plan(tmp_path, s, bridge="br0")
    pairs = _pairs(argv(plan))
    for i in range(2):
        netdev = f"tap,id=nic{i},ifname={nic.tap_name(WID, i)},script=no,downscript=no"
        assert ("-netdev", netdev) in pairs
        dev = f"virtio-net-device,netdev=nic{i},mac={nic.mac_for(WID, i)}"
        assert ("-device", dev) in pairs
    # The node's bridge is not added beside them (the old single-tap path).
    assert (plan.tap, plan.bridge) == (None, None)
    assert "tap,id=net0" not in " ".join(argv(plan))
    q35 = argv(_plan(tmp_path, spec(image="/b", nics=(Nic("lan", "10.0.0.5"),)), has_disk=True))
    mac = nic.mac_for(WID, 0)
    assert ("-device", f"virtio-net-pci,netdev=nic0,mac={mac},romfile=") in _pairs(q35)


def test_the_bridge_is_the_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHD_QEMU_BRIDGE", "br7")
    assert QemuDriver(tmp_path, print).bridge == "br7"
    assert QemuDriver(tmp_path, print, bridge="br0").bridge == "br0"  # the argument wins
    monkeypatch.setenv("MESHD_QEMU_BRIDGE", "br 0; rm")
    with pytest.raises(DriverError, match="'br 0; rm' is not an interface name; fix MESHD_QEMU"):
        QemuDriver(tmp_path, print)


def test_commas_in_paths_are_escaped(tmp_path: Path) -> None:
    odd = tmp_path / "a,b"
    cmd = argv(_plan(odd, spec(image="/b"), has_disk=True))
    assert f"file={odd}/overlay.qcow2".replace("a,b", "a,,b") in " ".join(cmd)


def test_tap_name_and_mac() -> None:
    names = {tap_name(f"workload-{i}-with-a-long-id") for i in range(200)}
    assert len(names) == 200
    assert all(len(n) <= 15 for n in names)
    mac = mac_for("vm1")
    assert mac == mac_for("vm1") and mac.startswith("52:54:")
    assert int(mac.split(":")[0], 16) & 0b11 == 0b10  # locally administered, unicast


# -- host helpers that need no QEMU --------------------------------------------------


def test_proc_stat_and_run_record(tmp_path: Path) -> None:
    st = host.proc_stat(os.getpid())
    assert st is not None and st[0] in "RS"
    rec = host.RunRecord(os.getpid(), st[1], host.boot_id(), 0.0, "tcg", "microvm")
    assert host.alive(rec)
    assert not host.alive(dataclasses.replace(rec, start_ticks=st[1] + 1))  # a recycled pid
    assert not host.alive(dataclasses.replace(rec, boot_id="another-boot"))
    rec.save(tmp_path / "run.json")
    assert host.RunRecord.load(tmp_path / "run.json") == rec
    (tmp_path / "bad.json").write_text("{")
    assert host.RunRecord.load(tmp_path / "bad.json") is None


def test_console_reading(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"one\n\ntwo\n")
    data, off = host.read_from(log, 0)
    assert data == b"one\n\ntwo\n"
    with log.open("ab") as f:
        f.write(b"three\n[  1.0] reboot: Power down\n")
    data, off2 = host.read_from(log, off)
    assert data.startswith(b"three") and off2 > off
    assert host.tail(log, 2) == "three | [  1.0] reboot: Power down"
    rec = host.RunRecord(1, 0, "", 0.0, "tcg", "microvm")
    assert host.unwatched_exit(log, rec)[0].value == "stopped"
    log.write_bytes(b"Kernel panic - not syncing\n")
    assert host.unwatched_exit(log, rec)[0].value == "failed"
    assert host.read_from(tmp_path / "missing", 5) == (b"", 5)
