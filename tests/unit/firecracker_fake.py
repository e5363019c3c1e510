"""A fake Firecracker: its API on a unix socket, checked against the spec, and a binary.

:class:`FakeFirecracker` serves the endpoints the driver uses (``GET /``,
``PUT /logger``, ``/boot-source``, ``/machine-config``, ``/drives/{id}``,
``/network-interfaces/{id}``, ``/actions``, ``PATCH /vm``) with aiohttp on a unix socket.
Every request is first validated against ``firecracker-api.yaml`` (:mod:`firecracker_spec`)
and recorded; an invalid one is answered 400 with a ``fault_message``, as Firecracker
does. It then behaves like Firecracker's state machine: pre-boot endpoints are refused
after ``InstanceStart``, path and body ids must agree, the kernel and drives must exist,
``SendCtrlAltDel`` and ``PATCH /vm`` need a running VM.

Run as a program it stands in for the ``firecracker`` binary (same flags the driver
uses: ``--id``, ``--api-sock``, ``--config-file``). The guest is the kernel file itself:
on start its bytes are written to stdout as the serial console. Environment knobs:

* ``MESHD_FAKE_FC_RECORD``: append one JSON line per request (and per config file);
* ``MESHD_FAKE_FC_CTRL_ALT_DEL``: ``reboot`` (default: the guest reboots, exit 0) or
  ``ignore``;
* ``MESHD_FAKE_FC_IGNORE_TERM=1``: ignore SIGTERM (only SIGKILL ends it);
* ``MESHD_FAKE_FC_EXIT=SECONDS:CODE``: the VM exits by itself that long after boot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from meshd.adapters.drivers.firecracker import FirecrackerOptions
from meshd.adapters.drivers.firecracker_api import MIB
from meshd.core.spec import WorkloadSpec

try:
    from tests.unit.firecracker_spec import Swagger
except ImportError:  # run as a program, or tests/unit put on sys.path by pytest
    from firecracker_spec import Swagger  # type: ignore[no-redef]

AFTER_START = "The requested operation is not supported after starting the microVM."
BEFORE_START = "The requested operation is not supported before starting the microVM."
PRE_BOOT = {
    "/logger",
    "/boot-source",
    "/machine-config",
    "/drives/{drive_id}",
    "/network-interfaces/{iface_id}",
}
ID_FIELD = {
    "/drives/{drive_id}": ("drive_id", "drive_id"),
    "/network-interfaces/{iface_id}": ("iface_id", "iface_id"),
}


class FakeFirecracker:
    """Firecracker's API as far as the driver uses it; see the module doc."""

    def __init__(
        self,
        swagger: Swagger,
        sock: Path,
        instance_id: str = "anonymous-instance",
        record: Path | None = None,
        on_start: Callable[[dict[str, Any]], None] | None = None,
        on_ctrl_alt_del: Callable[[], None] | None = None,
    ) -> None:
        self.swagger = swagger
        self.sock = sock
        self.instance_id = instance_id
        self.record_path = record
        self.on_start = on_start
        self.on_ctrl_alt_del = on_ctrl_alt_del
        self.state = "Not started"
        self.config: dict[str, Any] = {"drives": [], "network-interfaces": []}
        self.requests: list[dict[str, Any]] = []
        self.invalid: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.sock)).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def note(self, entry: dict[str, Any]) -> None:
        self.requests.append(entry)
        if entry.get("errors"):
            self.invalid.append(entry)
        if self.record_path is not None:
            with self.record_path.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")

    async def _handle(self, request: web.Request) -> web.Response:
        body: Any = None
        raw = await request.read()
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return _fault(f"body is not JSON: {raw[:80]!r}")
        errors = self.swagger.request_errors(request.method, request.path, body)
        if raw and request.content_type != "application/json":
            errors.append(f"Content-Type {request.content_type!r} is not application/json")
        entry = {"method": request.method, "path": request.path, "body": body, "errors": errors}
        self.note(entry)
        if errors:
            return _fault("; ".join(errors))
        template, params = self.swagger.match(request.path) or ("", {})
        return self.apply(request.method, template, params, body)

    def apply(self, method: str, template: str, params: dict[str, str], body: Any) -> web.Response:
        """Firecracker's behaviour for a request that passed the spec."""
        if method == "GET" and template == "/":
            info = {
                "app_name": "Firecracker",
                "id": self.instance_id,
                "state": self.state,
                "vmm_version": "1.17.0-dev",
            }
            return web.json_response(info)
        if template in PRE_BOOT:
            if self.state != "Not started":
                return _fault(
                    "The requested operation is not supported after starting the microVM."
                )
            if template in ID_FIELD:
                param, field = ID_FIELD[template]
                if params[param] != body[field]:
                    return _fault("The id from the path does not match the id from the body!")
            problem = self.configure(template, body)
            return _fault(problem) if problem else web.Response(status=204)
        if template == "/actions":
            return self.action(body["action_type"])
        if template == "/vm" and method == "PATCH":
            if self.state == "Not started":
                return _fault(
                    "The requested operation is not supported before starting the microVM."
                )
            self.state = "Paused" if body["state"] == "Paused" else "Running"
            return web.Response(status=204)
        return _fault(f"the fake does not implement {method} {template}")

    def configure(self, template: str, body: dict[str, Any]) -> str | None:
        if template == "/boot-source":
            for key in ("kernel_image_path", "initrd_path"):
                if key in body and not Path(body[key]).is_file():
                    return f"Cannot open the {key.split('_')[0]} file: No such file or directory"
            self.config["boot-source"] = body
        elif template == "/machine-config":
            self.config["machine-config"] = body
        elif template == "/logger":
            if not Path(body["log_path"]).exists():
                return "Failed to open target file: No such file or directory (os error 2)"
            self.config["logger"] = body
        elif template == "/drives/{drive_id}":
            if "path_on_host" in body and not Path(body["path_on_host"]).is_file():
                return "Unable to create the block device: No such file or directory"
            self.config["drives"] = [
                d for d in self.config["drives"] if d["drive_id"] != body["drive_id"]
            ] + [body]
        else:
            nics = [
                n for n in self.config["network-interfaces"] if n["iface_id"] != body["iface_id"]
            ]
            self.config["network-interfaces"] = [*nics, body]
        return None

    def action(self, action: str) -> web.Response:
        if action == "InstanceStart":
            if self.state != "Not started":
                return _fault(
                    "The requested operation is not supported after starting the microVM."
                )
            if "boot-source" not in self.config:
                return _fault("Cannot start microvm without kernel configuration.")
            self.state = "Running"
            if self.on_start is not None:
                self.on_start(self.config)
        elif action == "SendCtrlAltDel":
            if self.state == "Not started":
                return _fault(
                    "The requested operation is not supported before starting the microVM."
                )
            if self.on_ctrl_alt_del is not None:
                self.on_ctrl_alt_del()
        return web.Response(status=204)

    def load_config_file(self, config: dict[str, Any]) -> str | None:
        """``--config-file``: validate as FullVmConfiguration, apply, start; or the error."""
        errors = self.swagger.errors({"$ref": "#/definitions/FullVmConfiguration"}, config)
        self.note({"config_file": config, "errors": errors})
        if errors:
            return "; ".join(errors)
        for key, template in (
            ("logger", "/logger"),
            ("boot-source", "/boot-source"),
            ("machine-config", "/machine-config"),
        ):
            if key in config and (problem := self.configure(template, config[key])):
                return problem
        for drive in config.get("drives", []):
            if problem := self.configure("/drives/{drive_id}", drive):
                return problem
        for nic in config.get("network-interfaces", []):
            self.configure("/network-interfaces/{iface_id}", nic)
        return None if self.action("InstanceStart").status == 204 else "cannot start"


