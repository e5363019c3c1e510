"""Guest networking on real namespaces, no QEMU (issue 13, items 3-5).

Two blades share one segment through a switch namespace; blade ``a`` creates its bridge
(``[guests] create_bridges``), blade ``b`` uses the operator's. Guests are namespaces
whose veth peers are named like their workloads' taps. Blade ``b`` also holds a stale
entry for ``a``'s first guest (as a blade the guest moved away from would), so only the
nftables guard keeps its DHCP and metadata from answering it.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Iterator

import pytest

from meshd.core.guest_net import bridge_mac
from meshd.core.nic import mac_for, tap_name
from tests.integration.guest_lab import NETWORK, Blade, Guest, Lab, usable

pytestmark = pytest.mark.skipif(usable() is not None, reason=str(usable()))

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne one@test"
USER_DATA = f"#cloud-config\nssh_authorized_keys:\n  - {KEY}\n"


class World:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        lab.workload("w-one", "web-one", "10.77.0.11", USER_DATA)
        lab.workload("w-two", "web-two", "10.77.0.12")
        lab.workload("w-three", "db-three", "10.77.0.13", "#!/bin/sh\necho three\n")
        self.a: Blade = lab.blade("a", "10.77.0.2", create=True, attach=[])
        self.b: Blade = lab.blade("b", "10.77.0.3", create=False, attach=["w-one"])
        self.g1: Guest = lab.guest(self.a, "w-one", "10.77.0.11")
        assert self.a.send("attach w-one") == "OK"
        self.g2: Guest = lab.guest(self.a, "w-two", "10.77.0.12")
        assert self.a.send("attach w-two") == "OK"
        self.g3: Guest = lab.guest(self.b, "w-three", "10.77.0.13")
        assert self.b.send("attach w-three") == "OK"


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    lab = Lab()
    try:
        yield World(lab)
    finally:
        lab.close()


def test_both_blades_offer_the_network(world: World) -> None:
    assert world.a.offers == [f"network:{NETWORK}"]  # it may create the bridge
    assert world.b.offers == [f"network:{NETWORK}"]  # the operator's bridge exists


BRIDGES = """
import asyncio
from meshd.adapters import host_net
from meshd.errors import DriverError

async def main():
    vlan = await host_net.ensure_bridge("br9", "0a:00:00:00:00:09", True, "u0", 40, 5)
    print(vlan)
    print(open("/sys/class/net/br9/address").read().strip())
    print(open("/sys/class/net/br9/bridge/stp_state").read().strip())
    print(await host_net.ensure_bridge("br8", "0a:00:00:00:00:08", True, "u0p", None, 5))
    print(host_net.ports_of("br8"))
    print(await host_net.ensure_bridge("br7", "0a:00:00:00:00:07", True, "nope0", None, 5))
    try:
        await host_net.ensure_bridge("br6", "0a:00:00:00:00:06", False, "", None, 5)
    except DriverError as e:
        print(e)

