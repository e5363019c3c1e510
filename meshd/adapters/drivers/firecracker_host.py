"""What the firecracker driver needs from the host: the binary, KVM and the jailer.

Theory of operation
-------------------
*Availability.* Firecracker has no emulation fallback: without a hardware-backed KVM it
cannot run at all. ``/dev/kvm`` must open read-write, and ``/sys/module/kvm_pvm`` must
be absent: kvm_pvm is a software nested hypervisor on which stock kernels do not boot
(LAB-NOTES, "QEMU here"). We do not also require ``kvm_intel``/``kvm_amd`` to be
loaded, because arm64 hosts and kernels with KVM built in have neither.
The binary is ``FirecrackerOptions.binary``, else ``$MESHD_FIRECRACKER``, else
``firecracker`` on ``PATH``; it is looked up on every create/start, so installing it
later needs no restart.

*Jailer.* Optionally Firecracker runs under ``jailer`` (chroot, uid/gid drop, cgroups),
which execs into Firecracker in the same process, so pid and start time still identify
it. We never pass ``--daemonize`` (it sends the serial console to /dev/null and fails
for a session leader; we detach with ``setsid`` ourselves) nor ``--new-pid-ns`` (the VM
would get another pid than the one we started). Everything Firecracker opens must be
inside the chroot: the workload's rootfs and log are hard-linked (same inode, so the VM
writes the workload's own files), the kernel and initrd are linked when world-readable
and copied otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from meshd.adapters.drivers.firecracker_api import NetworkInterface
from meshd.core.spec import WorkloadSpec
from meshd.errors import ConfigError, DriverError

FIRECRACKER_ENV = "MESHD_FIRECRACKER"
# Firecracker's and the jailer's rule for an instance id.
ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
ID_MAX = 64
JAIL_API_SOCK = "/fc.sock"
JAIL_CONFIG = "/vm-config.json"


@dataclass(frozen=True)
class Availability:
    """Whether this node can run Firecracker, and if not, what is missing."""

    binary: Path | None
    binary_problem: str | None  # e.g. "no firecracker binary on PATH"
    kvm_problem: str | None  # e.g. "/dev/kvm is kvm_pvm"

    @property
    def ok(self) -> bool:
        return self.binary is not None and self.kvm_problem is None

    def short(self) -> str:
        """One clause per problem, for logs and test skips."""
        parts = [self.binary_problem] if self.binary_problem else []
        if self.kvm_problem:
            parts.append(f"no usable KVM: {self.kvm_problem}")
        return " and ".join(parts)

    def sentence(self) -> str:
        """The one sentence a refused create/start reports."""
        if self.binary is None:
            text = (
                "firecracker is not installed on this node; "
                f"put the binary on PATH or set {FIRECRACKER_ENV}"
            )
            if self.binary_problem and not self.binary_problem.endswith("on PATH"):
                text += f" ({self.binary_problem})"
            if self.kvm_problem:
                text += f" (this node also has no usable KVM: {self.kvm_problem})"
            return text
        return f"firecracker cannot run on this node: it has no usable KVM ({self.kvm_problem})"


@dataclass(frozen=True)
class FirecrackerOptions:
    """The driver's knobs; the node builds them from its Config."""

    # The firecracker binary; None: $MESHD_FIRECRACKER, else `firecracker` on PATH.
    binary: Path | None = None
    # "config-file": --config-file boots at once; "api": configure over the API, then start.
    boot: Literal["config-file", "api"] = "config-file"
    # Run Firecracker under the jailer (root only); None runs it directly.
    jailer: JailerOptions | None = None
    # The KVM device and the module directory (for kvm_pvm) checked before create/start.
    kvm_device: Path = Path("/dev/kvm")
    sys_modules: Path = Path("/sys/module")
    # Accept kvm_pvm's /dev/kvm anyway (stock guests do not boot under it).
    allow_kvm_pvm: bool = False
    # Time limit of one API request, in seconds.
    api_timeout_s: float = 5.0
    # Seconds between checks while waiting (API up, ready marker, process gone).
    boot_poll_s: float = 0.05
    # Seconds between checks that a running VM's process still lives.
    poll_interval_s: float = 0.5
    # Seconds after SIGTERM before SIGKILL, and after SIGKILL before giving up.
    term_grace_s: float = 3.0
    # Graceful time destroy() gives a running VM before signals, in seconds.
    destroy_timeout_s: float = 0.0
    # Seconds a guest has to print its ready marker when its spec names no limit.
    boot_timeout_s: float = 60.0
    # The tap-backed NICs of a workload, given its id and spec (creating the taps is the
    # network's job).
    nics: Callable[[str, WorkloadSpec], Sequence[NetworkInterface]] | None = None

    def __post_init__(self) -> None:
        if self.boot not in ("config-file", "api"):
            raise ConfigError(f"firecracker boot must be 'config-file' or 'api', not {self.boot!r}")
        timings = (self.api_timeout_s, self.boot_poll_s, self.poll_interval_s, self.term_grace_s)
        if min(*timings, self.boot_timeout_s) <= 0 or self.destroy_timeout_s < 0:
            raise ConfigError("firecracker driver timings must be positive")


