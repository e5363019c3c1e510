"""Removals reach every member: by gossip at once, and by anti-entropy for the absent.

A revocation (``meshd node remove``) is a record signed by the mesh CA. It spreads by
membership gossip the moment it is made; because gossip is best effort (a member away
while it spread never hears it again), every node also pushes every record it knows to
one random live member each ``membership.revocation_sync_interval_s`` over mTLS
(``POST /v1/mesh/revocations``, nodes only). Each record is checked against the CA on
arrival, so a relay can't forge one, then persisted and applied (the roster marks the
node removed; every later message from it is refused).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from meshd.adapters.store import revocations as stored_revocations
from meshd.adapters.store import roster
from meshd.adapters.transport import Addr
from meshd.errors import IdentityError
from meshd.identity import revocation
from meshd.shell.context import NodeContext

logger = logging.getLogger(__name__)
REVOCATION_KIND = "revocation"
REVOCATIONS_PATH = "/v1/mesh/revocations"


class RevocationSync:
    def __init__(
        self,
        ctx: NodeContext,
        post: Callable[[Addr, str, bytes], Awaitable[None]],
        random_peer_addr: Callable[[random.Random], Addr | None],
        on_removed_self: Callable[[], None],
        on_removed: Callable[[str], None] = lambda node_id: None,
    ) -> None:
        self.ctx = ctx
        self._post = post
        self._random_peer_addr = random_peer_addr
        self._on_removed_self = on_removed_self
        self._on_removed = on_removed

    async def run(self) -> None:
        """Anti-entropy for removals: push every known record to one random member."""
        rng = random.Random()  # noqa: S311 - peer choice and jitter
        while True:
            interval = self.ctx.cfg.membership.revocation_sync_interval_s
            await asyncio.sleep(interval * rng.uniform(0.8, 1.2))
            records = stored_revocations.records(self.ctx.store)
            addr = self._random_peer_addr(rng)
            if records and addr is not None:
                await self._post(addr, REVOCATIONS_PATH, revocation.bundle(records))

    def receive_bundle(self, body: bytes, origin: str) -> None:
        """Records a member pushed (``POST /v1/mesh/revocations``); each is CA-checked."""
        for record in revocation.unbundle(body):
            self.receive(record, origin)

    def receive(self, payload: bytes, origin: str) -> None:
        """One record, gossiped or pushed."""
        try:
            rev = revocation.verify(payload, self.ctx.ident.ca_cert)
        except IdentityError as exc:
            logger.warning("dropped a revocation from %s: %s", origin, exc)
            return
        if self.ctx.revocations.add(rev):
            stored_revocations.add(self.ctx.store, rev, payload)
            roster.mark_removed(self.ctx.store, rev.name, rev.revoked_at, rev.node_id)
            logger.info("node removed by the CA name=%s serial=%s", rev.name, rev.serial)
            self._on_removed(rev.node_id)
            if rev.node_id == self.ctx.ident.node_id:  # by key: a replacement reuses the name
                # Every member now drops what we send; say so loudly and go quiet.
                logger.error("this node was removed from the mesh; stopping membership")
                self._on_removed_self()