asyncio.run(main())
"""


def test_created_bridges_their_uplinks_and_what_cannot_be_done(world: World) -> None:
    lab = world.lab
    ns = lab._netns("br")
    lab._in(ns, "ip", "link", "add", "u0", "type", "veth", "peer", "name", "u0p")
    out = lab._in(ns, sys.executable, "-c", BRIDGES).stdout.splitlines()
    has_8021q = out[0] == "None"
    if not has_8021q:  # this kernel has no 802.1Q (LAB-NOTES): a sentence, not a failure
        assert "is not on VLAN 40; attach it to the segment by hand" in out[0]
    assert out[1:3] == ["0a:00:00:00:00:09", "0"]  # the fixed MAC, STP off
    assert out[3:5] == ["None", "['u0p']"]  # a created bridge on its uplink
    assert out[5] == "uplink nope0 does not exist: bridge br7 reaches no other node"
    assert out[6] == (
        "bridge br6 does not exist on this node: create it and attach it to the network's "
        "segment, or set [guests] create_bridges = true"
    )


def test_each_guest_gets_its_address_from_its_own_blade(world: World) -> None:
    for g, blade in ((world.g1, world.a), (world.g2, world.a), (world.g3, world.b)):
        lease = world.lab.dhcp(g)
        assert lease is not None, world.lab.errors(blade.name)
        assert lease["ip"] == g.ip
        assert lease["serverid"] == blade.node_ip
        assert lease["staticroutes"].split() == ["169.254.169.254/32", blade.node_ip]
    # Blade b knows w-one's MAC too: only the guard keeps its offers off the segment.
    for _ in range(3):
        lease = world.lab.dhcp(world.g1)
        assert lease is not None and lease["serverid"] == world.a.node_ip
    leases = world.lab.tmp / "b" / "dhcp" / "h13hbr0.leases"
    assert world.g1.mac not in (leases.read_text() if leases.exists() else "")
    log = (world.lab.tmp / "b" / "dhcp" / "h13hbr0.log").read_text()
    assert world.g3.mac in log  # b's dnsmasq logs what it hears...
    assert world.g1.mac not in log  # ...and never heard a's guest


def test_a_guest_reads_its_own_metadata(world: World) -> None:
    g1 = world.lab.fetch(
        world.g1,
        "/latest/meta-data/instance-id",
        "/latest/meta-data/local-ipv4",
        "/latest/meta-data/mac",
        "/latest/meta-data/hostname",
        "/latest/meta-data/mesh-name",
        "/latest/meta-data/public-keys/0/openssh-key",
        "/latest/user-data",
        "/latest/dynamic/instance-identity/document",
        "/latest/dynamic/instance-identity/signature",
        "/openstack/latest/meta_data.json",
        "/latest/meta-data/",
    )
    assert [s for s, _, _ in g1] == [200] * 11, g1
    body = [b for _, b, _ in g1]
    assert body[:6] == ["w-one", "10.77.0.11", world.g1.mac, "web-one", "web-one", KEY + "\n"]
    assert body[6] == USER_DATA
    doc = json.loads(body[7])
    assert doc["instanceId"] == "w-one" and doc["availabilityZone"] == "a"
    assert len(base64.b64decode(body[8])) == 64  # an Ed25519 signature
    assert json.loads(body[9])["uuid"] == "w-one"
    assert "instance-id" in body[10].split()
    # busybox's own client, as a minimal guest would use it
    assert world.lab.wget(world.g1, "/latest/meta-data/instance-id") == "w-one"
    # The second guest on the same blade gets its own, not the first's.
    g2 = world.lab.fetch(world.g2, "/latest/meta-data/instance-id", "/latest/user-data")
    assert [(s, b) for s, b, _ in g2] == [(200, "w-two"), (404, "not found\n")]
    # A guest on the other blade gets its data from its own blade.
    g3 = world.lab.fetch(world.g3, "/latest/meta-data/instance-id", "/latest/user-data")
    assert [(s, b) for s, b, _ in g3] == [(200, "w-three"), (200, "#!/bin/sh\necho three\n")]


CLOUD_INIT = """
import json
from cloudinit.sources.DataSourceOpenStack import read_metadata_service
from cloudinit.sources.helpers import ec2

