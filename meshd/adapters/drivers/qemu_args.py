"""The pure half of the QEMU driver: checks, accelerator choice and the command line.

Theory of operation
-------------------
Nothing here starts a process or touches the network; functions read at most a few
small files under ``/sys``, ``/proc`` or a kernel image's header, through paths they
are given, so unit tests run them against a fake tree.

*Accelerator.* KVM only where it really works: ``/dev/kvm`` opens read-write, a
hardware module (``kvm_intel`` or ``kvm_amd``) is loaded, and ``kvm_pvm`` is absent.
``kvm_pvm`` is a software nested hypervisor on which stock Debian kernels do not boot
(LAB-NOTES, "QEMU here"), so a host with it runs TCG.

*Machine.* ``microvm`` (no PCI, no firmware option ROMs, ISA serial, ACPI on for the
power button) when the workload is a kernel without a disk image: it boots fastest.
``q35`` when there is a disk image (virtio-blk on PCI, SeaBIOS or ``-kernel``).
microvm kernels get ``tsc_early_khz`` (the host's TSC rate): without it the guest
calibrates against a timer that TCG emulates slowly and hung in 6 % of boots.

*Limits.* A NoCloud seed is a handful of small files; anything near the limits below is
a mistake (a whole image pasted as user-data), refused at ``create``.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from meshd.core import nic
from meshd.core.spec import WorkloadSpec
from meshd.errors import DriverError

MIB = 1024 * 1024
USER_DATA_MAX = 64 * 1024  # bytes; cloud-init user-data
META_DATA_MAX = 16 * 1024  # bytes
NETWORK_CONFIG_MAX = 16 * 1024  # bytes
MEMORY_MIN = 16 * MIB  # below this no Linux guest boots
MICROVM_OPTS = "microvm,x-option-roms=off,isa-serial=on,acpi=on"
BASE_KERNEL_ARGS = ("console=ttyS0", "quiet", "cryptomgr.notests")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class QemuTuning:
    """Timings of the QEMU driver; every one bounds a wait on something outside us."""

    tool_timeout_s: float = 30.0  # qemu-img, genisoimage, ip: ms normally; a hung NFS is not
    launch_timeout_s: float = 15.0  # `qemu -daemonize` parent must exit within this
    qmp_connect_timeout_s: float = 2.0  # QMP greeting; a socket held by another client hangs
    qmp_command_timeout_s: float = 2.0  # one QMP command (query-status, quit)
    console_poll_s: float = 0.02  # how often the console is read for the ready marker
    exit_poll_s: float = 0.02  # how often /proc/<pid>/stat is read while waiting for exit
    quit_timeout_s: float = 2.0  # after `quit`, SIGKILL if QEMU is still there
    kill_timeout_s: float = 5.0  # after SIGKILL, give up (the process is a zombie or D)
    destroy_grace_s: float = 0.0  # destroy's ACPI grace; 0 = `quit` at once (data is gone)
    boot_timeout_s: float = 60.0  # ready marker deadline of a spec that names none


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg"
    reason: str  # one sentence: why this one


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the command line depends on, decided before QEMU runs."""

    binary: str
    name: str
    accel: str
    machine: str  # "microvm" or "q35"
    memory_mib: int
    smp: int
    console: Path
    qmp: Path
    pidfile: Path
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    disk: Path | None = None  # the qcow2 overlay
    seed: Path | None = None  # the NoCloud seed (raw: ISO or vfat)
    tap: str | None = None
    bridge: str | None = None
    mac: str | None = None
    # NICs on mesh networks: (tap, MAC) each, taps made by the runner before start.
    nics: tuple[tuple[str, str], ...] = ()


def choose_accel(sys_root: Path = Path("/sys"), dev_kvm: Path = Path("/dev/kvm")) -> Accel:
    """KVM where it works (see the module docstring), else TCG, with the reason."""
    modules = sys_root / "module"
    if (modules / "kvm_pvm").exists():
        return Accel("tcg", "tcg: /dev/kvm is kvm_pvm, on which stock kernels do not boot")
    hw = next((m for m in ("kvm_intel", "kvm_amd") if (modules / m).exists()), None)
    if hw is None:
        return Accel("tcg", "tcg: neither kvm_intel nor kvm_amd is loaded")
    try:
        fd = os.open(dev_kvm, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return Accel("tcg", f"tcg: {dev_kvm} is not usable ({exc.strerror})")
    os.close(fd)
    return Accel("kvm", f"kvm ({hw})")


def tsc_khz(cpuinfo: str | None, cpufreq_khz: str | None = None) -> int | None:
    """The host's TSC rate in kHz from /proc/cpuinfo ("cpu MHz"), else cpufreq."""
    if cpuinfo:
        m = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.MULTILINE)
        if m and float(m.group(1)) > 0:
            return round(float(m.group(1)) * 1000)
    if cpufreq_khz and cpufreq_khz.strip().isdigit() and int(cpufreq_khz) > 0:
        return int(cpufreq_khz)
    return None


