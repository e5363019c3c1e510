"""Signed last-writer-wins records on a real node: durable, gossiped, repaired by
anti-entropy. One carrier for every kind (maintenance drains, networks).

The rule of what wins belongs to the kind's pure table (:mod:`meshd.core.drain`,
:mod:`meshd.core.network`); this shell carries the records. A record the operator's
command makes here is signed with this node's key, **written (fsynced) before it is
announced**, then gossiped (``MeshPort.broadcast``, keyed by the record's key, so a
newer record replaces one still queued). A record from a peer is kept only if its
signature verifies against a member's certificate *and* the signer is the record's
``by``: a relay can't forge or alter one, only repeat it, and a repeated old record
loses the merge.

Gossip is best effort, so every ``auction.sync_interval_s`` (jittered) the node pushes
all its records to one random live member over mTLS (``POST`` to the kind's path); the
member keeps what is newer and answers with what *it* holds newer (push-pull). A node
that was down, or missed the gossip, so learns every record within a few intervals of
some holder choosing it. Only holders push: a mesh that never made one sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from meshd.adapters.store.db import Store
from meshd.core import bundle
from meshd.errors import EnvelopeError, MeshdError, StoreError
from meshd.shell.context import NodeContext
from meshd.shell.ports import MeshPort

logger = logging.getLogger(__name__)
PUSH, REPLY = b"P", b"R"  # a push wants the newer records back; a reply does not


class Record(Protocol):
    @property
    def by(self) -> str: ...


R = TypeVar("R", bound=Record)


class Table(Protocol[R]):
    def merge(self, record: R, signed: bytes) -> bool: ...
    def get(self, key: str) -> R | None: ...
    def records(self) -> list[R]: ...
    def signed(self) -> list[bytes]: ...


@dataclass(frozen=True, slots=True)
class Kind(Generic[R]):
    """What differs between two kinds of replicated record."""

    name: str  # the signed record's kind, the gossip kind, the word in logs and metrics
    path: str  # the anti-entropy route (POST, mesh-internal)
    encode: Callable[[R], bytes]
    decode: Callable[[bytes], R]  # raises EnvelopeError on a bad body
    key: Callable[[R], str]  # what a newer record replaces
    newer: Callable[[R, R | None], bool]
    save: Callable[[Store, R, bytes], None]  # keeps the newer, in SQL too
    event: Callable[[R], tuple[str, str, dict[str, Any]]]  # (kind, subject, data) logged


class Replica(Generic[R]):
    def __init__(
        self,
        ctx: NodeContext,
        mesh: MeshPort,
        kind: Kind[R],
        table: Table[R],
        on_change: Callable[[R], None],
    ) -> None:
        self.ctx, self.mesh, self.kind, self.table = ctx, mesh, kind, table
        self._on_change = on_change
        self._tasks: set[asyncio.Task[Any]] = set()
        self.dropped = ctx.metrics.counter(
            f"meshd_{kind.name}_records_dropped_total",
            f"{kind.name.capitalize()} records refused, by reason",
        )

    def start(self) -> None:
        self.mesh.on_broadcast(self.kind.name, self._on_gossip)
        self._spawn(self._anti_entropy())

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def publish(self, record: R) -> None:
        """A record made here: signed, durable, then gossiped. A StoreError (the disk
        can't write) reaches the caller: nothing was announced."""
        signed = self.mesh.sign_record(self.kind.name, self.kind.encode(record))
        self._keep(record, signed)
        try:
            self.mesh.broadcast(self.kind.name, signed, key=self.kind.key(record))
        except ValueError:
            logger.warning("%s record too large to gossip; anti-entropy carries it", self.kind.name)

    # -- receiving ------------------------------------------------------------------

    def _on_gossip(self, payload: bytes, origin: str) -> None:
        self.receive(payload, origin)

    def receive(self, signed: bytes, via: str) -> R | None:
        """A signed record from a peer: kept if it verifies and is newer; the record
        (kept or not), or None if it was refused."""
        opened = self.mesh.open_record(self.kind.name, signed)
        if opened is None:
            self.dropped.inc(reason="signature")
            return None
        body, author = opened
        try:
            record = self.kind.decode(body)
        except EnvelopeError as exc:
            self.dropped.inc(reason="invalid")
            logger.info("dropped a %s record from=%s via=%s: %s", self.kind.name, author, via, exc)
            return None
        if record.by != author:
            self.dropped.inc(reason="author")
            logger.info(
                "dropped a %s record signed by %s claiming to be by %s (via %s)",
                self.kind.name,
                author,
                record.by,
                via,
            )
            return None
        if self.kind.newer(record, self.table.get(self.kind.key(record))):
            try:
                self._keep(record, signed)
            except StoreError as exc:  # as if lost: anti-entropy brings it again
                self.dropped.inc(reason="store")
                logger.warning(
                    "could not store a %s record of %s: %s",
                    self.kind.name,
                    self.kind.key(record),
                    exc,
                )
        return record

    def _keep(self, record: R, signed: bytes) -> None:
        """Store, then hold and act on, a record newer than the one held."""
        now = self.ctx.clock()
        event, subject, data = self.kind.event(record)
        with self.ctx.store.transaction(durable=True):
            self.kind.save(self.ctx.store, record, signed)
            self.ctx.store.append_event(now, event, subject, data)
        if self.table.merge(record, signed):
            fields = " ".join(f"{k}={v}" for k, v in data.items())
            logger.info("%s name=%s %s", event, subject, fields)
            self._on_change(record)

    # -- anti-entropy ---------------------------------------------------------------

    async def _anti_entropy(self) -> None:
        # Only a node that holds records pushes (the answer brings the pusher what is
        # newer elsewhere): a mesh that never made one sends nothing for it.
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
                body = PUSH + bundle.encode_bundle(signed)
                with contextlib.suppress(MeshdError, OSError):  # best effort; next round
                    await self.mesh.post_to(peer, self.kind.path, body)

    def receive_bundle(self, body: bytes, sender: str) -> None:
        """A peer's push (answered with what is newer here) or its reply."""
        head, rest = body[:1], body[1:]
        if head not in (PUSH, REPLY):
            self.dropped.inc(reason="invalid")
            return
        try:
            blobs = bundle.decode_bundle(rest, self.kind.name)
        except EnvelopeError as exc:
            self.dropped.inc(reason="invalid")
            logger.info("dropped a %s bundle from=%s: %s", self.kind.name, sender, exc)
            return
        theirs: dict[str, R] = {}
        for blob in blobs:
            record = self.receive(blob, sender)
            if record is not None:
                key = self.kind.key(record)
                if self.kind.newer(record, theirs.get(key)):
                    theirs[key] = record
        if head != PUSH:
            return
        newer = [
            signed
            for record, signed in zip(self.table.records(), self.table.signed(), strict=True)
            if self.kind.newer(record, theirs.get(self.kind.key(record)))
        ]
        if newer:
            self._spawn(
                self.mesh.post_to(sender, self.kind.path, REPLY + bundle.encode_bundle(newer))
            )
