"""Service names: ``@service@node@domain`` and how they resolve (DESIGN.md §9).

Three forms:

* ``@blog@alpha@lab.example`` — the ``blog`` service on node ``alpha``;
* ``@blog@*@lab.example`` — one healthy instance, the closest: this node's own if it
  has one, else one chosen at random among live nodes (spreads load);
* ``@blog@lab.example`` — every live instance.

A service instance is a signed, expiring, multi-writer DHT record under
``svc/<domain>/<service>``: each node publishes its own, and its author refreshes it
before it expires. Resolution filters instances by membership: a node that is not
alive (or suspect: it may still be fine) does not resolve, so a dead node's names stop
resolving as soon as it is declared dead rather than when its record expires.

Pure: no IO; the caller passes the instances, the live set and a seeded random.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass

from meshd.errors import NamingError

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
PROTOS = ("tcp", "udp")


def check_service(name: str) -> str:
    if not _LABEL.match(name):
        raise NamingError(
            f"invalid service name {name!r}: use 1-63 lowercase letters, digits and '-'"
        )
    return name


@dataclass(frozen=True)
class NameQuery:
    service: str
    domain: str
    node: str | None  # a node name; None with any=False means "all"
    any: bool = False

    @property
    def key(self) -> str:
        return record_key(self.domain, self.service)


def parse(text: str) -> NameQuery:
    """Parse one of the three forms, or raise NamingError saying what is expected."""
    parts = text.strip().split("@")
    if len(parts) not in (3, 4) or parts[0] != "" or not all(parts[1:]):
        raise NamingError(
            f"can't read name {text!r}: use @service@node@domain, @service@*@domain "
            "or @service@domain"
        )
    service = check_service(parts[1])
    domain = parts[-1]
    if len(parts) == 3:
        return NameQuery(service, domain, None)
    node = parts[2]
    if node == "*":
        return NameQuery(service, domain, None, any=True)
    if not _LABEL.match(node):
        raise NamingError(f"invalid node name {node!r} in {text!r}")
    return NameQuery(service, domain, node)


def record_key(domain: str, service: str) -> str:
    return f"svc/{domain}/{service}"


@dataclass(frozen=True)
class Instance:
    service: str
    node: str
    address: str
    port: int
    proto: str

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Instance:
        try:
            raw = json.loads(data)
            inst = cls(
                service=str(raw["service"]),
                node=str(raw["node"]),
                address=str(raw["address"]),
                port=int(raw["port"]),
                proto=str(raw["proto"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise NamingError("malformed service record") from exc
        if not 1 <= inst.port <= 65535 or inst.proto not in PROTOS:
            raise NamingError("service record has a bad port or protocol")
        return inst


def select(
    query: NameQuery,
    instances: list[Instance],
    live: set[str],
    self_name: str,
    rng: random.Random,
) -> list[Instance]:
    """The instances ``query`` names, among live nodes, in a stable order."""
    found = sorted(
        (i for i in instances if i.service == query.service and i.node in live),
        key=lambda i: (i.node, i.port),
    )
    if query.node is not None:
        return [i for i in found if i.node == query.node]
    if query.any and found:
        own = [i for i in found if i.node == self_name]
        return own[:1] if own else [rng.choice(found)]
    return found
