"""Firecracker's HTTP API: the VM description meshd sends, and a client for its socket.

Theory of operation
-------------------
The shapes follow ``specs/firecracker-api.yaml`` (Firecracker's Swagger 2.0 document).
A VM is described once, by :func:`vm_config`, as a ``FullVmConfiguration`` — the JSON
that ``firecracker --config-file`` reads. Booting through the API replays that same
dict endpoint by endpoint (:meth:`FirecrackerApi.configure`: logger, boot source,
machine config, drives, network interfaces) and then sends ``InstanceStart``, so the
two boot paths cannot describe different VMs. Firecracker rejects unknown fields (its
config structs deny them), so nothing is sent that the spec does not define; the unit
tests validate every request and the config file against the spec.

The API speaks HTTP/1.1 on a unix socket (``aiohttp.UnixConnector``). Firecracker's
server answers 204 (or 200 with JSON) on success and 400 with ``{"fault_message"}``
on refusal; every refusal or transport error becomes a :class:`FirecrackerApiError`
naming the request.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from meshd.core.nic import mac_for, tap_name
from meshd.core.spec import WorkloadSpec
from meshd.errors import DriverError, FirecrackerApiError

MIB = 1 << 20
MIN_MEMORY_MIB = 128  # Firecracker's default; smaller guests are not worth a VM
MAX_VCPUS = 32  # MachineConfiguration.vcpu_count maximum in the spec
DEFAULT_BOOT_ARGS = ("console=ttyS0", "reboot=k", "panic=1", "pci=off")
ROOT_DRIVE = "rootfs"
QCOW2_MAGIC = b"QFI\xfb"
# Fields of WorkloadSpec that belong to other drivers and must not be silently ignored.
CLOUD_INIT_FIELDS = ("user_data", "meta_data", "network_config")


@dataclass(frozen=True)
class NetworkInterface:
    """A guest NIC backed by a host tap device (creating the tap is the network's job)."""

    iface_id: str
    host_dev_name: str
    guest_mac: str | None = None


def mesh_nics(wid: str, spec: WorkloadSpec) -> list[NetworkInterface]:
    """The spec's NICs on mesh networks: ``ethN`` on the tap the runner made, with the
    stable MAC (so DHCP and the metadata server know the guest)."""
    return [
        NetworkInterface(f"eth{i}", tap_name(wid, i), mac_for(wid, i))
        for i in range(len(spec.nics))
    ]


def boot_args(cmdline: str | None) -> str:
    """The spec's kernel arguments after our defaults, unless it sets the same keys."""
    user = (cmdline or "").split()
    keys = {tok.split("=", 1)[0] for tok in user}
    return " ".join([*(d for d in DEFAULT_BOOT_ARGS if d.split("=", 1)[0] not in keys), *user])


def vcpus_for(cpus: float) -> int:
    """Whole vCPUs for a (possibly fractional) CPU share; the jailer can cap the rest."""
    return math.ceil(cpus) if cpus > 0 else 0


def check_spec(wid: str, spec: WorkloadSpec) -> None:
    """Raise a DriverError with one sentence if Firecracker could not run ``spec``."""
    if spec.driver != "firecracker":
        raise DriverError(f"workload {wid} is for the {spec.driver} driver, not firecracker")
    if not spec.kernel:
        raise DriverError(
            "a firecracker workload needs a kernel (an uncompressed vmlinux on x86_64)"
        )
    for label, value in (("kernel", spec.kernel), ("initrd", spec.initrd)):
        if value and not os.path.isfile(value):
            raise DriverError(f"the {label} {value} does not exist or is not a file")
    if spec.image:
        if not os.path.isfile(spec.image):
            raise DriverError(f"the rootfs image {spec.image} does not exist or is not a file")
        with open(spec.image, "rb") as f:
            if f.read(4) == QCOW2_MAGIC:
                raise DriverError(
                    f"the rootfs image {spec.image} is qcow2; firecracker needs a raw image "
                    "(qemu-img convert -O raw)"
                )
    mib = spec.memory // MIB
    if mib < MIN_MEMORY_MIB:
        raise DriverError(
            f"a firecracker guest needs at least {MIN_MEMORY_MIB} MiB of memory, "
            f"not {spec.memory} bytes"
        )
    vcpus = vcpus_for(spec.cpus)
    if not 1 <= vcpus <= MAX_VCPUS:
        raise DriverError(f"firecracker runs 1 to {MAX_VCPUS} vCPUs; cpus={spec.cpus} asks {vcpus}")
    given = [name for name in CLOUD_INIT_FIELDS if getattr(spec, name)]
    if given:
        raise DriverError(
            f"the firecracker driver has no cloud-init seed ({', '.join(given)} given); "
            "bake the configuration into the rootfs or use the qemu driver"
        )


def vm_config(
    spec: WorkloadSpec,
    *,
    rootfs: Path | None,
    log_path: Path | None,
    nics: Sequence[NetworkInterface] = (),
) -> dict[str, Any]:
    """The ``FullVmConfiguration`` of a checked spec, with absolute host paths."""
    boot: dict[str, Any] = {
        "kernel_image_path": str(Path(spec.kernel or "").resolve()),
        "boot_args": boot_args(spec.cmdline),
    }
    if spec.initrd:
        boot["initrd_path"] = str(Path(spec.initrd).resolve())
    config: dict[str, Any] = {
        "boot-source": boot,
        "machine-config": {
            "vcpu_count": vcpus_for(spec.cpus),
            "mem_size_mib": spec.memory // MIB,
            "smt": False,
        },
        "drives": [],
    }
    if rootfs is not None:
        config["drives"].append(
            {
                "drive_id": ROOT_DRIVE,
                "path_on_host": str(rootfs),
                "is_root_device": True,
                "is_read_only": False,
            }
        )
    if nics:
        config["network-interfaces"] = [
            {"iface_id": n.iface_id, "host_dev_name": n.host_dev_name}
            | ({"guest_mac": n.guest_mac} if n.guest_mac else {})
            for n in nics
        ]
    if log_path is not None:
        config["logger"] = {"log_path": str(log_path), "level": "Info", "show_level": True}
    return config


class FirecrackerApi:
    """One Firecracker process's API; use as ``async with FirecrackerApi(sock, t) as api``."""

    def __init__(self, sock: Path, timeout_s: float) -> None:
        self.sock = sock
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> FirecrackerApi:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.sock)),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers={"Accept": "application/json"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """Send one request; the JSON answer (None for 204), or a FirecrackerApiError."""
        if self._session is None:
            raise RuntimeError("FirecrackerApi used outside 'async with'")
        what = f"{method} {path}"
        try:
            async with self._session.request(method, f"http://localhost{path}", json=body) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise FirecrackerApiError(
                f"firecracker's API socket {self.sock} did not answer {what}: "
                f"{exc or type(exc).__name__}"
            ) from exc
        if status >= 300:
            raise FirecrackerApiError(
                f"firecracker refused {what} ({status}): {_fault(text)}", status
            )
        if status == 204 or not text:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise FirecrackerApiError(f"firecracker answered {what} with non-JSON") from exc

    async def describe(self) -> dict[str, Any]:
        """``GET /``: InstanceInfo (app_name, id, state, vmm_version)."""
        info = await self.request("GET", "/")
        if not isinstance(info, dict):
            raise FirecrackerApiError("firecracker answered GET / without an InstanceInfo")
        return info

    async def action(self, action_type: str) -> None:
        """``PUT /actions``: InstanceStart, SendCtrlAltDel or FlushMetrics."""
        await self.request("PUT", "/actions", {"action_type": action_type})

    async def set_vm_state(self, state: str) -> None:
        """``PATCH /vm``: Paused or Resumed."""
        await self.request("PATCH", "/vm", {"state": state})

    async def configure(self, config: Mapping[str, Any]) -> None:
        """Apply a FullVmConfiguration through the pre-boot endpoints, logger first."""
        if "logger" in config:
            await self.request("PUT", "/logger", config["logger"])
        await self.request("PUT", "/boot-source", config["boot-source"])
        await self.request("PUT", "/machine-config", config["machine-config"])
        for drive in config.get("drives", []):
            await self.request("PUT", f"/drives/{drive['drive_id']}", drive)
        for nic in config.get("network-interfaces", []):
            await self.request("PUT", f"/network-interfaces/{nic['iface_id']}", nic)


def _fault(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip() or "no fault message"
    if isinstance(body, dict) and isinstance(body.get("fault_message"), str):
        return str(body["fault_message"])
    return text.strip()
