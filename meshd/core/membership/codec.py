"""Membership messages to bytes and back: a compact, explicit binary format.

Theory of operation
-------------------
memberlist frames messages with msgpack; meshd writes a fixed binary layout because
the core must know, before encoding, exactly how many updates fit in one datagram
(``max_gossip_bytes``): every size here is additive, so ``size(message) ==
base_size + sum(update_size(u))`` and the core fills a datagram without trial
encoding. All integers are big-endian; ``str8`` is a one-byte length then UTF-8;
``bytes16`` a two-byte length then raw bytes; an address is ``str8 host | u16 port``::

    frame    = version u8 (1) | type u8 | body
    Ping     = seq u32 | inc u32 | target str8 | updates
    Ack      = seq u32 | inc u32 | updates          (type 2; Nack is type 3, same body)
    PingReq  = seq u32 | inc u32 | target str8 | addr | updates
    Gossip   = inc u32 | updates
    PushPull = flags u8 (1 join, 2 reply) | count u16 | record*
    record   = name str8 | node_id str8 | addr | inc u32 | state u8
    updates  = count u8 | update*
    update   = tag u8 | Alive:   name str8 | node_id str8 | addr | inc u32
                      | Suspect: name str8 | inc u32 | origin str8     (Dead: same)
                      | Left:    name str8 | inc u32
                      | UserMsg: origin str8 | id u64 | kind str8 | payload bytes16

The frame is the payload the shell seals and signs; it carries no authentication of
its own. Decoding anything — truncated, trailing bytes, bad UTF-8, unknown tags or
states, empty names — raises :class:`~meshd.errors.EnvelopeError` and nothing else.
Encoding a message that can't be represented (a 300-byte name) is a bug of the caller
and raises ``ValueError``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from meshd.core.membership.messages import (
    Ack,
    Alive,
    Dead,
    Gossip,
    Left,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Record,
    Suspect,
    Update,
    UserMsg,
)
from meshd.core.membership.state import Address, MemberState
from meshd.errors import EnvelopeError

VERSION = 1
MAX_UPDATES = 255
MAX_RECORDS = 65535
MAX_PAYLOAD = 65535

_T_PING, _T_ACK, _T_NACK, _T_PINGREQ, _T_GOSSIP, _T_PUSHPULL = 1, 2, 3, 4, 5, 6
_U_ALIVE, _U_SUSPECT, _U_DEAD, _U_LEFT, _U_USER = 1, 2, 3, 4, 5
_F_JOIN, _F_REPLY = 1, 2

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEAD = struct.Struct(">BB")
_SEQ_INC = struct.Struct(">II")

# Fixed parts of each datagram message, including the updates count byte.
ACK_BASE = 2 + 8 + 1
GOSSIP_BASE = 2 + 4 + 1
_PING_FIXED = 2 + 8 + 1 + 1  # + target
_PINGREQ_FIXED = 2 + 8 + 1 + 1 + 2 + 1  # + target + host


def slen(s: str) -> int:
    """Encoded length of a str8 field's text (without its length byte)."""
    return len(s) if s.isascii() else len(s.encode())


def ping_base(target: str) -> int:
    return _PING_FIXED + slen(target)


def pingreq_base(target: str, addr: Address) -> int:
    return _PINGREQ_FIXED + slen(target) + slen(addr[0])


def update_size(u: Update) -> int:
    """Exact encoded size of one update."""
    if isinstance(u, Alive):
        return 1 + 1 + slen(u.name) + 1 + slen(u.node_id) + 1 + slen(u.addr[0]) + 2 + 4
    if isinstance(u, Suspect | Dead):
        return 1 + 1 + slen(u.name) + 4 + 1 + slen(u.origin)
    if isinstance(u, Left):
        return 1 + 1 + slen(u.name) + 4
    return 1 + 1 + slen(u.origin) + 8 + 1 + slen(u.kind) + 2 + len(u.payload)


# The smallest update there is (a Left with a one-letter name): below this much room
# left in a datagram, no further update can fit.
MIN_UPDATE_SIZE = 1 + 1 + 1 + 4


