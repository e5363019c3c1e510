"""The drain records on a real node: durable, gossiped, repaired by anti-entropy.

The rule of what wins is the pure :mod:`meshd.core.drain`; the carrier (signed,
fsynced before announced, gossip plus push-pull over ``POST /v1/mesh/drains``) is
:mod:`meshd.shell.replica`, shared with the networks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshd.adapters.store import drain_records
from meshd.core import drain
from meshd.core.drain import DRAIN_KIND, DrainRecord, DrainTable
from meshd.shell.context import NodeContext
from meshd.shell.ports import MeshPort
from meshd.shell.replica import Kind, Replica

DRAINS_PATH = "/v1/mesh/drains"
DRAIN_BROADCAST = DRAIN_KIND


def _event(r: DrainRecord) -> tuple[str, str, dict[str, Any]]:
    return (
        "node.drained" if r.draining else "node.undrained",
        r.node,
        {"by": r.by, "version": r.version},
    )


def _key(r: DrainRecord) -> str:
    return r.node


KIND: Kind[DrainRecord] = Kind(
    name=DRAIN_KIND,
    path=DRAINS_PATH,
    encode=drain.encode,
    decode=drain.decode,
    key=_key,
    newer=DrainRecord.newer_than,
    save=drain_records.save,
    event=_event,
)


class Drains:
    def __init__(
        self, ctx: NodeContext, mesh: MeshPort, on_change: Callable[[DrainRecord], None]
    ) -> None:
        self.ctx = ctx
        self.table = DrainTable()
        for record, signed in drain_records.load(ctx.store):
            self.table.merge(record, signed)  # verified when it was stored
        self.replica = Replica(ctx, mesh, KIND, self.table, on_change)
        self.dropped = self.replica.dropped
        self.receive = self.replica.receive
        self.receive_bundle = self.replica.receive_bundle

    def start(self) -> None:
        self.replica.start()

    def stop(self) -> None:
        self.replica.stop()

    def draining(self, node: str) -> bool:
        return self.table.draining(node)

    def drained(self) -> frozenset[str]:
        return self.table.drained()

    def set(self, node: str, draining: bool) -> DrainRecord:
        """The operator's command, accepted here: a new record, durable, then gossiped.
        A StoreError (the disk can't write) reaches the caller: nothing was announced."""
        version = self.table.next_version(node, int(self.ctx.clock() * 1000))
        record = DrainRecord(node, draining, version, self.ctx.ident.name)
        self.replica.publish(record)
        return record