def _fault(message: str) -> web.Response:
    return web.json_response({"fault_message": message}, status=400)


# --- test helpers and the fake binary -------------------------------------------------


def guest(d: Path, console: str = "Linux version 6.1 (fake)\nMESHD-READY\n") -> dict[str, Path]:
    """A fake guest: the fake binary prints the kernel file as the serial console."""
    d.mkdir(parents=True, exist_ok=True)
    files = {"kernel": d / "vmlinux", "initrd": d / "initrd.cpio.gz", "rootfs": d / "root.ext4"}
    files["kernel"].write_text(console)
    files["initrd"].write_bytes(b"\x1f\x8b fake initrd")
    files["rootfs"].write_bytes(b"\0" * 4096)
    return files


WID = "vm-1"  # the workload id the tests give their VM


def spec_for(g: dict[str, Path], **kw: Any) -> WorkloadSpec:
    fields: dict[str, Any] = {
        "name": "web",
        "driver": "firecracker",
        "cpus": 1.0,
        "memory": 256 * MIB,
        "kernel": str(g["kernel"]),
        "initrd": str(g["initrd"]),
        "image": str(g["rootfs"]),
        "ready_marker": "MESHD-READY",
        "boot_timeout_s": 20.0,
    }
    fields.update(kw)
    return WorkloadSpec(**fields)