def find_binary(explicit: Path | None) -> tuple[Path | None, str | None]:
    """The firecracker binary to run, or None and why not."""
    if explicit is not None:
        if os.access(explicit, os.X_OK) and explicit.is_file():
            return explicit, None
        return None, f"{explicit} is not an executable file"
    env = os.environ.get(FIRECRACKER_ENV)
    if env:
        path = Path(env)
        if os.access(path, os.X_OK) and path.is_file():
            return path, None
        return None, f"{FIRECRACKER_ENV}={env} is not an executable file"
    found = shutil.which("firecracker")
    if found:
        return Path(found), None
    return None, "no firecracker binary on PATH"


def kvm_problem(device: Path, modules: Path, allow_pvm: bool) -> str | None:
    """None when KVM is usable for Firecracker, else a short phrase saying why not."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{device} does not exist"
    except OSError as exc:
        return f"{device} cannot be opened read-write ({exc.strerror})"
    os.close(fd)
    if not allow_pvm and (modules / "kvm_pvm").exists():
        return f"{device} is kvm_pvm"
    return None


def check_availability(
    binary: Path | None, kvm_device: Path, modules: Path, allow_pvm: bool
) -> Availability:
    path, problem = find_binary(binary)
    return Availability(path, problem, kvm_problem(kvm_device, modules, allow_pvm))


def valid_instance_id(wid: str) -> bool:
    return 0 < len(wid) <= ID_MAX and set(wid) <= ID_CHARS and not wid.startswith("-")


# --- jailer ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JailerOptions:
    """How to run Firecracker under ``jailer`` (root only: it chroots and drops to uid)."""

    # The uid and gid Firecracker runs as inside the jail; one pair per VM is best.
    uid: int
    gid: int
    # The jailer binary; None looks up ``jailer`` on PATH.
    binary: Path | None = None
    # Where jails are built: <chroot_base>/<firecracker binary name>/<id>/root.
    chroot_base: Path = Path("/srv/jailer")
    # cgroup hierarchy the jailer writes --cgroup values into (1 or 2).
    cgroup_version: int = 2
    # Parent cgroup (relative path) for the VM's cgroup; None: the binary's name.
    parent_cgroup: str | None = None
    # Cap the VM's CPU time at the spec's cpus with cgroup v2 ``cpu.max``.
    limit_cpu: bool = True
    # cpu.max period in microseconds (the kernel's default period).
    cpu_period_us: int = 100_000
    # A network namespace handle to join (e.g. /var/run/netns/mesh0), or None.
    netns: Path | None = None
    # setrlimit bounds, as the jailer's --resource-limit (e.g. "no-file=1024").
    resource_limits: tuple[str, ...] = ()


def find_jailer(opts: JailerOptions) -> Path:
    found = opts.binary if opts.binary is not None else shutil.which("jailer")
    if found is None or not os.access(found, os.X_OK):
        raise DriverError(
            "the firecracker driver is configured to use the jailer, but no jailer binary "
            "is installed; put it on PATH or configure its path"
        )
    return Path(found)


def jail_dir(opts: JailerOptions, firecracker: Path, wid: str) -> Path:
    return opts.chroot_base / firecracker.name / wid


def jailer_argv(
    jailer: Path,
    firecracker: Path,
    wid: str,
    opts: JailerOptions,
    cpus: float,
    *,
    config_file: bool = True,
) -> list[str]:
    """The jailer command line; Firecracker's own flags follow ``--`` (chroot paths)."""
    argv = [str(jailer), "--id", wid, "--exec-file", str(firecracker)]
    argv += ["--uid", str(opts.uid), "--gid", str(opts.gid)]
    argv += ["--chroot-base-dir", str(opts.chroot_base)]
    argv += ["--cgroup-version", str(opts.cgroup_version)]
    if opts.parent_cgroup:
        argv += ["--parent-cgroup", opts.parent_cgroup]
    if opts.limit_cpu and opts.cgroup_version == 2:
        quota = max(1000, round(cpus * opts.cpu_period_us))
        argv += ["--cgroup", f"cpu.max={quota} {opts.cpu_period_us}"]
    if opts.netns is not None:
        argv += ["--netns", str(opts.netns)]
    for limit in opts.resource_limits:
        argv += ["--resource-limit", limit]
    # The jailer passes --id to Firecracker itself.
    argv += ["--", "--api-sock", JAIL_API_SOCK]
    return [*argv, "--config-file", JAIL_CONFIG] if config_file else argv