url = "http://169.254.169.254"
out = {
    "ec2": ec2.get_instance_metadata("latest", url, timeout=3, retries=1),
    "ec2_user_data": ec2.get_instance_userdata("latest", url, timeout=3, retries=1),
}
osd = read_metadata_service(url, timeout=3, retries=1)
out["openstack"] = osd["metadata"]
out["openstack_user_data"] = osd["userdata"]
print(json.dumps(out, default=bytes.decode))
"""


def test_cloud_init_reads_a_guest_s_own_metadata_through_its_ec2_and_openstack_crawlers(
    world: World,
) -> None:
    """Debian's cloud-init (its EC2 and OpenStack datasources' own crawlers, as a guest's
    cloud-init runs them) walks the metadata service from the guest's address and gets
    that guest's instance id, address, keys and user-data."""
    probe = world.lab._in(world.g1.ns, "/usr/bin/python3", "-c", "import cloudinit", check=False)
    if probe.returncode != 0:
        pytest.skip("needs Debian's cloud-init (bootstrap/setup.sh --test installs it as root)")
    got = world.lab._in(world.g1.ns, "/usr/bin/python3", "-c", CLOUD_INIT, check=False)
    assert got.returncode == 0, got.stderr[-2000:]
    out = json.loads(got.stdout)
    ec2 = out["ec2"]
    assert ec2["instance-id"] == "w-one" and ec2["local-ipv4"] == "10.77.0.11", ec2
    assert ec2["mac"] == world.g1.mac and ec2["hostname"] == "web-one", ec2
    assert ec2["public-keys"] == {"key-0": [KEY]}, ec2
    assert ec2["placement"] == {"availability-zone": "a"}, ec2
    assert out["ec2_user_data"] == USER_DATA
    osd = out["openstack"]
    assert osd["uuid"] == "w-one" and osd["hostname"] == "web-one", osd
    assert osd["public_keys"] == {"key-0": KEY}, osd
    assert out["openstack_user_data"] == USER_DATA
    # Another guest's crawler gets its own instance, never w-one's.
    other = world.lab._in(world.g2.ns, "/usr/bin/python3", "-c", CLOUD_INIT, check=False)
    assert other.returncode == 0, other.stderr[-2000:]
    two = json.loads(other.stdout)
    assert two["ec2"]["instance-id"] == "w-two" and "public-keys" not in two["ec2"]
    assert two["ec2_user_data"] == "" and two["openstack"]["uuid"] == "w-two"


def test_only_the_own_blade_answers_arp_for_the_metadata_address(world: World) -> None:
    lab, g1 = world.lab, world.g1
    lab._in(g1.ns, "ip", "route", "replace", "169.254.169.254/32", "dev", "eth0")
    try:
        lab._in(g1.ns, "ip", "neigh", "flush", "dev", "eth0")
        lab._in(world.b.ns, "ip", "neigh", "flush", "dev", "h13hbr0")
        ((status, body, _),) = lab.fetch(g1, "/latest/meta-data/instance-id")
        assert (status, body) == (200, "w-one")
        time.sleep(0.3)  # a second ARP reply, if one crossed, would have arrived
        neigh = lab._in(g1.ns, "ip", "-j", "neigh", "show", "169.254.169.254").stdout
        assert [e["lladdr"] for e in json.loads(neigh)] == [bridge_mac("a", NETWORK)]
        # Blade b never saw the ARP request (it would have learnt the sender).
        seen = lab._in(world.b.ns, "ip", "-j", "neigh", "show", g1.ip).stdout
        assert json.loads(seen or "[]") == []
    finally:
        lab._in(g1.ns, "ip", "route", "replace", "169.254.169.254/32", "via", "10.77.0.2")


def test_a_spoofed_source_gets_nothing(world: World) -> None:
    lab = world.lab
    # Another guest's tap on blade a's bridge claims w-two's address: with its own MAC,
    # then with w-two's MAC as well; then a port that is no tap (the guard's business).
    for port, mac in (
        (tap_name("w-spoof", 0), "02:00:00:00:00:99"),
        (tap_name("w-spoof", 1), mac_for("w-two", 0)),
        ("h13hsp0", "02:00:00:00:00:98"),
    ):
        spoof = lab.guest(world.a, "w-two", "10.77.0.12", port=port, mac=mac)
        lab._in(spoof.ns, "ip", "addr", "add", "10.77.0.12/24", "dev", "eth0")
        lab._in(spoof.ns, "ip", "route", "add", "169.254.169.254/32", "via", "10.77.0.2")
        lab._in(world.a.ns, "ip", "neigh", "flush", "dev", "h13hbr0")
        answers = lab.fetch(spoof, "/latest/meta-data/instance-id", timeout=2.0)
        assert all(s != 200 for s, _, _ in answers), answers
        assert all("w-two" not in b for _, b, _ in answers)
        lab._in(world.a.ns, "ip", "link", "del", spoof.tap)
    # And a source that is nobody's NIC.
    g1 = world.g1
    lab._in(g1.ns, "ip", "addr", "add", "10.77.0.99/24", "dev", "eth0")
    lab._in(g1.ns, "ip", "route", "replace", "169.254.169.254/32", "via", "10.77.0.2",
            "src", "10.77.0.99")  # fmt: skip
    try:
        answers = lab.fetch(g1, "/latest/meta-data/instance-id", timeout=2.0)
        assert [s for s, _, _ in answers] == [403], answers
    finally:
        lab._in(g1.ns, "ip", "route", "replace", "169.254.169.254/32", "via", "10.77.0.2")
        lab._in(g1.ns, "ip", "addr", "del", "10.77.0.99/24", "dev", "eth0")