def read_tsc_khz(proc: Path = Path("/proc"), sys_root: Path = Path("/sys")) -> int | None:
    def read(p: Path) -> str | None:
        try:
            return p.read_text()
        except OSError:
            return None

    freq = sys_root / "devices/system/cpu/cpu0/cpufreq"
    base = read(freq / "base_frequency") or read(freq / "cpuinfo_max_freq")
    return tsc_khz(read(proc / "cpuinfo"), base)


def kernel_kind(head: bytes) -> str | None:
    """ "elf" (vmlinux, PVH), "bzimage", or None when QEMU could not boot it."""
    if head[:4] == b"\x7fELF":
        return "elf"
    if len(head) >= 0x206 and head[0x202:0x206] == b"HdrS":
        return "bzimage"
    return None


def _size(text: str | None) -> int:
    return len(text.encode()) if text else 0


def validate(wid: str, spec: WorkloadSpec) -> None:
    """Refuse what can be refused without touching the host; one sentence each."""
    w = f"workload {wid!r}"
    if spec.driver != "qemu":
        raise DriverError(f"{w} is for the {spec.driver!r} driver, not qemu")
    if not _ID_RE.match(wid):
        raise DriverError(f"{w}: an id is 1-128 letters, digits, '.', '_' or '-'")
    if spec.command is not None:
        raise DriverError(f"{w}: qemu runs a kernel or a disk image, not a command")
    if spec.env:
        raise DriverError(
            f"{w}: qemu does not use env {', '.join(sorted(spec.env))}; a guest's settings "
            "go in user_data, and its tap goes on the node's bridge (MESHD_QEMU_BRIDGE)"
        )
    if not spec.kernel and not spec.image:
        raise DriverError(f"{w}: qemu needs a kernel or a disk image")
    if (spec.initrd or spec.cmdline) and not spec.kernel:
        raise DriverError(f"{w}: an initrd or a kernel command line needs a kernel")
    if not math.isfinite(spec.cpus) or spec.cpus <= 0:
        raise DriverError(f"{w}: cpus must be positive, got {spec.cpus}")
    if spec.memory < MEMORY_MIN:
        raise DriverError(f"{w}: memory must be at least 16 MiB, got {spec.memory} bytes")
    if spec.disk < 0:
        raise DriverError(f"{w}: disk must not be negative")
    if spec.disk and not spec.image:
        raise DriverError(f"{w}: a disk size is the overlay's size and needs an image")
    boot = spec.boot_timeout_s
    if boot is not None and (not math.isfinite(boot) or boot <= 0):
        raise DriverError(f"{w}: boot_timeout_s must be positive")
    if spec.ready_marker is not None and (not spec.ready_marker or "\n" in spec.ready_marker):
        raise DriverError(f"{w}: ready_marker must be one non-empty line")
    for field, text, limit in (
        ("user-data", spec.user_data, USER_DATA_MAX),
        ("meta-data", spec.meta_data, META_DATA_MAX),
        ("network-config", spec.network_config, NETWORK_CONFIG_MAX),
    ):
        if _size(text) > limit:
            raise DriverError(
                f"{w}: {field} is {_size(text)} bytes, over the {limit // 1024} KiB limit"
            )


def wants_seed(spec: WorkloadSpec) -> bool:
    return any(x is not None for x in (spec.user_data, spec.meta_data, spec.network_config))


def machine_for(spec: WorkloadSpec) -> str:
    return "microvm" if spec.kernel and not spec.image else "q35"


def kernel_args(machine: str, khz: int | None, extra: str | None) -> str:
    """Our console and speed arguments first, the workload's after (later ones win)."""
    args = list(BASE_KERNEL_ARGS)
    if machine == "microvm" and khz:
        args.append(f"tsc_early_khz={khz}")
    if extra:
        args.append(extra.strip())
    return " ".join(args)


