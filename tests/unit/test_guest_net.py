"""meshd.core.guest_net: what meshd writes for and reads from a guest bridge (pure)."""

from __future__ import annotations

import base64
import ipaddress
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.core import guest_net
from meshd.core.guest_net import (
    DnsmasqPaths,
    GuestFacts,
    HostEntry,
    answer,
    dnsmasq_argv,
    guard_ruleset,
    hosts_file,
    macs_of_ip,
    network_config,
    nics_of,
    ports_of_mac,
    public_keys_of,
)
from meshd.core.network import define
from meshd.core.nic import mac_for, tap_name
from meshd.core.spec import Nic, WorkloadSpec

NET = define("lan", "10.0.0.0/24", gateway="10.0.0.1", dns=["10.0.0.53", "fd00::53"],
             bridge="br0", version=1, by="n1")  # fmt: skip
BARE = define("bare", "10.9.0.0/16", version=1, by="n1")
PATHS = DnsmasqPaths("/d/br0.hosts", "/d/br0.pid", "/d/br0.leases")
IP = ipaddress.ip_address


def spec(*nics: Nic, user_data: str | None = None) -> WorkloadSpec:
    return WorkloadSpec(name="Web_1", cpus=1, memory=1 << 26, nics=nics, user_data=user_data)


def test_nics_of_derives_mac_and_tap_and_refuses_an_unassigned_address() -> None:
    got = nics_of("w1", spec(Nic("lan", "10.0.0.5"), Nic("bare", "10.9.0.7")))
    assert [(n.index, n.network, str(n.ip)) for n in got] == [
        (0, "lan", "10.0.0.5"),
        (1, "bare", "10.9.0.7"),
    ]
    assert [(n.mac, n.tap) for n in got] == [
        (mac_for("w1", i), tap_name("w1", i)) for i in range(2)
    ]
    with pytest.raises(ValueError, match="NIC 0 of workload w1 on network lan has no address"):
        nics_of("w1", spec(Nic("lan")))


def test_hosts_file_lines_are_sorted_and_ipv6_bracketed() -> None:
    text = hosts_file([
        HostEntry("0e:00:00:00:00:02", IP("10.0.0.6"), "b"),
        HostEntry("0e:00:00:00:00:01", IP("fd00::5"), "a"),
    ])  # fmt: skip
    assert text == "0e:00:00:00:00:01,[fd00::5],a\n0e:00:00:00:00:02,10.0.0.6,b\n"
    assert hosts_file([]) == ""


def test_hostname_is_a_dns_label() -> None:
    assert guest_net.hostname_of("Web_1") == "web-1"
    assert guest_net.hostname_of("__") == "guest"
    assert len(guest_net.hostname_of("x" * 100)) == 63


def test_dnsmasq_serves_dhcp_only_to_known_macs_with_the_metadata_route() -> None:
    argv = dnsmasq_argv("dnsmasq", "br0", NET, IP("10.0.0.2"), PATHS, 600)
    for flag in (
        "--port=0",  # no DNS
        "--conf-file=/dev/null",
        "--interface=br0",
        "--bind-interfaces",
        "--dhcp-range=10.0.0.0,static,255.255.255.0,600",
        "--dhcp-hostsfile=/d/br0.hosts",
        "--dhcp-ignore=tag:!known",  # other blades' guests are not NAKed
        "--dhcp-option=option:router,10.0.0.1",
        "--dhcp-option=option:dns-server,10.0.0.53",  # IPv4 servers only in DHCPv4
        "--dhcp-option-force=option:classless-static-route,"
        "169.254.169.254/32,10.0.0.2,0.0.0.0/0,10.0.0.1",
    ):
        assert flag in argv
    assert "--dhcp-authoritative" not in argv
    bare = dnsmasq_argv("dnsmasq", "br1", BARE, IP("10.9.0.2"), PATHS, 600)
    assert "--dhcp-option=option:router" in bare  # empty: no router, not dnsmasq itself
    assert "--dhcp-option-force=option:classless-static-route,169.254.169.254/32,10.9.0.2" in bare
    v6 = define("six", "fd00::/64", version=1, by="n1")
    with pytest.raises(ValueError, match="IPv6: meshd's DHCP serves IPv4 networks only"):
        dnsmasq_argv("dnsmasq", "br6", v6, IP("fd00::2"), PATHS, 600)


