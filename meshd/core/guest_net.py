"""Guests on a node's bridges: what meshd writes and reads there (issue 13, items 3-5).

Theory of operation
-------------------
A workload's NICs are fixed in its spec before the auction (every ``Nic.ip`` set), so a
node that runs it derives everything else: the MAC (:func:`meshd.core.nic.mac_for`), the
tap (:func:`meshd.core.nic.tap_name`), and from the network record its subnet, gateway
and DNS servers. This module turns those into the texts the host tools take:

* **dnsmasq** per bridge, DHCP only (no DNS: ``--port=0``), answering only the MACs in
  its hosts file (``--dhcp-ignore=tag:!known``: without it the old blade NAKs a guest
  that moved; ``--dhcp-authoritative`` would NAK every other blade's guests). Options:
  router (the network's gateway, if set), DNS servers, and a classless static route
  (option 121) to 169.254.169.254/32 via the node's own address on the bridge, so a
  guest reaches *its own* node's metadata server whatever its default route is.
* an **nftables ``bridge`` table** that keeps DHCP and anything to or from
  169.254.169.254 (ARP for it included) between this node's guests' taps (``mt*``) and
  the bridge itself: never to or from another port (the uplink to other blades).
* the **NoCloud network-config** (version 2) matching each NIC by MAC.
* the **metadata** answers (EC2 and OpenStack paths) for one identified guest.

It also reads the kernel's ARP table and a bridge's forwarding table. Pure: no IO, no clock.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshd.core.network import Address, Network
from meshd.core.nic import TAP_PREFIX, mac_for, tap_name
from meshd.core.spec import WorkloadSpec

METADATA_IP = ipaddress.IPv4Address("169.254.169.254")
GUARD_TABLE = "meshd_guard"  # the nftables bridge table's name
_MAC = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}\Z")
_HOSTNAME_BAD = re.compile(r"[^a-z0-9-]")


@dataclass(frozen=True, slots=True)
class GuestNic:
    """NIC ``index`` of a workload, as the host sees it."""

    workload_id: str
    index: int
    network: str
    ip: Address
    mac: str
    tap: str


def nics_of(wid: str, spec: WorkloadSpec) -> list[GuestNic]:
    """The workload's NICs; ValueError names one whose address was never assigned."""
    out = []
    for i, nic in enumerate(spec.nics):
        if nic.ip is None:
            raise ValueError(
                f"NIC {i} of workload {wid} on network {nic.network} has no address: "
                "the originator assigns one before the auction"
            )
        out.append(
            GuestNic(
                wid, i, nic.network, ipaddress.ip_address(nic.ip), mac_for(wid, i), tap_name(wid, i)
            )
        )
    return out


def hostname_of(name: str) -> str:
    """A DNS label from a workload name (the DHCP hostname and the metadata's)."""
    label = _HOSTNAME_BAD.sub("-", name.lower()).strip("-")[:63].strip("-")
    return label or "guest"


def bridge_mac(node: str, network: str) -> str:
    """A fixed MAC for this node's bridge of ``network`` (else it follows the taps, and
    the guests' gateway MAC with it): locally administered, unicast, prefix ``0a``."""
    h = hashlib.sha256(f"meshd-bridge:{node}:{network}".encode()).digest()
    return "0a:" + ":".join(f"{b:02x}" for b in h[:5])


# -- dnsmasq ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostEntry:
    mac: str
    ip: Address
    hostname: str


def hosts_file(entries: Iterable[HostEntry]) -> str:
    """dnsmasq's ``--dhcp-hostsfile``: ``MAC,IP,hostname`` per line, sorted by MAC.

    IPv6 addresses go in brackets, as dnsmasq's syntax wants them."""
    lines = []
    for e in sorted(entries, key=lambda e: e.mac):
        ip = f"[{e.ip}]" if e.ip.version == 6 else str(e.ip)
        lines.append(f"{e.mac},{ip},{e.hostname}")
    return "".join(line + "\n" for line in lines)


@dataclass(frozen=True, slots=True)
class DnsmasqPaths:
    hosts: str
    pidfile: str
    leases: str