def tap_name(wid: str) -> str:
    """A stable interface name within IFNAMSIZ (15) for the workload's tap."""
    return "mq" + hashlib.sha256(wid.encode()).hexdigest()[:12]


def mac_for(wid: str) -> str:
    """A stable locally administered unicast MAC for the workload's NIC."""
    h = hashlib.sha256(b"mac:" + wid.encode()).digest()
    return "52:54:" + ":".join(f"{b:02x}" for b in h[:4])


def _esc(path: Path | str) -> str:
    """A path inside a QEMU option string: commas are doubled."""
    return str(path).replace(",", ",,")


def argv(plan: LaunchPlan) -> list[str]:
    """The QEMU command line; daemonized, QMP on a unix socket, console to a file."""
    microvm = plan.machine == "microvm"
    bus = "device" if microvm else "pci"  # virtio-mmio on microvm, PCI on q35
    cmd = [
        plan.binary,
        "-name",
        plan.name,
        "-machine",
        MICROVM_OPTS if microvm else "q35",
        "-accel",
        plan.accel,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-m",
        str(plan.memory_mib),
        "-smp",
        str(plan.smp),
    ]
    if plan.accel == "kvm":
        cmd += ["-cpu", "host"]
    if plan.kernel:
        cmd += ["-kernel", plan.kernel]
        if plan.initrd:
            cmd += ["-initrd", plan.initrd]
        if plan.append:
            cmd += ["-append", plan.append]
    if plan.disk:
        cmd += ["-drive", f"id=disk0,if=none,format=qcow2,file={_esc(plan.disk)}"]
        boot = "" if microvm or plan.kernel else ",bootindex=1"  # -kernel owns index 0
        cmd += ["-device", f"virtio-blk-{bus},drive=disk0{boot}"]
    if plan.seed:
        cmd += ["-drive", f"id=seed0,if=none,format=raw,readonly=on,file={_esc(plan.seed)}"]
        cmd += ["-device", f"virtio-blk-{bus},drive=seed0"]
    if plan.tap:
        cmd += ["-netdev", f"tap,id=net0,ifname={plan.tap},script=no,downscript=no"]
        nic = f"virtio-net-{bus},netdev=net0,mac={plan.mac or '52:54:00:00:00:01'}"
        cmd += ["-device", nic if microvm else nic + ",romfile="]
    for i, (tap, mac) in enumerate(plan.nics):
        cmd += ["-netdev", f"tap,id=nic{i},ifname={tap},script=no,downscript=no"]
        nic = f"virtio-net-{bus},netdev=nic{i},mac={mac}"
        cmd += ["-device", nic if microvm else nic + ",romfile="]
    if not microvm:
        cmd += ["-device", "pvpanic"]  # GUEST_PANICKED for guests that load the driver
    cmd += [
        "-chardev",
        f"file,id=con0,path={_esc(plan.console)}",
        "-serial",
        "chardev:con0",
        "-qmp",
        f"unix:{_esc(plan.qmp)},server=on,wait=off",
        "-pidfile",
        str(plan.pidfile),
        "-daemonize",
    ]
    return cmd


def plan_for(
    wid: str,
    spec: WorkloadSpec,
    wdir: Path,
    binary: str,
    accel: str,
    khz: int | None,
    bridge: str | None,
    has_disk: bool,
    has_seed: bool,
) -> LaunchPlan:
    machine = machine_for(spec)
    return LaunchPlan(
        binary=binary,
        name=f"meshd-{wid}"[:64],
        accel=accel,
        machine=machine,
        memory_mib=max(1, math.ceil(spec.memory / MIB)),
        smp=max(1, math.ceil(spec.cpus)),
        console=wdir / "console.log",
        qmp=wdir / "qmp.sock",
        pidfile=wdir / "qemu.pid",
        kernel=spec.kernel,
        initrd=spec.initrd,
        append=kernel_args(machine, khz, spec.cmdline) if spec.kernel else None,
        disk=wdir / "overlay.qcow2" if has_disk else None,
        seed=wdir / "seed.img" if has_seed else None,
        # A workload with NICs on mesh networks gets those, not the node's bridge.
        tap=tap_name(wid) if bridge and not spec.nics else None,
        bridge=bridge if not spec.nics else None,
        mac=mac_for(wid) if bridge and not spec.nics else None,
        nics=tuple((nic.tap_name(wid, i), nic.mac_for(wid, i)) for i in range(len(spec.nics))),
    )