def test_the_guard_drops_dhcp_and_metadata_between_guests_and_uplinks() -> None:
    text = guard_ruleset(["up0", "eth1", "up0"])
    assert text.startswith("table bridge meshd_guard\ndelete table bridge meshd_guard\n")
    assert 'iifname "mt*" oifname != "mt*" jump cross' in text
    assert 'iifname != "mt*" oifname "mt*" jump cross' in text
    assert 'iifname { "eth1", "up0" } jump from_uplink' in text
    assert 'oifname { "eth1", "up0" } jump to_uplink' in text
    for rule in ("udp dport { 67, 68 } drop", "arp daddr ip 169.254.169.254 drop",
                 "udp dport 67 drop", "udp sport 67 drop"):  # fmt: skip
        assert rule in text
    assert "udp dport 68 drop" not in text  # the node's own DHCP client is left alone
    alone = guard_ruleset([])
    assert "jump from_uplink" not in alone and "jump cross" in alone


ARP = """IP address       HW type     Flags       HW address            Mask     Device
10.0.0.5         0x1         0x2         0E:AA:00:00:00:01     *        br0
10.0.0.6         0x1         0x0         00:00:00:00:00:00     *        br0
10.0.0.7         0x1         0x2         0e:aa:00:00:00:07     *        br0
10.0.0.7         0x1         0x2         0e:aa:00:00:00:08     *        br0
10.0.0.5         0x1         0x2         0e:aa:00:00:00:09     *        br9
bad line
"""


def fdb_entry(mac: str, port: int, local: bool = False) -> bytes:
    raw = bytes(int(x, 16) for x in mac.split(":"))
    return raw + bytes([port & 0xFF, int(local)]) + b"\0\0\0\0" + bytes([port >> 8]) + b"\0\0\0"


def test_arp_and_forwarding_table_readings() -> None:
    assert macs_of_ip(ARP, IP("10.0.0.5"), "br0") == {"0e:aa:00:00:00:01"}
    assert macs_of_ip(ARP, IP("10.0.0.6"), "br0") == set()  # incomplete: no answer yet
    assert macs_of_ip(ARP, IP("10.0.0.7"), "br0") == {"0e:aa:00:00:00:07", "0e:aa:00:00:00:08"}
    assert macs_of_ip(ARP, IP("10.0.0.5"), "br1") == set()
    assert macs_of_ip("", IP("10.0.0.5"), "br0") == set()
    table = b"".join([
        fdb_entry("0e:aa:00:00:00:01", 1),
        fdb_entry("0e:aa:00:00:00:01", 2, local=True),  # the bridge's own: skipped
        fdb_entry("0e:aa:00:00:00:02", 0x103),  # a port number above 255
        b"\1\2\3",  # a torn tail
    ])  # fmt: skip
    names = {1: "mt1", 2: "up0", 0x103: "mt9"}
    assert ports_of_mac(table, "0e:aa:00:00:00:01", names) == {"mt1"}
    assert ports_of_mac(table, "0e:aa:00:00:00:02", names) == {"mt9"}
    assert ports_of_mac(table, "0e:aa:00:00:00:02", {}) == {"port259"}
    assert ports_of_mac(table, "0e:aa:00:00:00:03", names) == set()