def test_the_guard_follows_an_uplink_the_operator_adds(world: World) -> None:
    lab, b = world.lab, world.b

    def guarded() -> str:
        return lab._in(b.ns, "nft", "list", "chain", "bridge", "meshd_guard", "input").stdout

    assert '"up0"' in guarded() and "h13hup1" not in guarded()
    lab._in(b.ns, "ip", "link", "add", "h13hup1", "type", "veth", "peer", "name", "h13hup1p")
    try:
        lab._in(b.ns, "ip", "link", "set", "h13hup1", "master", "h13hbr0", "up")
        deadline = time.monotonic() + 5
        while "h13hup1" not in guarded() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert '"h13hup1"' in guarded()
    finally:
        lab._in(b.ns, "ip", "link", "del", "h13hup1")


def test_a_restarted_blade_reattaches_without_touching_its_guests(world: World) -> None:
    lab, a = world.lab, world.a
    pid = int(a.send("pid"))

    def ifindex(tap: str) -> int:
        return int(json.loads(lab._in(a.ns, "ip", "-j", "link", "show", tap).stdout)[0]["ifindex"])

    before = [ifindex(g.tap) for g in (world.g1, world.g2)]
    lab.crash_and_restart(a, ["w-one", "w-two"])
    assert int(a.send("pid")) == pid  # the running dnsmasq was adopted
    assert [ifindex(g.tap) for g in (world.g1, world.g2)] == before  # the same taps
    ((status, body, _),) = lab.fetch(world.g1, "/latest/meta-data/instance-id")
    assert (status, body) == (200, "w-one")
    lease = lab.dhcp(world.g2)
    assert lease is not None and lease["serverid"] == a.node_ip


def test_dnsmasq_is_restarted_and_a_departed_guest_loses_its_lease(world: World) -> None:
    lab, a = world.lab, world.a
    pid = int(a.send("pid"))
    os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while int(a.send("pid")) == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    assert int(a.send("pid")) != pid
    lease = lab.dhcp(world.g2)
    assert lease is not None and lease["ip"] == "10.77.0.12"
    leases = lab.tmp / "a" / "dhcp" / "h13hbr0.leases"
    assert mac_for("w-two", 0) in leases.read_text()
    assert a.send("detach w-two") == "OK"
    assert mac_for("w-two", 0) not in json.loads(a.send("hosts"))
    assert mac_for("w-two", 0) not in leases.read_text()  # dhcp_release dropped it
    shown = lab._in(a.ns, "ip", "link", "show", tap_name("w-two", 0), check=False)
    assert shown.returncode != 0  # the tap went with the workload
    assert lab.dhcp(world.g2) is None


def test_an_offered_network_is_set_up_before_any_guest_and_wound_down_when_removed(
    world: World,
) -> None:
    """``[guests] prepare``: a blade whose bridge exists sets the network up (its address,
    dnsmasq) as soon as it offers it, so its first guest doesn't wait for dnsmasq; once
    the network is removed and no guest of its is on it, its dnsmasq stops."""
    c = world.lab.blade("c", "10.77.0.4", create=False, attach=[], eager=True)
    pid = int(c.send("pid"))
    assert pid > 0 and os.path.exists(f"/proc/{pid}")
    assert c.send("remove") == "OK"
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")
    assert int(c.send("pid")) == 0
