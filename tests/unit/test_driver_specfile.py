"""spec.json: drivers keep the one workload model, and still read what older meshd wrote."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from meshd.adapters.drivers.specfile import SPEC_NAME, read_spec, spec_driver
from meshd.core.spec import WorkloadSpec, dumps
from meshd.errors import DriverError

MIB = 1 << 20


def wdir_with(tmp_path: Path, text: str | bytes, wid: str = "vm1") -> Path:
    wdir = tmp_path / wid
    wdir.mkdir()
    data = text.encode() if isinstance(text, str) else text
    (wdir / SPEC_NAME).write_bytes(data)
    return wdir


def old_format(**changes: object) -> dict[str, object]:
    """What the driver dataclass before meshd.core.spec wrote: every field, nulls, the id."""
    doc: dict[str, object] = {
        "id": "vm1",
        "name": "web",
        "driver": "qemu",
        "cpus": 2,
        "memory": 256 * MIB,
        "disk": 1 << 30,
        "command": None,
        "image": "/images/base.qcow2",
        "kernel": None,
        "initrd": None,
        "cmdline": None,
        "user_data": "#cloud-config\n",
        "meta_data": None,
        "network_config": None,
        "env": {"QEMU_BRIDGE": "br0"},
        "boot_timeout_s": 90.0,
        "ready_marker": "login:",
    }
    return doc | changes


def test_the_model_round_trips_and_a_process_spec_names_no_driver(tmp_path: Path) -> None:
    spec = WorkloadSpec(name="web", cpus=0.5, memory=64 * MIB, command="sleep 60")
    wdir = wdir_with(tmp_path, dumps(spec))
    assert "driver" not in json.loads((wdir / SPEC_NAME).read_text())  # a default, left out
    assert read_spec(wdir) == spec
    assert spec_driver(wdir) == "process"


def test_an_old_format_file_is_converted(tmp_path: Path) -> None:
    wdir = wdir_with(tmp_path, json.dumps(old_format(), sort_keys=True, indent=2))
    assert read_spec(wdir) == WorkloadSpec(
        name="web",
        driver="qemu",
        cpus=2.0,
        memory=256 * MIB,
        disk=1 << 30,
        image="/images/base.qcow2",
        user_data="#cloud-config\n",
        env={"QEMU_BRIDGE": "br0"},
        boot_timeout_s=90.0,
        ready_marker="login:",
    )
    assert spec_driver(wdir) == "qemu"
    assert json.loads((wdir / SPEC_NAME).read_text()) == old_format()  # left as it was


def test_an_old_file_of_another_workload_is_refused(tmp_path: Path) -> None:
    wdir = wdir_with(tmp_path, json.dumps(old_format(id="vm2")))
    with pytest.raises(DriverError, match=r"is for workload 'vm2', not 'vm1'; .* put it back"):
        read_spec(wdir)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"memory": 0}, "memory"),
        ({"driver": "docker"}, "driver"),
        ({"cpus": -1}, "cpus"),
    ],
)
def test_an_old_file_the_model_cant_hold_is_refused(
    tmp_path: Path, changes: dict[str, object], why: str
) -> None:
    wdir = wdir_with(tmp_path, json.dumps(old_format(**changes)))
    with pytest.raises(DriverError) as err:
        read_spec(wdir)
    text = str(err.value)
    assert text.startswith(f"{wdir / SPEC_NAME} was written by an older meshd and does not fit")
    assert why in text and text.endswith("destroy the workload and submit it again")


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[]",
        '{"name": "web"}',  # the model's, but incomplete
        json.dumps(old_format() | {"vcpus": 2}),  # neither format has vcpus
    ],
)
def test_anything_else_is_refused_with_a_sentence(tmp_path: Path, text: str) -> None:
    wdir = wdir_with(tmp_path, text)
    with pytest.raises(DriverError, match="is not a workload spec meshd can read") as err:
        read_spec(wdir)
    assert str(err.value).endswith("restore it, or destroy the workload and submit it again")


def test_spec_driver_of_missing_and_unreadable_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "empty").mkdir()
    assert spec_driver(tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError):
        read_spec(tmp_path / "empty")
    with caplog.at_level(logging.WARNING, logger="meshd.adapters.drivers.specfile"):
        assert spec_driver(wdir_with(tmp_path, "{")) is None
    assert "unreadable workload spec" in caplog.text