def test_network_config_v2_matches_each_nic_by_mac() -> None:
    nics = nics_of("w1", spec(Nic("lan", "10.0.0.5"), Nic("bare", "10.9.0.7")))
    doc = json.loads(network_config(nics, {"lan": NET, "bare": BARE}))
    assert doc["version"] == 2
    eth0, eth1 = doc["ethernets"]["eth0"], doc["ethernets"]["eth1"]
    assert eth0 == {
        "match": {"macaddress": mac_for("w1", 0)},
        "set-name": "eth0",
        "addresses": ["10.0.0.5/24"],
        "routes": [{"to": "default", "via": "10.0.0.1"}],
        "nameservers": {"addresses": ["10.0.0.53", "fd00::53"]},
    }
    assert eth1["addresses"] == ["10.9.0.7/16"] and "routes" not in eth1


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI key@x"
FACTS = GuestFacts(
    instance_id="w1",
    name="web",
    node="n1",
    domain="example.mesh",
    hostname="web",
    local_ip=IP("10.0.0.5"),
    mac="0e:aa:00:00:00:01",
    user_data="#cloud-config\nssh_authorized_keys:\n  - " + KEY + "\n",
    public_keys=(KEY,),
)


def test_metadata_answers_ec2_and_openstack_paths() -> None:
    key = Ed25519PrivateKey.generate()

    def get(path: str) -> tuple[int, str]:
        a = answer(path, FACTS, key.sign)
        return a.status, a.body.decode()

    assert get("/latest/meta-data/instance-id") == (200, "w1")
    assert get("/latest/meta-data/local-ipv4") == (200, "10.0.0.5")
    assert get("/latest/meta-data/mac") == (200, "0e:aa:00:00:00:01")
    assert get("/latest/meta-data/hostname") == (200, "web")
    assert get("/latest/meta-data/mesh-name") == (200, "web")
    assert get("/latest/meta-data/placement/availability-zone") == (200, "n1")
    assert get("/latest/meta-data/public-keys") == (200, "0=key-0\n")
    assert get("/latest/meta-data/public-keys/0/openssh-key") == (200, KEY + "\n")
    assert get("/latest/meta-data/public-keys/1/openssh-key")[0] == 404
    index = get("/latest/meta-data/")[1].split()
    assert {"instance-id", "local-ipv4", "mac", "public-keys/", "placement/"} <= set(index)
    assert get("/latest/user-data") == (200, FACTS.user_data)
    assert get("/latest/meta-data/nothing")[0] == 404
    assert get("/other")[0] == 404
    doc = answer("/latest/dynamic/instance-identity/document", FACTS, key.sign).body
    sig = get("/latest/dynamic/instance-identity/signature")[1]
    key.public_key().verify(base64.b64decode(sig), doc)  # signed by the node's key
    assert json.loads(doc)["instanceId"] == "w1"
    os = json.loads(get("/openstack/latest/meta_data.json")[1])
    assert (os["uuid"], os["name"], os["public_keys"]) == ("w1", "web", {"key-0": KEY})
    assert get("/openstack/latest/user_data") == (200, FACTS.user_data)
    none = GuestFacts("w2", "x", "n1", "d", "x", IP("10.0.0.6"), "0e:00:00:00:00:02", None)
    assert answer("/latest/user-data", none, key.sign).status == 404


def test_public_keys_come_from_cloud_config() -> None:
    assert public_keys_of(FACTS.user_data) == (KEY,)
    ud = f"#cloud-config\nssh_authorized_keys:\n  - '{KEY}'\n  - \"{KEY}2\"\nusers: []\n"
    assert public_keys_of(ud) == (KEY, KEY + "2")
    assert public_keys_of("#!/bin/sh\nssh_authorized_keys:\n  - " + KEY) == ()
    assert public_keys_of(None) == ()


def test_the_bridge_mac_is_fixed_local_unicast() -> None:
    mac = guest_net.bridge_mac("n1", "lan")
    assert mac == guest_net.bridge_mac("n1", "lan") != guest_net.bridge_mac("n2", "lan")
    first = int(mac.split(":")[0], 16)
    assert first & 2 and not first & 1
