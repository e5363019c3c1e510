"""This node's services as ``@service@node@domain`` names, published in the DHT.

Each service this node publishes (``meshd service add``, or a running workload's
``services``) is a signed multi-writer DHT record under ``svc/<domain>/<service>``,
kept in the store so it is published again after a restart and whenever membership
brings a newcomer that may now be among the closest nodes. Resolution checks that
each instance was published by the node it names, and filters instances by the
membership view, so a dead node's names stop resolving the moment it is declared dead.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from meshd.adapters.dht import MeshDHT
from meshd.adapters.store import services
from meshd.adapters.transport import Addr
from meshd.core import names
from meshd.errors import NamingError, NotFoundError
from meshd.shell.context import NodeContext


class ServiceNames:
    def __init__(
        self,
        ctx: NodeContext,
        dht: Callable[[], MeshDHT | None],
        address: Callable[[], Addr],
        live_names: Callable[[], set[str]],
    ) -> None:
        self.ctx = ctx
        self._dht, self._address, self._live_names = dht, address, live_names
        # Services a guest serves, at the guest's address: kept in memory only, as the
        # runner publishes them again whenever it finds the workload running.
        self._hosts: dict[str, str] = {}

    def _instance(self, name: str, port: int, proto: str) -> names.Instance:
        host = self._hosts.get(name) or self._address()[0]
        return names.Instance(name, self.ctx.ident.name, host, port, proto)

    async def republish(self) -> None:
        for svc in services.all_services(self.ctx.store):
            await self._publish(self._instance(svc["name"], svc["port"], svc["proto"]))

    async def _publish(self, inst: names.Instance) -> None:
        dht = self._dht()
        if dht is None:
            return
        key = names.record_key(self.ctx.ident.domain, inst.service)
        await dht.put(key, inst.encode())

    async def add(
        self, name: str, port: int, proto: str, host: str | None = None
    ) -> dict[str, Any]:
        """Publish ``name`` at this node's address, or at ``host`` (a guest's)."""
        names.check_service(name)
        if not 1 <= port <= 65535 or proto not in names.PROTOS:
            raise NamingError("a service needs a port 1-65535 and proto tcp or udp")
        if host is None:
            self._hosts.pop(name, None)
        else:
            self._hosts[name] = host
        services.upsert(self.ctx.store, name, port, proto, self.ctx.clock())
        await self._publish(self._instance(name, port, proto))
        return {"name": name, "port": port, "proto": proto}

    async def remove(self, name: str) -> None:
        self._hosts.pop(name, None)
        if not services.remove(self.ctx.store, name):
            raise NotFoundError(f"this node publishes no service named {name!r}")
        dht = self._dht()
        if dht is not None:
            await dht.delete(names.record_key(self.ctx.ident.domain, name))

    async def resolve(self, text: str) -> list[names.Instance]:
        query = names.parse(text)
        if query.domain != self.ctx.ident.domain:
            raise NamingError(
                f"{text} is in domain {query.domain}; this mesh is {self.ctx.ident.domain}"
            )
        dht = self._dht()
        if dht is None:
            return []
        found: list[names.Instance] = []
        for rec in await dht.get(query.key):
            try:
                inst = names.Instance.decode(rec.value)
            except NamingError:
                continue
            if inst.node == rec.author:  # a node can only publish its own instances
                found.append(inst)
        return names.select(
            query,
            found,
            self._live_names(),
            self.ctx.ident.name,
            random.Random(),  # noqa: S311 - load spreading
        )