def size(msg: Message) -> int:
    """Exact encoded size of a message (what ``len(encode(msg))`` returns)."""
    if isinstance(msg, PushPull):
        total = 2 + 1 + 2
        for r in msg.records:
            total += 1 + slen(r.name) + 1 + slen(r.node_id) + 1 + slen(r.addr[0]) + 2 + 4 + 1
        return total
    if isinstance(msg, Ping):
        base = ping_base(msg.target)
    elif isinstance(msg, PingReq):
        base = pingreq_base(msg.target, msg.target_addr)
    elif isinstance(msg, Gossip):
        base = GOSSIP_BASE
    else:
        base = ACK_BASE
    return base + sum(update_size(u) for u in msg.updates)


# -- encoding -------------------------------------------------------------------------


def _str8(out: bytearray, s: str) -> None:
    b = s.encode()
    if len(b) > 255:
        raise ValueError(f"string field longer than 255 bytes: {s[:40]!r}...")
    out += _U8.pack(len(b))
    out += b


def _addr(out: bytearray, addr: Address) -> None:
    _str8(out, addr[0])
    out += _U16.pack(addr[1])


def _updates(out: bytearray, updates: tuple[Update, ...]) -> None:
    if len(updates) > MAX_UPDATES:
        raise ValueError(f"{len(updates)} updates in one message; at most {MAX_UPDATES}")
    out += _U8.pack(len(updates))
    for u in updates:
        if isinstance(u, Alive):
            out += _U8.pack(_U_ALIVE)
            _str8(out, u.name)
            _str8(out, u.node_id)
            _addr(out, u.addr)
            out += _U32.pack(u.inc)
        elif isinstance(u, Suspect | Dead):
            out += _U8.pack(_U_SUSPECT if isinstance(u, Suspect) else _U_DEAD)
            _str8(out, u.name)
            out += _U32.pack(u.inc)
            _str8(out, u.origin)
        elif isinstance(u, Left):
            out += _U8.pack(_U_LEFT)
            _str8(out, u.name)
            out += _U32.pack(u.inc)
        else:
            out += _U8.pack(_U_USER)
            _str8(out, u.origin)
            out += _U64.pack(u.id)
            _str8(out, u.kind)
            if len(u.payload) > MAX_PAYLOAD:
                raise ValueError("broadcast payload longer than 65535 bytes")
            out += _U16.pack(len(u.payload))
            out += u.payload


def encode(msg: Message) -> bytes:
    """The wire form of ``msg``; raises ValueError (a caller bug) if it can't be encoded."""
    out = bytearray()
    try:
        if isinstance(msg, Ping):
            out += _HEAD.pack(VERSION, _T_PING) + _SEQ_INC.pack(msg.seq, msg.inc)
            _str8(out, msg.target)
        elif isinstance(msg, Ack | Nack):
            kind = _T_ACK if isinstance(msg, Ack) else _T_NACK
            out += _HEAD.pack(VERSION, kind) + _SEQ_INC.pack(msg.seq, msg.inc)
        elif isinstance(msg, PingReq):
            out += _HEAD.pack(VERSION, _T_PINGREQ) + _SEQ_INC.pack(msg.seq, msg.inc)
            _str8(out, msg.target)
            _addr(out, msg.target_addr)
        elif isinstance(msg, Gossip):
            out += _HEAD.pack(VERSION, _T_GOSSIP) + _U32.pack(msg.inc)
        else:
            flags = (_F_JOIN if msg.join else 0) | (_F_REPLY if msg.reply else 0)
            if len(msg.records) > MAX_RECORDS:
                raise ValueError(f"{len(msg.records)} records; at most {MAX_RECORDS}")
            out += _HEAD.pack(VERSION, _T_PUSHPULL) + _U8.pack(flags)
            out += _U16.pack(len(msg.records))
            for r in msg.records:
                _str8(out, r.name)
                _str8(out, r.node_id)
                _addr(out, r.addr)
                out += _U32.pack(r.inc) + _U8.pack(r.state.value)
            return bytes(out)
        _updates(out, msg.updates)
    except struct.error as exc:
        raise ValueError(f"can't encode {type(msg).__name__}: {exc}") from exc
    return bytes(out)


