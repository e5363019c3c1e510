"""Every request the firecracker driver makes conforms to Firecracker's API description.

The description is ``specs/firecracker-api.yaml`` (Swagger 2.0), read and enforced by
:mod:`firecracker_spec`. The tests check, in order: that the reader and the validator
are right (PyYAML agrees; bad requests are caught), that the bodies the driver builds
validate (the config file as ``FullVmConfiguration``, each endpoint's body), that the
API client's requests validate on a fake Firecracker server (in process), and that the
driver itself, running the fake Firecracker binary in both boot modes, sends nothing
the spec does not allow.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from meshd.adapters.drivers.base import WorkloadState
from meshd.adapters.drivers.firecracker import FirecrackerDriver
from meshd.adapters.drivers.firecracker_api import (
    MIB,
    FirecrackerApi,
    NetworkInterface,
    check_spec,
    mesh_nics,
    vm_config,
)
from meshd.adapters.drivers.firecracker_host import JailerOptions, prepare_jail
from meshd.core.nic import mac_for as nic_mac
from meshd.core.nic import tap_name as nic_tap
from meshd.core.spec import Nic
from meshd.errors import FirecrackerApiError

try:
    from tests.unit import firecracker_fake as fake
    from tests.unit.firecracker_spec import SHARED_SPEC_PATH, SPEC_PATH, Swagger, load_yaml
except ImportError:  # tests/unit is not a package, so pytest put it on sys.path
    import firecracker_fake as fake  # type: ignore[no-redef]
    from firecracker_spec import (  # type: ignore[no-redef]
        SHARED_SPEC_PATH,
        SPEC_PATH,
        Swagger,
        load_yaml,
    )

FULL = {"$ref": "#/definitions/FullVmConfiguration"}


@pytest.fixture(scope="module")
def swagger() -> Swagger:
    return Swagger.load()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temp dir with a short path: unix socket paths are limited to 107 bytes."""
    d = Path(tempfile.mkdtemp(prefix="fc-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- the reader and the validator -------------------------------------------------------


def _pyyaml_json(path: Path) -> Any:
    """The spec as PyYAML reads it, from this Python or the system's; None if neither."""
    if importlib.util.find_spec("yaml") is not None:
        yaml = importlib.import_module("yaml")
        return json.loads(json.dumps(yaml.safe_load(path.read_text())))
    python3 = shutil.which("python3")
    if python3 is None:
        return None
    code = "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
    run = subprocess.run(
        [python3, "-c", code, str(path)], check=False, capture_output=True, text=True
    )
    return json.loads(run.stdout) if run.returncode == 0 else None


def test_yaml_reader_reads_the_spec_as_pyyaml_does() -> None:
    reference = _pyyaml_json(SPEC_PATH)
    if reference is None:
        pytest.skip("PyYAML is not importable here nor in the system python3: nothing to compare")
    assert json.loads(json.dumps(load_yaml(SPEC_PATH.read_text()))) == reference


def test_yaml_reader_handles_the_constructs_it_claims() -> None:
    text = (
        "a: 1\nb: two words\n  folded on\nc:\n- x\n- k: v\n  n: 2.5\nd: [Off, 'q', \"r\"]\n"
        'e: >-\n  one\n  two\nf:\n  "quoted\n  over lines"\n# comment\ng: ~\n'
    )
    assert load_yaml(text) == {
        "a": 1,
        "b": "two words folded on",
        "c": ["x", {"k": "v", "n": 2.5}],
        "d": [False, "q", "r"],
        "e": "one two",
        "f": "quoted over lines",
        "g": None,
    }


def test_the_vendored_spec_is_the_shared_one() -> None:
    if not SHARED_SPEC_PATH.exists():
        pytest.skip(f"{SHARED_SPEC_PATH} is not on this machine")
    assert SPEC_PATH.read_bytes() == SHARED_SPEC_PATH.read_bytes()


GOOD_REQUESTS = [
    ("GET", "/", None),
    ("PUT", "/boot-source", {"kernel_image_path": "/k", "boot_args": "console=ttyS0"}),
    ("PUT", "/machine-config", {"vcpu_count": 32, "mem_size_mib": 128, "smt": False}),
    ("PUT", "/drives/rootfs", {"drive_id": "rootfs", "is_root_device": True, "path_on_host": "/r"}),
    ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0"}),
    ("PUT", "/actions", {"action_type": "InstanceStart"}),
    ("PUT", "/actions", {"action_type": "SendCtrlAltDel"}),
    ("PATCH", "/vm", {"state": "Paused"}),
    ("PUT", "/logger", {"log_path": "/l", "level": "Info", "show_level": True}),
]

BAD_REQUESTS = [
    ("GET", "/no-such-thing", None, "no such path"),
    ("DELETE", "/boot-source", None, "no DELETE"),
    ("GET", "/", {"unexpected": "body"}, "takes no body"),
    ("PUT", "/actions", None, "a body is required"),
    ("PUT", "/boot-source", {"boot_args": "x"}, "missing required 'kernel_image_path'"),
    ("PUT", "/boot-source", {"kernel_image": "/k"}, "unknown field 'kernel_image'"),
    ("PUT", "/machine-config", {"vcpu_count": 33, "mem_size_mib": 128}, "above the maximum"),
    ("PUT", "/machine-config", {"vcpu_count": 0, "mem_size_mib": 128}, "below the minimum"),
    ("PUT", "/machine-config", {"vcpu_count": "2", "mem_size_mib": 128}, "expected integer"),
    ("PUT", "/machine-config", {"vcpu_count": True, "mem_size_mib": 128}, "expected integer"),
    ("PUT", "/actions", {"action_type": "Reboot"}, "is not one of"),
    ("PATCH", "/vm", {"state": "Stopped"}, "is not one of"),
    ("PUT", "/drives/rootfs", {"drive_id": "rootfs", "is_root_device": "yes"}, "expected boolean"),
    (
        "PUT",
        "/drives/rootfs",
        {"drive_id": "r", "is_root_device": True, "cache_type": "X"},
        "one of",
    ),
    (
        "PUT",
        "/network-interfaces/eth0",
        {"iface_id": "eth0", "host_dev_name": "t", "mtu": 9},
        "below the minimum",
    ),
]


@pytest.mark.parametrize(("method", "path", "body"), GOOD_REQUESTS)
def test_the_validator_passes_what_the_spec_allows(
    swagger: Swagger, method: str, path: str, body: Any
) -> None:
    assert swagger.request_errors(method, path, body) == []


@pytest.mark.parametrize(("method", "path", "body", "why"), BAD_REQUESTS)
def test_the_validator_catches_what_the_spec_forbids(
    swagger: Swagger, method: str, path: str, body: Any, why: str
) -> None:
    errors = swagger.request_errors(method, path, body)
    assert errors, f"{method} {path} {body} passed"
    assert any(why in e for e in errors), errors


def test_the_validator_refuses_schema_keywords_it_cannot_check(swagger: Swagger) -> None:
    with pytest.raises(AssertionError, match="pattern"):
        swagger.errors({"type": "string", "pattern": "^a$"}, "b")


# --- the bodies the driver builds -----------------------------------------------------------

VM_SHAPES = {
    "minimal": {"initrd": None, "image": None, "cmdline": None},
    "initrd+rootfs": {},
    "cmdline": {"cmdline": "console=hvc0 quiet meshd.ip=dhcp"},
    "fractional cpus": {"cpus": 0.25},
    "max vcpus": {"cpus": 32, "memory": 4096 * MIB},
}


@pytest.mark.parametrize("shape", VM_SHAPES)
def test_vm_config_is_a_valid_full_vm_configuration(
    swagger: Swagger, tmp_path: Path, shape: str
) -> None:
    g = fake.guest(tmp_path)
    spec = fake.spec_for(g, **VM_SHAPES[shape])
    nics = [NetworkInterface("eth0", "fc-tap0", "06:00:ac:10:00:02")]
    for rootfs, nic in ((g["rootfs"] if spec.image else None, nics), (None, [])):
        config = vm_config(spec, rootfs=rootfs, log_path=tmp_path / "fc.log", nics=nic)
        assert swagger.errors(FULL, config) == []
        # The same config replayed endpoint by endpoint (API boot) is valid too.
        assert swagger.request_errors("PUT", "/boot-source", config["boot-source"]) == []
        assert swagger.request_errors("PUT", "/machine-config", config["machine-config"]) == []
        assert swagger.request_errors("PUT", "/logger", config["logger"]) == []
        for d in config["drives"]:
            assert swagger.request_errors("PUT", f"/drives/{d['drive_id']}", d) == []
        for n in config.get("network-interfaces", []):
            assert swagger.request_errors("PUT", f"/network-interfaces/{n['iface_id']}", n) == []


def test_mesh_nics_make_valid_network_interfaces(swagger: Swagger, tmp_path: Path) -> None:
    g = fake.guest(tmp_path)
    spec = msgspec.structs.replace(
        fake.spec_for(g), nics=(Nic("lan", "10.0.0.5"), Nic("san", "10.1.0.5"))
    )
    check_spec("vm-1", spec)  # NICs on mesh networks are accepted
    config = vm_config(spec, rootfs=None, log_path=None, nics=mesh_nics("vm-1", spec))
    assert swagger.errors(FULL, config) == []
    assert config["network-interfaces"] == [
        {"iface_id": f"eth{i}", "host_dev_name": nic_tap("vm-1", i),
         "guest_mac": nic_mac("vm-1", i)}
        for i in range(2)
    ]  # fmt: skip


def test_a_jailed_config_is_valid_too(swagger: Swagger, tmp_path: Path) -> None:
    g = fake.guest(tmp_path / "g")
    log = tmp_path / "fc.log"
    log.touch()
    config = vm_config(fake.spec_for(g), rootfs=g["rootfs"], log_path=log)
    opts = JailerOptions(uid=os.getuid(), gid=os.getgid(), chroot_base=tmp_path / "jail")
    jailed = prepare_jail(tmp_path / "jail" / "firecracker" / "vm-1" / "root", config, opts)
    assert swagger.errors(FULL, jailed) == []


# --- the API client against a fake server -------------------------------------------------


@pytest.fixture
async def server(swagger: Swagger, short_dir: Path) -> AsyncIterator[fake.FakeFirecracker]:
    srv = fake.FakeFirecracker(swagger, short_dir / "api.sock", instance_id="vm-1")
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


async def test_client_requests_validate_on_the_fake_server(
    swagger: Swagger, server: fake.FakeFirecracker, tmp_path: Path
) -> None:
    g = fake.guest(tmp_path)
    log = tmp_path / "fc.log"
    log.touch()
    nics = [NetworkInterface("eth0", "fc-tap0")]
    config = vm_config(fake.spec_for(g), rootfs=g["rootfs"], log_path=log, nics=nics)
    async with FirecrackerApi(server.sock, 2.0) as api:
        before = await api.describe()
        await api.configure(config)
        await api.action("InstanceStart")
        after = await api.describe()
        await api.set_vm_state("Paused")
        await api.set_vm_state("Resumed")
        await api.action("SendCtrlAltDel")
    assert server.invalid == []
    assert [(r["method"], r["path"]) for r in server.requests] == [
        ("GET", "/"),
        ("PUT", "/logger"),
        ("PUT", "/boot-source"),
        ("PUT", "/machine-config"),
        ("PUT", "/drives/rootfs"),
        ("PUT", "/network-interfaces/eth0"),
        ("PUT", "/actions"),
        ("GET", "/"),
        ("PATCH", "/vm"),
        ("PATCH", "/vm"),
        ("PUT", "/actions"),
    ]
    assert (before["state"], after["state"]) == ("Not started", "Running")
    assert swagger.response_errors("GET", "/", 200, after) == []


async def test_client_reports_firecrackers_fault_message(
    server: fake.FakeFirecracker, tmp_path: Path
) -> None:
    g = fake.guest(tmp_path)
    async with FirecrackerApi(server.sock, 2.0) as api:
        with pytest.raises(FirecrackerApiError, match="without kernel configuration") as exc:
            await api.action("InstanceStart")
        assert exc.value.status == 400
        await api.request("PUT", "/boot-source", {"kernel_image_path": str(g["kernel"])})
        await api.action("InstanceStart")
        with pytest.raises(FirecrackerApiError, match="not supported after starting"):
            await api.request("PUT", "/boot-source", {"kernel_image_path": str(g["kernel"])})


async def test_the_fake_server_refuses_what_the_spec_forbids(
    server: fake.FakeFirecracker,
) -> None:
    async with FirecrackerApi(server.sock, 2.0) as api:
        with pytest.raises(FirecrackerApiError, match="above the maximum 32"):
            await api.request("PUT", "/machine-config", {"vcpu_count": 33, "mem_size_mib": 128})
        with pytest.raises(FirecrackerApiError, match="no such path"):
            await api.request("PUT", "/reboot", {})
    assert len(server.invalid) == 2


async def test_client_says_when_the_socket_does_not_answer(short_dir: Path) -> None:
    async with FirecrackerApi(short_dir / "nobody.sock", 1.0) as api:
        with pytest.raises(FirecrackerApiError, match="did not answer GET /"):
            await api.describe()


# --- the driver, running the fake binary ----------------------------------------------------


@pytest.mark.parametrize("boot", ["config-file", "api"])
async def test_every_request_of_the_driver_validates(
    swagger: Swagger, short_dir: Path, monkeypatch: pytest.MonkeyPatch, boot: str
) -> None:
    record = short_dir / "requests.jsonl"
    monkeypatch.setenv("MESHD_FAKE_FC_RECORD", str(record))
    opts = fake.options(short_dir, boot=boot)
    driver = FirecrackerDriver(short_dir / "w", lambda wid, st: None, opts)
    spec = fake.spec_for(fake.guest(short_dir / "g"))
    try:
        await driver.create(fake.WID, spec)
        started = await driver.start(fake.WID)
        assert started.state is WorkloadState.RUNNING, started.detail
        assert (await driver.status(fake.WID)).state is WorkloadState.RUNNING
        stopped = await driver.stop(fake.WID, timeout_s=5.0)
        assert stopped.detail == "stopped by ctrl-alt-del"
    finally:
        await driver.destroy(fake.WID)
    entries = [json.loads(line) for line in record.read_text().splitlines()]
    assert [e for e in entries if e["errors"]] == []
    calls = [(e["method"], e["path"]) for e in entries if "method" in e]
    configs = [e["config_file"] for e in entries if "config_file" in e]
    if boot == "config-file":
        assert len(configs) == 1 and swagger.errors(FULL, configs[0]) == []
        assert set(calls) == {("GET", "/"), ("PUT", "/actions")}
    else:
        assert configs == []
        assert [c for c in calls if c != ("GET", "/")] == [
            ("PUT", "/logger"),
            ("PUT", "/boot-source"),
            ("PUT", "/machine-config"),
            ("PUT", "/drives/rootfs"),
            ("PUT", "/actions"),  # InstanceStart
            ("PUT", "/actions"),  # SendCtrlAltDel
        ]
    actions = [e["body"]["action_type"] for e in entries if e.get("path") == "/actions"]
    assert actions[-1] == "SendCtrlAltDel"
    assert sys.executable  # the fake ran under this interpreter (see fake.install)