def dnsmasq_argv(
    binary: str, bridge: str, net: Network, node_ip: Address, paths: DnsmasqPaths, lease_s: int
) -> list[str]:
    """The command line of the DHCP-only dnsmasq on ``bridge`` (LAB-NOTES's flags)."""
    if net.subnet.version != 4:
        raise ValueError(
            f"network {net.name} is IPv6: meshd's DHCP serves IPv4 networks only; "
            "give its guests a network-config (their NoCloud seed carries the address)"
        )
    argv = [
        binary,
        "--keep-in-foreground",
        "--port=0",
        "--conf-file=/dev/null",
        f"--interface={bridge}",
        "--bind-interfaces",
        "--except-interface=lo",
        f"--dhcp-range={net.subnet.network_address},static,{net.subnet.netmask},{lease_s}",
        f"--dhcp-hostsfile={paths.hosts}",
        "--dhcp-ignore=tag:!known",
        f"--dhcp-leasefile={paths.leases}",
        f"--pid-file={paths.pidfile}",
        "--log-facility=-",
        "--no-ping",
    ]
    if net.gateway is not None:
        argv.append(f"--dhcp-option=option:router,{net.gateway}")
    else:
        argv.append("--dhcp-option=option:router")  # none: dnsmasq would offer itself
    dns4 = [str(d) for d in net.dns if d.version == 4]
    if dns4:
        argv.append("--dhcp-option=option:dns-server," + ",".join(dns4))
    else:
        argv.append("--dhcp-option=option:dns-server")
    # RFC 3442: with option 121 the client ignores the router option, so the default
    # route goes in it too when there is a gateway.
    routes = [f"{METADATA_IP}/32,{node_ip}"]
    if net.gateway is not None:
        routes.append(f"0.0.0.0/0,{net.gateway}")
    # Forced: minimal clients (busybox udhcpc) do not ask for it, but apply it.
    argv.append("--dhcp-option-force=option:classless-static-route," + ",".join(routes))
    return argv


# -- the nftables guard ------------------------------------------------------------------


