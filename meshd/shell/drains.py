"""The drain records on a real node: durable, gossiped, repaired by anti-entropy.

The rule of what wins is the pure :mod:`meshd.core.drain`; this shell carries the
records. A record the operator's command makes here is signed with this node's key,
**written (fsynced) before it is announced**, then gossiped (``MeshPort.broadcast``,
keyed by the member, so a newer record replaces one still queued). A record from a
peer is kept only if its signature verifies against a member's certificate *and* the
signer is the record's ``by``: a relay can't forge or alter one, only repeat it, and a
repeated old record loses the merge.

Gossip is best effort, so every ``auction.sync_interval_s`` (jittered) the node pushes
all its records to one random live member over mTLS (``POST /v1/mesh/drains``); the
member keeps what is newer and answers with what *it* holds newer (push-pull). A node
that was down, or missed the gossip, so learns every drain within a few intervals of
some holder choosing it. Only holders push: a mesh that never drained sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from meshd.adapters.store import drain_records
from meshd.core import drain
from meshd.core.drain import DRAIN_KIND, DrainRecord, DrainTable
from meshd.errors import EnvelopeError, MeshdError, StoreError
from meshd.shell.context import NodeContext
from meshd.shell.ports import MeshPort

logger = logging.getLogger(__name__)
DRAINS_PATH = "/v1/mesh/drains"
DRAIN_BROADCAST = "drain"
PUSH, REPLY = b"P", b"R"  # a push wants the newer records back; a reply does not


class Drains:
    def __init__(
        self, ctx: NodeContext, mesh: MeshPort, on_change: Callable[[DrainRecord], None]
    ) -> None:
        self.ctx, self.mesh, self._on_change = ctx, mesh, on_change
        self.table = DrainTable()
        for record, signed in drain_records.load(ctx.store):
            self.table.merge(record, signed)  # verified when it was stored
        self._tasks: set[asyncio.Task[Any]] = set()
        self.dropped = ctx.metrics.counter(
            "meshd_drain_records_dropped_total", "Drain records refused, by reason"
        )

    def start(self) -> None:
        self.mesh.on_broadcast(DRAIN_BROADCAST, self._on_gossip)
        self._spawn(self._anti_entropy())

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what the node asks ---------------------------------------------------------

    def draining(self, node: str) -> bool:
        return self.table.draining(node)

    def drained(self) -> frozenset[str]:
        return self.table.drained()

    def set(self, node: str, draining: bool) -> DrainRecord:
        """The operator's command, accepted here: a new record, durable, then gossiped.
        A StoreError (the disk can't write) reaches the caller: nothing was announced."""
        now = self.ctx.clock()
        version = self.table.next_version(node, int(now * 1000))
        record = DrainRecord(node, draining, version, self.ctx.ident.name)
        signed = self.mesh.sign_record(DRAIN_KIND, drain.encode(record))
        self._keep(record, signed)
        try:
            self.mesh.broadcast(DRAIN_BROADCAST, signed, key=node)
        except ValueError:
            logger.warning("drain record too large to gossip; anti-entropy will carry it")
        return record

    # -- receiving ------------------------------------------------------------------

    def _on_gossip(self, payload: bytes, origin: str) -> None:
        self.receive(payload, origin)

    def receive(self, signed: bytes, via: str) -> DrainRecord | None:
        """A signed record from a peer: kept if it verifies and is newer; the record
        (kept or not), or None if it was refused."""
        opened = self.mesh.open_record(DRAIN_KIND, signed)
        if opened is None:
            self.dropped.inc(reason="signature")
            return None
        body, author = opened
        try:
            record = drain.decode(body)
        except EnvelopeError as exc:
            self.dropped.inc(reason="invalid")
            logger.info("dropped a drain record from=%s via=%s: %s", author, via, exc)
            return None
        if record.by != author:
            self.dropped.inc(reason="author")
            logger.info(
                "dropped a drain record signed by %s claiming to be by %s (via %s)",
                author,
                record.by,
                via,
            )
            return None
        if record.newer_than(self.table.get(record.node)):
            try:
                self._keep(record, signed)
            except StoreError as exc:  # as if lost: anti-entropy brings it again
                self.dropped.inc(reason="store")
                logger.warning("could not store a drain record of %s: %s", record.node, exc)
        return record

    def _keep(self, record: DrainRecord, signed: bytes) -> None:
        """Store, then hold and act on, a record newer than the one held."""
        now = self.ctx.clock()
        with self.ctx.store.transaction(durable=True):
            drain_records.save(self.ctx.store, record, signed)
            self.ctx.store.append_event(
                now,
                "node.drained" if record.draining else "node.undrained",
                record.node,
                {"by": record.by, "version": record.version},
            )
        if self.table.merge(record, signed):
            logger.info(
                "node %s name=%s by=%s version=%d",
                "drained" if record.draining else "undrained",
                record.node,
                record.by,
                record.version,
            )
            self._on_change(record)

    # -- anti-entropy ---------------------------------------------------------------

    async def _anti_entropy(self) -> None:
        # Only a node that holds records pushes (the answer brings the pusher what is
        # newer elsewhere): a mesh that never drained anything sends nothing for it.
        rng: random.Random | None = None  # peer choice and jitter, made at first use
        interval = min(self.ctx.cfg.auction.sync_interval_s, 2.0)  # a restart catches up soon
        while True:
            jitter = 1.0 if rng is None else rng.uniform(0.8, 1.2)
            await asyncio.sleep(interval * jitter)
            interval = self.ctx.cfg.auction.sync_interval_s
            signed = self.table.signed()
            if not signed:
                continue
            rng = rng or self.ctx.new_random()
            peer = self.mesh.random_peer(rng)
            if peer is not None:
                body = PUSH + drain.encode_bundle(signed)
                with contextlib.suppress(MeshdError, OSError):  # best effort; next round
                    await self.mesh.post_to(peer, DRAINS_PATH, body)

    def receive_bundle(self, body: bytes, sender: str) -> None:
        """A peer's push (answered with what is newer here) or its reply."""
        head, rest = body[:1], body[1:]
        if head not in (PUSH, REPLY):
            self.dropped.inc(reason="invalid")
            return
        try:
            blobs = drain.decode_bundle(rest)
        except EnvelopeError as exc:
            self.dropped.inc(reason="invalid")
            logger.info("dropped a drain bundle from=%s: %s", sender, exc)
            return
        theirs: dict[str, DrainRecord] = {}
        for blob in blobs:
            record = self.receive(blob, sender)
            if record is not None and record.newer_than(theirs.get(record.node)):
                theirs[record.node] = record
        if head != PUSH:
            return
        newer = [
            signed
            for record, signed in zip(self.table.records(), self.table.signed(), strict=True)
            if record.newer_than(theirs.get(record.node))
        ]
        if newer:
            self._spawn(self.mesh.post_to(sender, DRAINS_PATH, REPLY + drain.encode_bundle(newer)))