# -- decoding -------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise EnvelopeError("membership message is truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        value: int = _U16.unpack(self._take(2))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack(self._take(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack(self._take(8))[0]
        return value

    def text(self) -> str:
        raw = self._take(self.u8())
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise EnvelopeError("membership message has a field that is not UTF-8") from exc

    def name(self) -> str:
        s = self.text()
        if not s:
            raise EnvelopeError("membership message has an empty name")
        return s

    def addr(self) -> Address:
        host = self.text()
        return (host, self.u16())

    def state(self) -> MemberState:
        code = self.u8()
        try:
            return MemberState(code)
        except ValueError:
            raise EnvelopeError(f"membership record has unknown state {code}") from None


def _read_updates(r: _Reader) -> tuple[Update, ...]:
    out: list[Update] = []
    for _ in range(r.u8()):
        tag = r.u8()
        if tag == _U_ALIVE:
            out.append(Alive(r.name(), r.text(), r.addr(), r.u32()))
        elif tag in (_U_SUSPECT, _U_DEAD):
            name, inc, origin = r.name(), r.u32(), r.name()
            out.append(Suspect(name, inc, origin) if tag == _U_SUSPECT else Dead(name, inc, origin))
        elif tag == _U_LEFT:
            out.append(Left(r.name(), r.u32()))
        elif tag == _U_USER:
            origin, ident, kind = r.name(), r.u64(), r.text()
            out.append(UserMsg(origin, ident, kind, r._take(r.u16())))
        else:
            raise EnvelopeError(f"membership update has unknown tag {tag}")
    return tuple(out)


def _ping(r: _Reader) -> Message:
    seq, inc, target = r.u32(), r.u32(), r.name()
    return Ping(seq, inc, target, _read_updates(r))


def _ack(r: _Reader) -> Message:
    seq, inc = r.u32(), r.u32()
    return Ack(seq, inc, _read_updates(r))


def _nack(r: _Reader) -> Message:
    seq, inc = r.u32(), r.u32()
    return Nack(seq, inc, _read_updates(r))


def _pingreq(r: _Reader) -> Message:
    seq, inc, target, addr = r.u32(), r.u32(), r.name(), r.addr()
    return PingReq(seq, inc, target, addr, _read_updates(r))


def _gossip(r: _Reader) -> Message:
    inc = r.u32()
    return Gossip(inc, _read_updates(r))


def _pushpull(r: _Reader) -> Message:
    flags = r.u8()
    if flags & ~(_F_JOIN | _F_REPLY):
        raise EnvelopeError(f"push-pull has unknown flags {flags:#x}")
    records = tuple(
        Record(r.name(), r.text(), r.addr(), r.u32(), r.state()) for _ in range(r.u16())
    )
    return PushPull(records, join=bool(flags & _F_JOIN), reply=bool(flags & _F_REPLY))


_DECODERS: dict[int, Callable[[_Reader], Message]] = {
    _T_PING: _ping,
    _T_ACK: _ack,
    _T_NACK: _nack,
    _T_PINGREQ: _pingreq,
    _T_GOSSIP: _gossip,
    _T_PUSHPULL: _pushpull,
}


def decode(data: bytes) -> Message:
    """Parse one membership message; anything malformed raises EnvelopeError only."""
    if len(data) < 2:
        raise EnvelopeError("membership message is truncated")
    version, kind = data[0], data[1]
    if version != VERSION:
        raise EnvelopeError(f"membership message has unknown version {version}")
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise EnvelopeError(f"membership message has unknown type {kind}")
    r = _Reader(bytes(data))
    r.pos = 2
    msg = decoder(r)
    if r.pos != len(r.data):
        raise EnvelopeError("membership message has trailing bytes")
    return msg
