"""The membership protocol's messages, as plain frozen dataclasses.

Two families:

* **Updates** are the gossip payload (SWIM §4.4 "infection-style dissemination"):
  claims about one member (:class:`Alive`, :class:`Suspect`, :class:`Dead`,
  :class:`Left`) and the general broadcast facility's :class:`UserMsg`. They ride on
  every probe message and on dedicated :class:`Gossip` datagrams.
* **Messages** are what one datagram (or one reliable exchange) carries: the probe
  messages :class:`Ping`, :class:`Ack`, :class:`Nack` (Lifeguard §4.1), :class:`PingReq`,
  and :class:`Gossip` and :class:`PushPull` (memberlist's full state exchange).

Every datagram message carries ``inc``, the *sender's own* incarnation. The shell has
already authenticated the sender, so this is the sender speaking for itself: a
receiver treats a higher ``inc`` as an ``Alive`` claim about the sender (a departure
from memberlist, whose acks carry no incarnation; it lets a refutation travel on the
very next probe).

Nothing here validates: the codec checks shapes and ranges of what arrives from the
wire, and the core checks meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshd.core.membership.state import Address, MemberState


@dataclass(frozen=True, slots=True)
class Alive:
    """``name`` is alive at incarnation ``inc``, reachable at ``addr``."""

    name: str
    node_id: str
    addr: Address
    inc: int


@dataclass(frozen=True, slots=True)
class Suspect:
    """``origin`` suspects ``name`` at incarnation ``inc`` (it failed a probe)."""

    name: str
    inc: int
    origin: str


@dataclass(frozen=True, slots=True)
class Dead:
    """``origin`` declared ``name`` dead at incarnation ``inc`` (suspicion expired)."""

    name: str
    inc: int
    origin: str


@dataclass(frozen=True, slots=True)
class Left:
    """``name`` left the mesh gracefully at incarnation ``inc``."""

    name: str
    inc: int


@dataclass(frozen=True, slots=True)
class UserMsg:
    """A broadcast of the general facility: ``origin``'s message ``id`` of ``kind``."""

    origin: str
    id: int
    kind: str
    payload: bytes


Update = Alive | Suspect | Dead | Left | UserMsg


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe. ``target`` guards against a new node reusing an old address."""

    seq: int
    inc: int
    target: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to a :class:`Ping`, or forwarded by an intermediary for a :class:`PingReq`."""

    seq: int
    inc: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """An intermediary could not reach the target of a :class:`PingReq` in time."""

    seq: int
    inc: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """Please ping ``target`` for me and forward its ack (or a nack) under ``seq``."""

    seq: int
    inc: int
    target: str
    target_addr: Address
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Gossip:
    """A datagram that carries nothing but updates."""

    inc: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Record:
    """One member as the sender of a :class:`PushPull` sees it."""

    name: str
    node_id: str
    addr: Address
    inc: int
    state: MemberState


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full state, sent reliably; the receiver merges it and, unless ``reply``, answers."""

    records: tuple[Record, ...]
    join: bool = False
    reply: bool = False


Message = Ping | Ack | Nack | PingReq | Gossip | PushPull
# The messages that go out as single datagrams and must fit max_gossip_bytes.
DATAGRAM_TYPES = (Ping, Ack, Nack, PingReq, Gossip)
