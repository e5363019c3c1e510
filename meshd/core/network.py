"""Networks as mesh-wide objects (DESIGN §8a; issue 13, item 1).

Theory of operation
-------------------
``meshd network create NAME --subnet CIDR ...`` defines a network every node knows: a
subnet (IPv4 or IPv6), an optional gateway, the bridge name the nodes attach it to, an
optional VLAN and DNS servers. Each network is one :class:`Network` record, made and
signed by the node that accepted the operator's command, stored on every node and spread
by gossip plus push-pull anti-entropy (``meshd.shell.networks``), exactly as the
maintenance drains are (:mod:`meshd.core.drain`).

**Conflicts resolve last writer wins** over ``(version, by, removed)``, with the hybrid
clock of the drains: the accepting node's wall clock in milliseconds, always above the
version it already knows for that name. ``meshd network rm`` writes a *tombstone* (the
record with ``removed`` set), so a removal spreads and beats the older definition; a
later ``create`` of the same name gets a newer version and beats the tombstone. At equal
versions the signer's name orders them, then a tombstone beats a definition, then the
encoded body: a tie never leaves two nodes disagreeing. The merge is commutative,
associative and idempotent (tests/unit/test_network_core.py checks it with hypothesis).

Overlapping subnets are refused when the accepting node creates a network, against its
own view: two nodes that had not heard of each other can still accept overlapping
networks concurrently (the merge keeps both, as they have different names); the
address allocator that comes with NICs will have to treat that case.

Every field is checked on creation *and* on every record received, so a record that no
operator could have made is dropped, never stored. Pure: no clock, no IO.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import orjson

from meshd.errors import EnvelopeError, NetworkConflictError, NetworkError

NETWORK_KIND = "network"  # the signed record's kind
MAX_NAME = 255  # bytes of a node name (the signer)
MAX_VERSION = 2**63 - 1
MAX_DNS = 8  # resolvers per network: more than resolv.conf uses (3)
MAX_BRIDGE = 15  # bytes of a Linux interface name (IFNAMSIZ - 1)
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_BRIDGE_BAD = re.compile(r"[\s/:]")  # the kernel refuses '/' and whitespace; ':' is alias syntax
# The smallest subnet that still holds guest addresses besides network and broadcast
# (IPv4 /30: two hosts) and its IPv6 counterpart.
MAX_PREFIX = {4: 30, 6: 126}

Subnet = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Network:
    """Network ``name`` as ``by`` defined (or, ``removed``, deleted) it at ``version``."""

    name: str
    subnet: Subnet
    gateway: Address | None
    bridge: str
    vlan: int | None
    dns: tuple[Address, ...]
    removed: bool
    version: int  # milliseconds, bumped past the last known (see the module docstring)
    by: str  # the node that accepted the command and signed this record

    def order(self) -> tuple[int, str, bool, bytes]:
        # The body last: one signer never makes two records of one name at one version
        # (it bumps past what it knows), but a total order keeps the merge a lattice
        # even if a buggy or replayed peer did.
        return (self.version, self.by, self.removed, encode(self))

    def newer_than(self, other: Network | None) -> bool:
        return other is None or self.order() > other.order()

    def to_json(self) -> dict[str, Any]:
        """The record as the API and ``--json`` show it (INTERFACE.md, "Networks")."""
        return {
            "name": self.name,
            "subnet": str(self.subnet),
            "gateway": None if self.gateway is None else str(self.gateway),
            "bridge": self.bridge,
            "vlan": self.vlan,
            "dns": [str(d) for d in self.dns],
            "created_by": self.by,
            "version": self.version,
        }


# -- validation: each check says what to change -------------------------------------


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise NetworkError(
            f"invalid network name {name!r:.80}: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


V4_COMPATIBLE = ipaddress.ip_network("::/96")


def check_subnet(cidr: object) -> Subnet:
    if not isinstance(cidr, str):
        raise NetworkError(f"a subnet must be written as CIDR text, got {cidr!r:.80}")
    if "/" not in cidr:
        raise NetworkError(
            f"subnet {cidr!r:.80} has no prefix length: write it as CIDR, e.g. 10.40.0.0/24"
        )
    try:
        subnet = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise NetworkError(
            f"invalid subnet {cidr!r:.80}: write it as CIDR, e.g. 10.40.0.0/24 or fd00:40::/64"
        ) from exc
    if subnet.network_address != ipaddress.ip_address(cidr.split("/")[0]):
        raise NetworkError(f"subnet {cidr!r:.80} has host bits set: did you mean {subnet}?")
    limit = MAX_PREFIX[subnet.version]
    if subnet.prefixlen > limit:
        raise NetworkError(
            f"subnet {subnet} is too small to hold guest addresses: "
            f"use a prefix of /{limit} or shorter"
        )
    return subnet


def _address(text: object, what: str) -> Address:
    if not isinstance(text, str):
        raise NetworkError(f"{what} must be an IP address, got {text!r:.80}")
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise NetworkError(f"{what} {text!r:.80} is not an IP address") from exc


def check_gateway(text: object, subnet: Subnet) -> Address:
    gw = _address(text, "the gateway")
    if gw.version != subnet.version or gw not in subnet:
        raise NetworkError(f"gateway {gw} is outside subnet {subnet}: pick an address inside it")
    if gw == subnet.network_address:
        raise NetworkError(
            f"gateway {gw} is subnet {subnet}'s network address: pick a host address"
        )
    if subnet.version == 4 and gw == subnet.broadcast_address:
        raise NetworkError(
            f"gateway {gw} is subnet {subnet}'s broadcast address: pick a host address"
        )
    return gw


def check_bridge(bridge: object) -> str:
    if (
        not isinstance(bridge, str)
        or not bridge
        or len(bridge.encode()) > MAX_BRIDGE
        or _BRIDGE_BAD.search(bridge)
        or bridge in (".", "..")
        or not bridge.isprintable()
    ):
        raise NetworkError(
            f"invalid bridge name {bridge!r:.80}: a Linux interface name is 1-{MAX_BRIDGE} "
            "characters with no '/', ':' or whitespace"
        )
    return bridge


def check_vlan(vlan: object) -> int:
    if isinstance(vlan, bool) or not isinstance(vlan, int) or not 1 <= vlan <= 4094:
        raise NetworkError(f"VLAN {vlan!r:.80} is out of range: use an id from 1 to 4094")
    return vlan


def check_dns(servers: object) -> tuple[Address, ...]:
    if not isinstance(servers, list | tuple):
        raise NetworkError("dns must be a list of IP addresses")
    if len(servers) > MAX_DNS:
        raise NetworkError(f"at most {MAX_DNS} DNS servers per network, got {len(servers)}")
    return tuple(_address(s, "DNS server") for s in servers)


def default_bridge(name: str) -> str:
    """The bridge a network attaches to when the operator names none."""
    return ("br-" + name)[:MAX_BRIDGE]


def define(
    name: str,
    subnet: str,
    *,
    gateway: str | None = None,
    bridge: str | None = None,
    vlan: int | None = None,
    dns: list[str] | tuple[str, ...] = (),
    version: int,
    by: str,
) -> Network:
    """A new definition from the operator's words; a :class:`NetworkError` says what to fix."""
    net = check_subnet(subnet)
    if net.version == 6 and net.overlaps(V4_COMPATIBLE):
        # Their numbers are IPv4 addresses' numbers: the allocator keys by number.
        # (Checked where an operator defines one, not on records already held.)
        raise NetworkError(
            f"subnet {net} overlaps ::/96 (IPv4-compatible addresses, deprecated): "
            "pick a unique local prefix, e.g. fd00:40::/64"
        )
    return Network(
        name=check_name(name),
        subnet=net,
        gateway=None if gateway is None else check_gateway(gateway, net),
        bridge=default_bridge(name) if bridge is None else check_bridge(bridge),
        vlan=None if vlan is None else check_vlan(vlan),
        dns=check_dns(list(dns)),
        removed=False,
        version=version,
        by=by,
    )