def firecracker_argv(binary: Path, wid: str, sock: Path, config: Path | None) -> list[str]:
    """Firecracker run directly; with ``config`` it boots from that file at once."""
    argv = [str(binary), "--id", wid, "--api-sock", str(sock)]
    return [*argv, "--config-file", str(config)] if config is not None else argv


def _into_jail(src: Path, root: Path, uid: int, gid: int, owned: bool) -> str:
    """Put ``src`` in the jail's root; return its path as the jailed process sees it."""
    dst = root / src.name
    dst.unlink(missing_ok=True)
    world_readable = src.stat().st_mode & 0o004
    if owned or world_readable:
        try:
            os.link(src, dst)
        except OSError as exc:
            if owned:  # a copy would fork the VM's disk from the workload's
                raise DriverError(
                    f"cannot hard-link {src} into the jail {root} ({exc.strerror}); "
                    "put the jailer's chroot base on the workload directory's filesystem"
                ) from exc
            shutil.copyfile(src, dst)
    else:
        shutil.copyfile(src, dst)
    if owned or not world_readable:
        os.chown(dst, uid, gid)
    return "/" + src.name


def prepare_jail(root: Path, config: dict[str, Any], opts: JailerOptions) -> dict[str, Any]:
    """Fill the chroot with what ``config`` names and write its chroot-relative copy."""
    root.mkdir(parents=True, exist_ok=True)
    jailed: dict[str, Any] = json.loads(json.dumps(config))
    boot = jailed["boot-source"]
    boot["kernel_image_path"] = _into_jail(
        Path(boot["kernel_image_path"]), root, opts.uid, opts.gid, owned=False
    )
    if "initrd_path" in boot:
        boot["initrd_path"] = _into_jail(
            Path(boot["initrd_path"]), root, opts.uid, opts.gid, owned=False
        )
    for drive in jailed.get("drives", []):
        drive["path_on_host"] = _into_jail(
            Path(drive["path_on_host"]), root, opts.uid, opts.gid, owned=True
        )
    if "logger" in jailed:
        log = jailed["logger"]
        log["log_path"] = _into_jail(Path(log["log_path"]), root, opts.uid, opts.gid, owned=True)
    (root / JAIL_CONFIG.lstrip("/")).write_text(json.dumps(jailed, indent=2))
    return jailed
