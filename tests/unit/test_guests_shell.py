"""meshd.shell.guests without root: what it offers, the network-config it adds, and the
NICs it leaves alone (the host side is tests/integration/test_guest_networking.py)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from meshd.config import GuestsConfig
from meshd.core.network import Address, Network, define
from meshd.core.nic import mac_for
from meshd.core.spec import Nic, WorkloadSpec
from meshd.shell.guests import GuestNetworks

LAN = define("lan", "10.0.0.0/24", gateway="10.0.0.1", bridge="h13hnone0", version=1, by="n")


class NoAddress:
    async def node_address(self, network: str) -> Address:
        raise AssertionError("no host side is set up in these tests")


def shell(tmp: Path, create: bool, nets: list[Network]) -> GuestNetworks:
    g = GuestNetworks(GuestsConfig(create_bridges=create), tmp, "n1", "d", bytes, NoAddress())
    by_name = {n.name: n for n in nets}
    g.use_networks(by_name.get, lambda: nets)
    return g


def spec(driver: str, **kw: object) -> WorkloadSpec:
    return WorkloadSpec(
        name="web", cpus=1, memory=1 << 26, driver=driver, kernel="/k",  # type: ignore[arg-type]
        nics=(Nic("lan", "10.0.0.5"),), **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_network_is_offered_when_its_bridge_exists_or_may_be_created(tmp_path: Path) -> None:
    seen: list[frozenset[str]] = []
    g = shell(tmp_path, False, [LAN])
    g.on_offers = seen.append
    g.refresh_offers()
    assert g.offers() == frozenset() and seen == []  # no bridge h13hnone0 here
    lo = Network(**{f: getattr(LAN, f) for f in LAN.__slots__} | {"name": "lo", "bridge": "lo"})
    assert shell(tmp_path, False, [lo]).offers() == frozenset()  # lo is no bridge
    g = shell(tmp_path, True, [LAN])
    g.on_offers = seen.append
    g.refresh_offers()
    g.refresh_offers()  # told once, on change
    assert seen == [frozenset({"network:lan"})]


def test_qemu_guests_with_nics_get_a_network_config(tmp_path: Path) -> None:
    g = shell(tmp_path, False, [LAN])
    bare = spec("qemu")  # a kernel and initrd alone: no cloud-init to read a seed
    assert g.with_network_config("w1", bare) is bare
    for cloudy in (spec("qemu", user_data="#cloud-config\n"), spec("qemu", image="/d.qcow2")):
        doc = json.loads(g.with_network_config("w1", cloudy).network_config or "")
        assert doc["ethernets"]["eth0"]["addresses"] == ["10.0.0.5/24"]
    doc = json.loads(g.with_network_config("w1", spec("qemu", meta_data="x")).network_config or "")
    eth0 = doc["ethernets"]["eth0"]
    assert eth0["match"] == {"macaddress": mac_for("w1", 0)}
    assert eth0["addresses"] == ["10.0.0.5/24"]
    own = spec("qemu", network_config="version: 2\n")
    assert g.with_network_config("w1", own) is own  # the workload's own wins
    fc = spec("firecracker", user_data="#cloud-config\n")
    assert g.with_network_config("w1", fc) is fc  # no seed for Firecracker
    unknown = shell(tmp_path, False, [])
    assert unknown.with_network_config("w1", spec("qemu", meta_data="x")).network_config is None


async def test_nics_of_process_workloads_are_addresses_only(tmp_path: Path) -> None:
    g = shell(tmp_path, False, [LAN])
    s = msgspec.structs.replace(spec("qemu"), driver="process", kernel=None, command="/bin/true")
    assert await g.attach("w1", s) == []  # nothing on the host, no address asked
    assert g.guest_address("w1") is None
    await g.detach("w1")  # nothing to undo
