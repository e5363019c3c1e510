"""The guests' metadata server: HTTP on 169.254.169.254 (aiohttp), one per node.

Thin: every request goes to ``identify(source_ip)``, which says which guest asked (or
None: 403 and a log line), then to :func:`meshd.core.guest_net.answer`. The socket is
bound with IP_FREEBIND, so the server starts before the address is on a bridge.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

from meshd.core.guest_net import METADATA_IP, GuestFacts, Signer, answer

logger = logging.getLogger(__name__)
Identify = Callable[[str], Awaitable[GuestFacts | None]]
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


class MetadataServer:
    def __init__(
        self, identify: Identify, sign: Signer, port: int = 80, host: str = str(METADATA_IP)
    ) -> None:
        self.identify, self.sign, self.port, self.host = identify, sign, port, host
        self._runner: web.AppRunner | None = None
        self.refused = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((self.host, self.port))
        if self.port == 0:
            self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        logger.info("metadata server on %s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        source = request.remote or ""
        try:
            facts = await self.identify(source)
        except Exception:  # one bad lookup must not take the server down
            logger.exception("metadata: identifying %s failed", source)
            facts = None
        if facts is None:
            self.refused += 1
            logger.warning(
                "metadata refused source=%s path=%s: not a guest of this node on its own tap",
                source,
                request.path,
            )
            return web.Response(status=403, text="not one of this node's guests\n")
        ans = answer(request.path, facts, self.sign)
        if ans.status != 200:
            logger.info("metadata %s source=%s path=%s", ans.status, source, request.path)
        return web.Response(status=ans.status, body=ans.body, content_type=ans.content_type)
