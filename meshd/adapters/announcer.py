"""Sends a guest's address announcements on its bridge (an AF_PACKET raw socket).

Thin: the frames come from :mod:`meshd.core.announcement`. A frame written to the
bridge device leaves by every port (the guests' taps and the uplinks), and a bridge
does not learn from what it sends itself, so this node's own forwarding table (which
the metadata server reads) keeps the guest's MAC on the guest's tap. Root only (raw
sockets), in the network namespace meshd runs in. Nothing here raises: an
announcement that cannot be sent is logged, and peers learn the address the slow way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from meshd.core.announcement import announcement
from meshd.core.network import Address

logger = logging.getLogger(__name__)


def send(bridge: str, frame: bytes) -> bool:
    """Write ``frame`` on ``bridge``; False (logged) when it could not be sent."""
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((bridge, 0))
            sock.send(frame)
    except OSError as exc:
        logger.warning("cannot announce on %s: %s (peers keep their old entries)", bridge, exc)
        return False
    return True


def frame_of(bridge: str, ip: Address, mac: str) -> bytes | None:
    try:
        return announcement(ip, mac)
    except ValueError as exc:
        logger.warning("not announcing %s on %s: %s", ip, bridge, exc)
        return None


async def repeat(bridge: str, frame: bytes, count: int, interval_s: float) -> int:
    """Send ``frame`` on ``bridge`` ``count`` more times, ``interval_s`` apart (the
    first after one interval); how many went out."""
    sent = 0
    for _ in range(count):
        await asyncio.sleep(interval_s)
        sent += send(bridge, frame)
    return sent


class Announcer:
    """The announcements in flight, by workload: :meth:`forget` cancels a workload's
    (its address is no longer ours once it is detached), :meth:`close` all of them."""

    def __init__(self, count: int, interval_s: float) -> None:
        self.count, self.interval_s = count, interval_s
        self._tasks: dict[str, set[asyncio.Task[int]]] = {}

    def start(self, owner: str, bridge: str, ip: Address, mac: str) -> bool:
        """Send the first frame now (before the caller goes on to start the guest) and
        the rest, ``interval_s`` apart, in the background (as ``arping -U -c COUNT``),
        on behalf of workload ``owner``. Whether the first went out."""
        if self.count <= 0:
            return False
        frame = frame_of(bridge, ip, mac)
        if frame is None:
            return False
        first = send(bridge, frame)
        logger.debug("announce ip=%s mac=%s bridge=%s sent=%s", ip, mac, bridge, first)
        if self.count > 1:
            task = asyncio.get_running_loop().create_task(
                repeat(bridge, frame, self.count - 1, self.interval_s)
            )
            tasks = self._tasks.setdefault(owner, set())
            tasks.add(task)
            task.add_done_callback(lambda t: self._done(owner, t))
        return first

    def _done(self, owner: str, task: asyncio.Task[int]) -> None:
        tasks = self._tasks.get(owner)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._tasks[owner]

    def pending(self, owner: str) -> int:
        return len(self._tasks.get(owner, ()))

    async def forget(self, owner: str) -> None:
        await _cancel(list(self._tasks.get(owner, ())))

    async def close(self) -> None:
        await _cancel([t for tasks in self._tasks.values() for t in tasks])


async def _cancel(tasks: list[asyncio.Task[int]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