def guard_ruleset(uplinks: Iterable[str], table: str = GUARD_TABLE) -> str:
    """An ``nft -f`` script (re)making the bridge-family guard table, atomically.

    Between a guest tap (``mt*``) and any port that is not one (the uplink to other
    blades), drop DHCP (UDP 67/68) and anything to or from 169.254.169.254. Towards the
    node itself, frames that come in on ``uplinks`` (the non-tap ports of the bridges
    meshd manages; this kernel's nftables can't match the bridge by name, and other
    bridges, a libvirt or docker one, must keep their own DHCP) may not ask this node's
    DHCP server (UDP 67) or reach its metadata address (ARP included), and the node
    sends no DHCP answer (from port 67) and nothing from 169.254.169.254 out of them:
    another blade's guests get neither. The node's own DHCP client (port 68) is
    untouched.
    """
    ports = sorted(set(uplinks) - {""})
    lines = [f"table bridge {table}", f"delete table bridge {table}"]
    tap = f'"{TAP_PREFIX}*"'
    brs = "{ " + ", ".join(f'"{b}"' for b in ports) + " }"
    md = str(METADATA_IP)
    lines += [
        f"table bridge {table} {{",
        "  chain forward {",
        "    type filter hook forward priority 0; policy accept;",
        f"    iifname {tap} oifname != {tap} jump cross",
        f"    iifname != {tap} oifname {tap} jump cross",
        "  }",
        "  chain input {",
        "    type filter hook input priority 0; policy accept;",
        *(f"    iifname {brs} jump from_uplink" for _ in ports[:1]),
        "  }",
        "  chain output {",
        "    type filter hook output priority 0; policy accept;",
        *(f"    oifname {brs} jump to_uplink" for _ in ports[:1]),
        "  }",
        "  chain from_uplink {",
        "    udp dport 67 drop",
        f"    ip daddr {md} drop",
        f"    arp daddr ip {md} drop",
        "  }",
        "  chain to_uplink {",
        "    udp sport 67 drop",
        f"    ip saddr {md} drop",
        f"    arp saddr ip {md} drop",
        "  }",
        "  chain cross {",
        "    udp dport { 67, 68 } drop",
        f"    ip saddr {md} drop",
        f"    ip daddr {md} drop",
        f"    arp saddr ip {md} drop",
        f"    arp daddr ip {md} drop",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


# -- what the kernel says about a bridge ------------------------------------------------


def macs_of_ip(proc_net_arp: str, ip: Address, bridge: str) -> set[str]:
    """The MACs ``/proc/net/arp`` has for ``ip`` on ``bridge``, complete entries only
    (usually one; two would mean someone claims another's address: refused)."""
    out = set()
    for line in proc_net_arp.splitlines()[1:]:
        f = line.split()
        # IP address, HW type, Flags, HW address, Mask, Device
        if len(f) < 6 or f[0] != str(ip) or f[5] != bridge:
            continue
        try:
            complete = int(f[2], 16) & 0x2
        except ValueError:
            continue
        mac = f[3].lower()
        if complete and _MAC.match(mac) and mac != "00:00:00:00:00:00":
            out.add(mac)
    return out


FDB_ENTRY = 16  # struct __fdb_entry (linux/if_bridge.h), what sysfs brforward holds


def ports_of_mac(brforward: bytes, mac: str, port_names: Mapping[int, str]) -> set[str]:
    """The ports a bridge learnt ``mac`` on, from its sysfs ``brforward`` table (entries
    of 16 bytes: MAC, port number low byte, is-local, ageing timer, port high byte) and
    ``port_names`` (port number -> interface). The bridge's own addresses are skipped."""
    out = set()
    for off in range(0, len(brforward) - FDB_ENTRY + 1, FDB_ENTRY):
        e = brforward[off : off + FDB_ENTRY]
        if ":".join(f"{b:02x}" for b in e[:6]) != mac or e[7]:
            continue
        port = e[6] | (e[12] << 8)
        out.add(port_names.get(port, f"port{port}"))
    return out


# -- cloud-init ---------------------------------------------------------------------------


def network_config(nics: Iterable[GuestNic], networks: Mapping[str, Network]) -> str:
    """NoCloud ``network-config`` version 2: each NIC matched by MAC, static address,
    gateway and DNS from its network. JSON, which YAML readers (cloud-init) accept."""
    ethernets: dict[str, Any] = {}
    for nic in nics:
        net = networks[nic.network]
        eth: dict[str, Any] = {
            "match": {"macaddress": nic.mac},
            "set-name": f"eth{nic.index}",
            "addresses": [f"{nic.ip}/{net.subnet.prefixlen}"],
        }
        if net.gateway is not None:
            eth["routes"] = [{"to": "default", "via": str(net.gateway)}]
        if net.dns:
            eth["nameservers"] = {"addresses": [str(d) for d in net.dns]}
        ethernets[f"eth{nic.index}"] = eth
    return json.dumps({"version": 2, "ethernets": ethernets}, indent=2) + "\n"


# -- metadata ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuestFacts:
    """What the metadata server tells one guest about itself."""

    instance_id: str  # the workload id
    name: str  # the workload's mesh name
    node: str  # the node that runs it
    domain: str  # the mesh's domain
    hostname: str
    local_ip: Address
    mac: str
    user_data: str | None
    public_keys: tuple[str, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain"


NOT_FOUND = Answer(404, b"not found\n")
Signer = Callable[[bytes], bytes]


def identity_document(f: GuestFacts, pending_time: float) -> bytes:
    doc = {
        "instanceId": f.instance_id,
        "instanceType": "meshd",
        "privateIp": str(f.local_ip),
        "region": f.domain,
        "availabilityZone": f.node,
        "accountId": f.domain,
        "architecture": "x86_64",
        "meshName": f.name,
        "pendingTime": pending_time,
    }
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def _ec2_meta(f: GuestFacts) -> dict[str, str]:
    return {
        "ami-id": "meshd",
        "hostname": f.hostname,
        "instance-id": f.instance_id,
        "instance-type": "meshd",
        "local-hostname": f.hostname,
        "local-ipv4": str(f.local_ip),
        "mac": f.mac,
        "mesh-name": f.name,
        "placement/availability-zone": f.node,
    }


def answer(path: str, f: GuestFacts, sign: Signer, pending_time: float = 0.0) -> Answer:
    """The metadata server's answer to ``GET path`` from the guest ``f`` (identified by
    the caller: this function never chooses whose data to give)."""
    path = "/" + path.strip("/")
    meta = _ec2_meta(f)
    for prefix in ("/latest", "/2009-04-04"):
        if path == prefix:
            return Answer(200, b"dynamic\nmeta-data\nuser-data\n")
        if path == prefix + "/meta-data":
            keys = sorted({k.split("/")[0] + ("/" if "/" in k else "") for k in meta})
            if f.public_keys:
                keys.append("public-keys/")
            return Answer(200, "\n".join(keys).encode() + b"\n")
        if path.startswith(prefix + "/meta-data/"):
            return _ec2_path(path[len(prefix + "/meta-data/") :], meta, f)
        if path == prefix + "/user-data":
            return _user_data(f)
        if path == prefix + "/dynamic":
            return Answer(200, b"instance-identity/\n")
        if path == prefix + "/dynamic/instance-identity":
            return Answer(200, b"document\nsignature\n")
        if path == prefix + "/dynamic/instance-identity/document":
            return Answer(200, identity_document(f, pending_time), "application/json")
        if path == prefix + "/dynamic/instance-identity/signature":
            sig = sign(identity_document(f, pending_time))
            return Answer(200, base64.b64encode(sig) + b"\n")
    if path in ("/openstack", "/openstack/latest"):
        return Answer(
            200, b"meta_data.json\nuser_data\n" if path.endswith("latest") else b"latest\n"
        )
    if path == "/openstack/latest/meta_data.json":
        doc = {
            "uuid": f.instance_id,
            "name": f.name,
            "hostname": f.hostname,
            "availability_zone": f.node,
            "project_id": f.domain,
            "public_keys": {f"key-{i}": k for i, k in enumerate(f.public_keys)},
            "meta": {"mesh-name": f.name, "node": f.node, **f.extra},
        }
        return Answer(200, json.dumps(doc, indent=2).encode(), "application/json")
    if path == "/openstack/latest/user_data":
        return _user_data(f)
    return NOT_FOUND


def _ec2_path(rest: str, meta: Mapping[str, str], f: GuestFacts) -> Answer:
    if rest in meta:
        return Answer(200, meta[rest].encode())
    if rest == "placement":
        return Answer(200, b"availability-zone\n")
    if rest == "public-keys" and f.public_keys:
        return Answer(200, "".join(f"{i}=key-{i}\n" for i in range(len(f.public_keys))).encode())
    m = re.fullmatch(r"public-keys/(\d+)(?:/(openssh-key)?)?", rest)
    if m and int(m.group(1)) < len(f.public_keys):
        key = f.public_keys[int(m.group(1))]
        if m.group(2):
            return Answer(200, key.encode() + b"\n")
        return Answer(200, b"openssh-key\n")
    return NOT_FOUND


def _user_data(f: GuestFacts) -> Answer:
    if f.user_data is None:
        return NOT_FOUND
    return Answer(200, f.user_data.encode(), "application/octet-stream")


def public_keys_of(user_data: str | None) -> tuple[str, ...]:
    """``ssh_authorized_keys`` from a ``#cloud-config`` user-data's top level, read line
    by line (no YAML parser in the daemon): what the EC2 ``public-keys`` paths serve."""
    if not user_data or not user_data.startswith("#cloud-config"):
        return ()
    keys: list[str] = []
    inside = False
    for line in user_data.splitlines():
        if re.match(r"^ssh_authorized_keys\s*:\s*$", line):
            inside = True
            continue
        if inside:
            m = re.match(r"^\s+-\s+['\"]?(ssh-[^'\"]+|ecdsa-[^'\"]+)['\"]?\s*$", line)
            if m:
                keys.append(m.group(1).strip())
            elif line.strip() and not line.startswith((" ", "\t")):
                inside = False
    return tuple(keys)
