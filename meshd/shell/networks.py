"""The mesh's networks on a real node: the operator's create/rm, replicated.

What a network is and which record wins is the pure :mod:`meshd.core.network`; the
records travel as every signed last-writer-wins record does (:mod:`meshd.shell.replica`:
fsynced before announced, gossip plus push-pull over ``POST /v1/mesh/networks``).

``create`` checks the name and subnet against *this node's* view: a network whose
subnet overlaps a live one is refused with a sentence. ``rm`` writes a tombstone. The
check that no NIC still uses the network comes with NICs (issue 13, item 2): today no
workload can hold an address, so a network is always unused.
"""

from __future__ import annotations

from typing import Any

from meshd.adapters.store import network_records
from meshd.core import network
from meshd.core.network import NETWORK_KIND, Network, NetworkTable
from meshd.errors import NotFoundError
from meshd.shell.context import NodeContext
from meshd.shell.ports import MeshPort
from meshd.shell.replica import Kind, Replica

NETWORKS_PATH = "/v1/mesh/networks"


def _event(r: Network) -> tuple[str, str, dict[str, Any]]:
    data: dict[str, Any] = {"by": r.by, "version": r.version}
    if not r.removed:
        data["subnet"] = str(r.subnet)
    return ("network.removed" if r.removed else "network.created", r.name, data)


def _key(r: Network) -> str:
    return r.name


KIND: Kind[Network] = Kind(
    name=NETWORK_KIND,
    path=NETWORKS_PATH,
    encode=network.encode,
    decode=network.decode,
    key=_key,
    newer=Network.newer_than,
    save=network_records.save,
    event=_event,
)


def _ignore(_: Network) -> None:
    return None


class Networks:
    def __init__(self, ctx: NodeContext, mesh: MeshPort) -> None:
        self.ctx = ctx
        self.table = NetworkTable()
        for record, signed in network_records.load(ctx.store):
            self.table.merge(record, signed)  # verified when it was stored
        self.replica = Replica(ctx, mesh, KIND, self.table, _ignore)
        self.receive = self.replica.receive
        self.receive_bundle = self.replica.receive_bundle

    def start(self) -> None:
        self.replica.start()

    def stop(self) -> None:
        self.replica.stop()

    def _version(self, name: str) -> int:
        return self.table.next_version(name, int(self.ctx.clock() * 1000))

    def create(
        self,
        name: str,
        subnet: str,
        *,
        gateway: str | None = None,
        bridge: str | None = None,
        vlan: int | None = None,
        dns: list[str] | tuple[str, ...] = (),
    ) -> Network:
        """The operator's ``network create``, accepted here: checked (NetworkError says
        what to change), durable, then gossiped."""
        network.check_name(name)
        record = network.define(
            name,
            subnet,
            gateway=gateway,
            bridge=bridge,
            vlan=vlan,
            dns=dns,
            version=self._version(name),
            by=self.ctx.ident.name,
        )
        self.table.check_create(record)
        self.replica.publish(record)
        return record

    def remove(self, name: str) -> Network:
        """The operator's ``network rm``: a tombstone, durable, then gossiped."""
        held = self.table.live(network.check_name(name))
        if held is None:
            raise NotFoundError(f"no network named {name}: `meshd network ls` lists them")
        tomb = Network(
            held.name,
            held.subnet,
            held.gateway,
            held.bridge,
            held.vlan,
            held.dns,
            True,
            self._version(name),
            self.ctx.ident.name,
        )
        self.replica.publish(tomb)
        return tomb

    def get(self, name: str) -> Network:
        held = self.table.live(name)
        if held is None:
            raise NotFoundError(f"no network named {name}: `meshd network ls` lists them")
        return held

    def networks(self) -> list[Network]:
        return self.table.networks()