# -- the signed record's body -------------------------------------------------------


def encode(n: Network) -> bytes:
    return orjson.dumps(
        {
            "n": n.name,
            "s": str(n.subnet),
            "g": None if n.gateway is None else str(n.gateway),
            "br": n.bridge,
            "vl": n.vlan,
            "d": [str(d) for d in n.dns],
            "r": n.removed,
            "v": n.version,
            "b": n.by,
        }
    )


_KEYS = {"n", "s", "g", "br", "vl", "d", "r", "v", "b"}


def decode(body: bytes) -> Network:
    """A record from its body; anything else raises :class:`EnvelopeError` saying why."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"a network record must be JSON: {exc}") from exc
    if not isinstance(doc, dict) or set(doc) != _KEYS:
        raise EnvelopeError("a network record has exactly the keys " + ", ".join(sorted(_KEYS)))
    version, by, removed = doc["v"], doc["b"], doc["r"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise EnvelopeError("a network record's version must be an integer")
    if not 0 <= version <= MAX_VERSION:
        raise EnvelopeError("a network record's version is out of range")
    if not isinstance(removed, bool):
        raise EnvelopeError("a network record's removed flag must be true or false")
    if not isinstance(by, str) or not by or len(by.encode()) > MAX_NAME:
        raise EnvelopeError(f"a node name must be 1..{MAX_NAME} bytes of text")
    try:
        net = check_subnet(doc["s"])
        return Network(
            name=check_name(doc["n"]),
            subnet=net,
            gateway=None if doc["g"] is None else check_gateway(doc["g"], net),
            bridge=check_bridge(doc["br"]),
            vlan=None if doc["vl"] is None else check_vlan(doc["vl"]),
            dns=check_dns(doc["d"]),
            removed=removed,
            version=version,
            by=by,
        )
    except NetworkError as exc:
        raise EnvelopeError(f"a network record is invalid: {exc}") from exc


# -- the table every node holds -----------------------------------------------------


class NetworkTable:
    """The newest record known per network name, with its signed form (relayed as is)."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[Network, bytes]] = {}

    def merge(self, record: Network, signed: bytes) -> bool:
        """Keep ``record`` if it is newer than the one held; whether it was."""
        held = self._records.get(record.name)
        if not record.newer_than(None if held is None else held[0]):
            return False
        self._records[record.name] = (record, signed)
        return True

    def get(self, name: str) -> Network | None:
        held = self._records.get(name)
        return None if held is None else held[0]

    def live(self, name: str) -> Network | None:
        n = self.get(name)
        return None if n is None or n.removed else n

    def networks(self) -> list[Network]:
        """The live networks, by name."""
        return sorted((r for r, _ in self._records.values() if not r.removed), key=_by_name)

    def records(self) -> list[Network]:
        return [r for r, _ in self._records.values()]

    def signed(self) -> list[bytes]:
        return [s for _, s in self._records.values()]

    def next_version(self, name: str, now_ms: int) -> int:
        """The version of a new record about ``name``: now, but past what is known."""
        held = self.get(name)
        return now_ms if held is None else max(now_ms, held.version + 1)

    def check_create(self, new: Network) -> None:
        """Refuse ``new`` if its name is taken or its subnet overlaps a live network's
        (in this node's view), with a sentence saying what to do."""
        if self.live(new.name) is not None:
            raise NetworkConflictError(
                f"network {new.name} already exists: `meshd network rm {new.name}` first, "
                "or pick another name"
            )
        for other in self.networks():
            if other.subnet.version == new.subnet.version and other.subnet.overlaps(new.subnet):
                raise NetworkConflictError(
                    f"subnet {new.subnet} overlaps network {other.name} ({other.subnet}): "
                    "pick a subnet that does not overlap, or remove that network first"
                )


def _by_name(n: Network) -> str:
    return n.name
