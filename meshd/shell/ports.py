"""What the placement shell and the workload runner need of the mesh: the mesh port.

Theory of operation
-------------------
DESIGN.md §2: the shells drive the pure cores through small *ports*, so the same shell
code runs in the daemon (on :class:`meshd.shell.mesh.Mesh`: sealed UDP, mTLS, SWIM gossip,
the DHT) and in the simulator (``tests/sim/shells.py``: a fake on a seeded lossy
network, in virtual time). :class:`MeshPort` lists exactly what the two shells use and
nothing more; ``mypy --strict`` checks that ``Mesh`` satisfies it wherever the node
hands a ``Mesh`` to a shell.

The port is narrower than ``Mesh``: a shell never touches the datagram mux or the
signer, it asks for a channel's *authenticated* datagrams and sends signed bodies to
members by name. How a datagram is sealed, signed and verified, and how a name becomes
an address, stays behind the port (the envelope has its own tests), so a fake needs
no keys: it authenticates senders by construction.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from typing import Any, Protocol, TypeVar

from meshd.adapters.transport import Channel
from meshd.core.bmc import BmcEndpoint, FenceOutcome, PowerReading
from meshd.metrics import Counter

T = TypeVar("T")
BroadcastHandler = Callable[[bytes, str], None]  # (payload, authenticated origin)


class Author(Protocol):
    """Who sent a message over the reliable channel (a verified certificate's holder)."""

    @property
    def name(self) -> str: ...


class MeshPort(Protocol):
    # -- membership: who is live ---------------------------------------------------------

    def live_names(self) -> Collection[str]:
        """Live members, this node included."""
        ...

    def live_peers(self) -> Collection[str]:
        """Live members other than this node."""
        ...

    def random_peer(self, rng: random.Random) -> str | None:
        """One live member other than this node (anti-entropy); None when alone."""
        ...

    # -- datagrams: best effort, authenticated -------------------------------------------

    def on_datagram(
        self,
        channel: Channel,
        kind: str,
        decode: Callable[[bytes], T],
        handler: Callable[[T, str], None],
        dropped: Counter,
    ) -> None:
        """Call ``handler(message, author)`` for each valid signed datagram of ``kind``
        arriving on ``channel``; count and drop the rest in ``dropped``."""
        ...

    def sign(self, kind: str, body: bytes) -> bytes:
        """``body`` as a compact signed message of ``kind`` (sign once, send to many)."""
        ...

    def send_datagram(self, channel: Channel, name: str, signed: bytes) -> None:
        """Send a signed message to member ``name`` (nothing if its address is unknown)."""
        ...

    # -- the reliable channel (mTLS in the daemon) ---------------------------------------

    async def post_to(self, name: str, path: str, body: bytes) -> None:
        """Post ``body`` to member ``name``'s mesh route ``path`` (fire and forget)."""
        ...

    def open_reliable(
        self,
        body: bytes,
        cert_der: bytes,
        kind: str,
        decode: Callable[[bytes], T],
        dropped: Counter,
    ) -> tuple[T, Author] | None:
        """Decode what a member posted (``cert_der`` names it): (message, sender) or None."""
        ...

    # -- gossip ---------------------------------------------------------------------------

    def on_broadcast(self, kind: str, handler: BroadcastHandler) -> None: ...

    def broadcast(self, kind: str, payload: bytes, key: str | None = None) -> None: ...

    # -- signed records: relayed by anyone, authenticated by their author ----------------

    def sign_record(self, kind: str, body: bytes, portable: bool = False) -> bytes:
        """``body`` signed by this node as a record of ``kind``, to be stored and relayed
        (by gossip, anti-entropy) long after it was made. ``portable``: in the full form,
        carrying this node's certificate, so any member can check it even before it
        learnt ours (a fencing vote, forwarded in the coordinator's ``Fenced``)."""
        ...

    def open_record(self, kind: str, signed: bytes) -> tuple[bytes, str] | None:
        """A record's (body, author) if its signature verifies against a member's
        certificate and its kind is ``kind``; None (and a log line) otherwise."""
        ...

    # -- names ----------------------------------------------------------------------------

    async def add_service(
        self, name: str, port: int, proto: str, host: str | None = None
    ) -> dict[str, Any]:
        """Publish ``name``; at ``host`` (a guest's address) instead of this node's."""
        ...

    async def remove_service(self, name: str) -> None: ...


class BmcPort(Protocol):
    """What the fencing shell needs of a node's BMC: in the daemon
    :class:`meshd.adapters.redfish.RedfishClient`, in the simulator ``tests/sim/bmc.py``.

    ``deadline`` is absolute, on the clock the implementation was given (the monotonic
    clock in the daemon, the virtual loop's in the simulator): no request starts that
    could end after it. Neither call raises: a BMC that can't be reached, refuses or
    never reports Off is a value with ``error`` set.
    """

    async def power_state(self, endpoint: BmcEndpoint, deadline: float) -> PowerReading:
        """The system's PowerState, read once."""
        ...

    async def force_off(self, endpoint: BmcEndpoint, deadline: float) -> FenceOutcome:
        """Power the system off and verify Off; an Off system is left alone (no POST)."""
        ...
