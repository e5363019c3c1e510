"""What the event loop reports on its own: a peer that hangs up mid-way is not an error.

asyncio (and uvloop) report failures nobody awaited through the loop's exception
handler, whose default writes an ERROR with a traceback. Most of them on a mesh node
are peers hanging up in the middle of a TLS handshake or a request: a member that
stopped, a probe that timed out on the other side, a chassis restarting together
(58 to 84 such tracebacks per 32-node join before this handler). Those are one debug
line each; everything else still goes to the default handler.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger(__name__)

# uvloop's words when a TLS transport is written to after the peer closed it.
_CLOSED_HANDLE = "handler is closed"


def peer_went_away(context: dict[str, Any]) -> bool:
    """Whether the loop's report is a peer's connection ending mid-way."""
    exc = context.get("exception")
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError) and type(exc).__module__ == "ssl":
        return True  # ssl.SSLError and its kin: the handshake or record layer broke off
    if isinstance(exc, RuntimeError) and _CLOSED_HANDLE in str(exc):
        return "SSL" in type(context.get("protocol")).__name__
    return False


def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if peer_went_away(context):
        exc = context.get("exception")
        logger.debug(
            "a peer's connection ended mid-way: %s (%s: %s)",
            context.get("message", ""),
            type(exc).__name__,
            exc,
        )
        return
    loop.default_exception_handler(context)


def install(loop: asyncio.AbstractEventLoop) -> None:
    loop.set_exception_handler(handle)
