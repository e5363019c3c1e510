"""What a node offers in its bids, and which requirement a node fails."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest

from meshd import config
from meshd.adapters import telemetry
from meshd.adapters.drivers import qemu_host
from meshd.adapters.drivers.process import ProcessDriver
from meshd.adapters.drivers.qemu import QemuDriver
from meshd.core.auction.capabilities import Capabilities, Requirements
from meshd.core.spec import Nic
from tests.factories import spec


def _nothing(wid: str, status: object) -> None:
    pass


@pytest.mark.parametrize(
    ("needs", "labels", "anti", "neighbours", "why"),
    [
        ({"driver:fake"}, (), set(), (), None),
        ({"driver:qemu"}, (), set(), (), "lacks driver:qemu"),
        ({"driver:fake", "kvm", "arch:riscv64"}, (), set(), (), "lacks arch:riscv64, kvm"),
        ({"driver:fake"}, (("rack", "a"),), set(), (), None),
        ({"driver:fake"}, (("rack", "b"),), set(), (), "lacks label rack=b"),
        ({"driver:fake"}, (("ssd", "yes"),), set(), (), "lacks label ssd=yes"),
        ({"driver:fake"}, (), {"db"}, ("web", "db"), "runs db (anti-affinity)"),
        ({"driver:fake"}, (), {"db"}, ("web",), None),
    ],
)
def test_unmet_names_the_first_kind_of_requirement_a_node_fails(
    needs: set[str],
    labels: tuple[tuple[str, str], ...],
    anti: set[str],
    neighbours: tuple[str, ...],
    why: str | None,
) -> None:
    caps = Capabilities(frozenset({"driver:fake", "arch:x86_64"}), {"rack": "a"})
    req = Requirements(frozenset(needs), labels, frozenset(anti))
    assert caps.unmet(req, neighbours) == why


def test_a_specs_requirements_imply_its_driver_and_networks() -> None:
    s = spec("w", driver="qemu", requires=frozenset({"kvm"}), labels={"rack": "a"})
    req = Requirements.of(s)
    assert req.needs == frozenset({"driver:qemu", "kvm"})
    assert req.labels == (("rack", "a"),)


def test_a_node_offers_its_drivers_arch_and_labels(tmp_path: Path) -> None:
    cfg = config.local().replace(labels=("rack=a", "ssd=yes"))
    process = ProcessDriver(tmp_path, _nothing)
    caps = telemetry.capabilities(cfg, [process.capabilities()])
    assert caps.offers == frozenset({"driver:process", f"arch:{platform.machine()}"})
    assert dict(caps.labels) == {"rack": "a", "ssd": "yes"}


def test_a_network_label_declares_an_attachable_network(tmp_path: Path) -> None:
    cfg = config.local().replace(labels=("network:lan=attached", "network:=x", "rack=a"))
    caps = telemetry.capabilities(cfg, [ProcessDriver(tmp_path, _nothing).capabilities()])
    assert "network:lan" in caps.offers
    assert not {"network:", "rack", "rack=a"} & caps.offers
    assert "network:lan" in Requirements.of(spec("w", nics=(Nic("lan"),))).needs
    assert caps.unmet(Requirements.of(spec("w", driver="process", nics=(Nic("lan"),)))) is None


def test_qemu_offers_nothing_without_its_binary(tmp_path: Path) -> None:
    qemu = QemuDriver(tmp_path, _nothing, binary=str(tmp_path / "no-such-qemu"))
    assert qemu.capabilities() == frozenset()


def test_qemu_offers_its_accelerator_and_an_existing_bridge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    qemu = QemuDriver(tmp_path, _nothing, binary=sys.executable, bridge="br-lab")
    monkeypatch.setattr(qemu_host, "has_netdev", lambda name, sub="": False)
    assert qemu.capabilities() == frozenset({"driver:qemu", qemu.accel.name})
    monkeypatch.setattr(qemu_host, "has_netdev", lambda name, sub="": name == "br-lab")
    assert "bridge:br-lab" in qemu.capabilities()