def options(d: Path, **kw: Any) -> FirecrackerOptions:
    """Driver options for the fake binary in ``d/bin``, with a fake, usable KVM."""
    kvm = d / "kvm"
    kvm.touch()
    (d / "modules").mkdir(exist_ok=True)
    fields: dict[str, Any] = {
        "binary": install(d / "bin"),
        "kvm_device": kvm,
        "sys_modules": d / "modules",
        "poll_interval_s": 0.05,
        "term_grace_s": 2.0,
        "api_timeout_s": 2.0,
    }
    fields.update(kw)
    return FirecrackerOptions(**fields)


def install(bin_dir: Path) -> Path:
    """An executable ``firecracker`` in ``bin_dir`` that runs this module with this Python."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "firecracker"
    me = shlex.quote(str(Path(__file__).resolve()))
    exe.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {me} "$@"\n')
    exe.chmod(0o755)
    return exe


async def _main(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()

    def finish(code: int, line: str = "") -> None:
        if line:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        if not done.done():
            done.set_result(code)

    def boot(config: dict[str, Any]) -> None:
        sys.stdout.buffer.write(Path(config["boot-source"]["kernel_image_path"]).read_bytes())
        sys.stdout.flush()
        if exit_spec := os.environ.get("MESHD_FAKE_FC_EXIT"):
            delay, code = exit_spec.split(":")
            loop.call_later(float(delay), finish, int(code), "fake guest: exiting")

    def ctrl_alt_del() -> None:
        if os.environ.get("MESHD_FAKE_FC_CTRL_ALT_DEL", "reboot") == "reboot":
            loop.call_later(0.05, finish, 0, "reboot: Restarting system")

    record = os.environ.get("MESHD_FAKE_FC_RECORD")
    spec_path = os.environ.get("MESHD_FAKE_FC_SPEC")
    swagger = Swagger.load(Path(spec_path)) if spec_path else Swagger.load()
    fake = FakeFirecracker(
        swagger, Path(args.api_sock), args.id, Path(record) if record else None, boot, ctrl_alt_del
    )
    if Path(args.api_sock).exists():
        print(f"Failed to open the API socket at {args.api_sock}: Address in use", flush=True)
        return 1
    await fake.start()
    try:
        if args.config_file:
            problem = fake.load_config_file(json.loads(Path(args.config_file).read_text()))
            if problem:
                print(f"Configuration for VMM from one single json failed: {problem}", flush=True)
                return 1
        code = await done
        if fake.config.get("logger"):
            with open(fake.config["logger"]["log_path"], "a") as log:
                log.write(f"[{args.id}:main] Firecracker exiting. exit_code={code}\n")
        return code
    finally:
        await fake.close()  # like Firecracker, it leaves the socket file behind


def main() -> None:
    parser = argparse.ArgumentParser(prog="firecracker")
    parser.add_argument("--id", default="anonymous-instance")
    parser.add_argument("--api-sock", required=True)
    parser.add_argument("--config-file")
    args = parser.parse_args()
    if os.environ.get("MESHD_FAKE_FC_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
