"""Addresses without a central server: majority grants (issue 13 item 2, net-design.md).

Theory of operation
-------------------
An address is fixed in a workload's spec *before* its auction starts, so every node
learns it with the placement, and a re-placement (same spec) keeps it. Uniqueness comes
from a majority vote over the durable roster (:mod:`meshd.core.quorum`), as a lease in
Chubby or a Paxos phase-1 promise would, reduced to one round:

* **The key is the address itself**, across every network: two overlapping networks
  accepted by two sides of a partition can never hand one address out twice.
* **A voter** (:class:`VoterTable`) grants ``Claim(address, network, holder)`` if its
  durable table holds the address for nobody else and no live placement in its view
  names it for somebody else; it writes the grant *before* it answers ``Grant``
  (:meth:`VoterTable.decide` decides, the shell persists, then :meth:`VoterTable.put`).
  Otherwise it answers ``Deny(holder)``. A grant to the same holder is repeated (a
  lost answer, a retried submission). A voter whose view has not yet matched a
  member's answers ``Abstain`` (counted neither way).
* **A claimer** (:class:`Claimer`, one per NIC) tries candidates picked from its own
  view (:func:`candidates`: not the network or broadcast address, not the gateway or a
  DNS server, not taken; randomised among the first free ones so that concurrent
  originators rarely collide). A majority of grants fixes the address; a majority of
  denials, or no majority within ``claim_timeout_s``, moves to the next candidate, up
  to ``attempts``. A fixed address has one candidate: a denial is refused with a
  sentence naming its holder.
* Two majorities of one roster share a voter, and that voter granted at most one
  holder: two holders can't both win one address. A claimer that lost keeps a few
  grants (minority) on the voters; it asks them to ``Release`` (every voter that
  granted or had not answered yet when it gave up, and any voter whose grant arrives
  after that: :meth:`Claimer.late`), and the sweep frees what no placement backs after
  ``grant_ttl_s`` anyway.
* **Release** (:meth:`VoterTable.sweep`): a removed holder's addresses once nothing can
  run it (its tombstone in the view and :func:`runs_nowhere`: its last owner's
  ``TornDown``, or that owner fenced or gone from the roster), never by age before; a
  grant no live placement backs is freed after ``grant_ttl_s`` (longer than any
  submission takes); ``node:NAME`` and a node's pool (``pool:TAG:NAME``,
  :mod:`meshd.core.address_pool`) are freed once NAME leaves the roster, never by age.

Messages travel as bundles (:func:`encode_all`): what one loop turn sends one member,
in one signed datagram of at most 1200 bytes.

Departure from a lease protocol: grants never expire while a placement backs them, and
the view (replicated by the auction's confirmations and anti-entropy) is the source of
truth for what is live. Pure: no IO, no clock, no global random.
"""

from __future__ import annotations

import functools
import ipaddress
import random
from collections.abc import Callable, Collection, Container, Iterable, Mapping
from dataclasses import dataclass, field

import orjson

from meshd.core.network import Address, Network
from meshd.core.quorum import VoteResult, majority, vote_result
from meshd.errors import AddressError, EnvelopeError

NODE_PREFIX = "node:"  # holder of a node's own address on a network's bridge
BLOCK_BITS = 4  # a pool is claimed in blocks of 2**BLOCK_BITS aligned addresses
BLOCK_SIZE = 1 << BLOCK_BITS
WALK_MAX_BLOCKS = 1 << 16  # blocks a full network's candidate walk may look at
POOL_PREFIX = "pool:"  # holder of addresses a node lends itself (meshd.core.address_pool)
MAX_FIELD = 300  # bytes of a holder, network or claim id on the wire

# -- messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """Ask a voter to hold ``address`` (on ``network``) for ``holder``."""

    claim: str  # the claimer's id for this attempt: replies name it
    address: str
    network: str
    holder: str


@dataclass(frozen=True, slots=True)
class Grant:
    claim: str
    address: str


@dataclass(frozen=True, slots=True)
class Deny:
    claim: str
    address: str
    holder: str  # who holds it, in the voter's table or view


@dataclass(frozen=True, slots=True)
class Release:
    """The claimer lost or gave up: free ``address`` if ``holder`` holds it and no
    placement backs it."""

    address: str
    holder: str


@dataclass(frozen=True, slots=True)
class Abstain:
    """A voter whose view has not yet matched a member's does not vote: it says so, and
    the claimer offers it its view digest (it counts neither way)."""

    claim: str


@dataclass(frozen=True, slots=True)
class TornDown:
    """From a removed workload's last owner: ``holder`` runs nowhere here any more, so
    its addresses may go to others (sent when its teardown ends, and to answer Ask)."""

    holder: str


@dataclass(frozen=True, slots=True)
class Ask:
    """To a removed workload's last owner: has ``holder`` been torn down? (A voter asks
    each sweep while a TornDown it waits for has not come: one may have been lost.)"""

    holder: str


Msg = Claim | Grant | Deny | Release | Abstain | TornDown | Ask
Reply = Grant | Deny


# Candidates are drawn at random from a pool of at least SPREAD x window hosts, with at
# most DRAWS x window draws (see :func:`candidates`).
SPREAD = 8
DRAWS = 3
MAX_BUNDLE_BYTES = 1100  # a bundle's body: with the envelope, inside a 1200-byte datagram


def _doc(msg: Msg) -> dict[str, str]:
    if isinstance(msg, Claim):
        return {"t": "c", "i": msg.claim, "a": msg.address, "n": msg.network, "h": msg.holder}
    if isinstance(msg, Grant):
        return {"t": "g", "i": msg.claim, "a": msg.address}
    if isinstance(msg, Deny):
        return {"t": "d", "i": msg.claim, "a": msg.address, "h": msg.holder}
    if isinstance(msg, Release):
        return {"t": "r", "a": msg.address, "h": msg.holder}
    if isinstance(msg, TornDown):
        return {"t": "x", "h": msg.holder}
    if isinstance(msg, Ask):
        return {"t": "q", "h": msg.holder}
    return {"t": "u", "i": msg.claim}


def encode(msg: Msg) -> bytes:
    return orjson.dumps(_doc(msg))


def encode_all(msgs: Iterable[Msg]) -> list[bytes]:
    """``msgs`` as bundles (JSON arrays) of at most :data:`MAX_BUNDLE_BYTES` each: one
    signature and one datagram for what one loop turn sends one member."""
    out: list[bytes] = []
    parts: list[bytes] = []
    size = 2
    for msg in msgs:
        part = encode(msg)
        if parts and size + len(part) + 1 > MAX_BUNDLE_BYTES:
            out.append(b"[" + b",".join(parts) + b"]")
            parts, size = [], 2
        parts.append(part)
        size += len(part) + 1
    if parts:
        out.append(b"[" + b",".join(parts) + b"]")
    return out


_KEYS = {"c": {"t", "i", "a", "n", "h"}, "g": {"t", "i", "a"}, "d": {"t", "i", "a", "h"}}
_KEYS["r"] = {"t", "a", "h"}
_KEYS["u"] = {"t", "i"}
_KEYS["x"] = _KEYS["q"] = {"t", "h"}


def decode(body: bytes) -> Msg:
    """A message from its body; :class:`EnvelopeError` saying why it is not one."""
    return _msg(_loads(body))


def decode_all(body: bytes) -> list[Msg]:
    """A bundle's messages (:func:`encode_all`); :class:`EnvelopeError` if any is bad."""
    docs = _loads(body)
    if not isinstance(docs, list) or not docs or len(docs) > MAX_BUNDLE_BYTES // 16:
        raise EnvelopeError("an address bundle is a non-empty JSON array")
    return [_msg(d) for d in docs]


def _loads(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"an address message must be JSON: {exc}") from exc


def _msg(doc: object) -> Msg:
    if not isinstance(doc, dict) or doc.get("t") not in _KEYS or set(doc) != _KEYS[doc["t"]]:
        raise EnvelopeError("not an address message (unknown tag or keys)")
    for key, value in doc.items():
        if not isinstance(value, str) or not value or len(value.encode()) > MAX_FIELD:
            raise EnvelopeError(f"an address message's {key!r} must be 1..{MAX_FIELD} bytes")
    tag = doc["t"]
    if tag == "u":
        return Abstain(doc["i"])
    if tag == "x":
        return TornDown(doc["h"])
    if tag == "q":
        return Ask(doc["h"])
    try:
        canonical(doc["a"])
    except ValueError as exc:
        raise EnvelopeError(f"{doc['a']!r:.60} is not an IP address or block") from exc
    if tag == "c":
        return Claim(doc["i"], doc["a"], doc["n"], doc["h"])
    if tag == "g":
        return Grant(doc["i"], doc["a"])
    if tag == "d":
        return Deny(doc["i"], doc["a"], doc["h"])
    return Release(doc["a"], doc["h"])


def _v4(text: str) -> int | None:
    """The number of a canonical dotted quad (what ``ipaddress`` accepts as IPv4 and
    spells back unchanged); None for anything else."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    n = 0
    for part in parts:
        if not (part.isascii() and part.isdigit()) or len(part) > 3 or part[:1] == "0" != part:
            return None
        octet = int(part)
        if octet > 255:
            return None
        n = n << 8 | octet
    return n


def canonical(address: str) -> str:
    """One spelling per address (``fd00::0001`` and ``fd00::1`` are one key), or per
    block (:func:`block_of`); ValueError if ``address`` is neither. A dotted quad is
    checked without ``ipaddress``: each vote parses one, and ``ipaddress`` took ~2 % of
    a voter's CPU doing it."""
    if _v4(address) is not None:
        return address
    if "/" in address:
        return block_of(address).text
    return str(ipaddress.ip_address(address))


@dataclass(frozen=True, slots=True)
class Block:
    """:data:`BLOCK_SIZE` aligned addresses, claimed as one (a node's pool)."""

    text: str  # canonical CIDR
    first: int
    version: int

    @property
    def numbers(self) -> range:
        return range(self.first, self.first + BLOCK_SIZE)

    def address(self, n: int) -> str:
        """The canonical text of address number ``n`` (of this block's family)."""
        make = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        return str(make(n))


@functools.lru_cache(maxsize=4096)  # a sweep and a block claim look a block up often
def block_of(text: str) -> Block:
    """The block ``text`` names (``10.64.0.16/28``: :data:`BLOCK_SIZE` addresses,
    aligned); ValueError if it names none."""
    net = ipaddress.ip_network(text, strict=True)
    if net.num_addresses != BLOCK_SIZE:
        raise ValueError(f"{text!r:.60} is not a block of {BLOCK_SIZE} addresses")
    return Block(str(net), int(net.network_address), net.version)


def block_text(first: Address) -> str:
    """The block that starts at ``first``."""
    return f"{first}/{first.max_prefixlen - BLOCK_BITS}"


def claim_numbers(address: str) -> range:
    """The address numbers a claim of ``address`` (one address, or a block) covers."""
    if "/" in address:
        return block_of(address).numbers
    n = number(address)
    return range(n, n + 1)


def number(address: str) -> int:
    """``int(ipaddress.ip_address(address))``, a dotted quad without ``ipaddress``."""
    return key(address)[1]


def key(address: str) -> tuple[str, int]:
    """``(canonical(address), number(address))`` from one parse."""
    n = _v4(address)
    if n is not None:
        return address, n
    ip = ipaddress.ip_address(address)
    return str(ip), int(ip)


# -- the voter's table -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    address: str  # canonical text
    network: str
    holder: str
    granted_at: float  # the voter's wall clock when it (last) granted


class VoterTable:
    """The addresses this node granted, by address (what the store's table holds)."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._by_address: dict[str, Entry] = {}
        self._ints: set[int] = set()
        self._blocks: dict[int, Entry] = {}  # a block's first number -> its grant
        self._pools: dict[str, set[str]] = {}  # a pool holder -> the blocks it holds
        for e in entries:
            self.put(e)

    def get(self, address: str) -> Entry | None:
        return self._by_address.get(address)

    def entries(self) -> list[Entry]:
        return sorted(self._by_address.values(), key=lambda e: e.address)

    def address_ints(self) -> set[int]:
        """The granted addresses as integers (what :func:`candidates` skips)."""
        return self._ints

    def decide(self, claim: Claim, now: float, in_view: Mapping[str, str]) -> Reply | Entry:
        """The answer to ``claim``: a :class:`Deny`, or the entry to write *before*
        answering ``Grant`` (then :meth:`put` it). ``in_view``: address -> holder of
        every live placement's NICs in this voter's view."""
        if "/" in claim.address:
            return self._decide_block(claim, block_of(claim.address), now, in_view)
        address, n = key(claim.address)
        other = in_view.get(address)
        if other is not None and other != claim.holder:
            return Deny(claim.claim, address, other)
        held = self._by_address.get(address) or self._blocks.get(n & ~(BLOCK_SIZE - 1))
        if held is not None and held.holder != claim.holder:
            return Deny(claim.claim, address, held.holder)
        return Entry(address, claim.network, claim.holder, now)

    def _decide_block(
        self, claim: Claim, block: Block, now: float, in_view: Mapping[str, str]
    ) -> Reply | Entry:
        """A block is granted whole or not at all: none of its addresses may be held for
        anybody else, here or in the view."""
        held = self._blocks.get(block.first)
        if held is not None and held.holder != claim.holder:
            return Deny(claim.claim, block.text, held.holder)
        if held is None:
            for n in block.numbers:
                text = block.address(n)
                other = in_view.get(text)
                if other is None and n in self._ints:
                    single = self._by_address.get(text)
                    other = single.holder if single is not None else None
                if other is not None:
                    return Deny(claim.claim, block.text, other)
        return Entry(block.text, claim.network, claim.holder, now)

    def pool_holders(self) -> Collection[str]:
        """The pool holders (``pool:TAG:NODE``) this table grants to."""
        return self._pools.keys()

    def pool_entries(self, holder: str) -> list[Entry]:
        """The grants a pool holder holds here (none for any other holder)."""
        return [self._by_address[a] for a in sorted(self._pools.get(holder, ()))]

    def put(self, entry: Entry) -> None:
        old = self._by_address.get(entry.address)
        if old is not None:
            self._unindex(old)
        if entry.holder.startswith(POOL_PREFIX):
            self._pools.setdefault(entry.holder, set()).add(entry.address)
        if "/" in entry.address:
            block = block_of(entry.address)
            self._blocks[block.first] = entry
            self._ints.update(block.numbers)
        else:
            self._ints.add(number(entry.address))
        self._by_address[entry.address] = entry

    def _unindex(self, entry: Entry) -> None:
        held = self._pools.get(entry.holder)
        if held is not None:
            held.discard(entry.address)
            if not held:
                del self._pools[entry.holder]

    def drop(self, address: str) -> None:
        old = self._by_address.pop(address, None)
        if old is None:
            return
        self._unindex(old)
        if "/" in address:
            block = block_of(address)
            self._blocks.pop(block.first, None)
            self._ints.difference_update(block.numbers)
        else:
            self._ints.discard(number(address))

    def releasable(self, release: Release, in_view: Mapping[str, str]) -> bool:
        """Whether a claimer's ``release`` frees its grant here (nothing in view backs it)."""
        address = canonical(release.address)
        held = self._by_address.get(address)
        if held is None or held.holder != release.holder:
            return False
        if "/" in address:
            block = block_of(address)
            return not any(block.address(n) in in_view for n in block.numbers)
        return in_view.get(address) is None

    def sweep(
        self,
        now: float,
        ttl_s: float,
        backed: Mapping[str, str],
        removed: Container[str],
        roster: Container[str],
        waiting: Container[str] = (),
    ) -> list[Entry]:
        """The grants to free now.

        ``backed``: address -> holder of every live placement's NICs in the view;
        ``removed``: holders whose placement is a tombstone in the view and that nothing
        can run any more (:func:`runs_nowhere`); ``waiting``: holders whose tombstone
        waits for that (their owner may still run them): never freed by age;
        ``roster``: the enrolled node names (``node:NAME`` and ``pool:TAG:NAME`` are
        freed once NAME left it, never by age)."""
        free = []
        for e in self.entries():
            node = node_holder(e.holder)
            if node is not None:
                gone = node not in roster
            elif e.holder in waiting:
                gone = False
            else:
                unbacked = backed.get(e.address) != e.holder
                gone = e.holder in removed or (unbacked and now - e.granted_at > ttl_s)
            if gone:
                free.append(e)
        return free


# -- picking candidates ---------------------------------------------------------------


def reserved(net: Network) -> set[Address]:
    """Addresses of ``net`` no NIC gets: network, broadcast, gateway, DNS servers."""
    out: set[Address] = {net.subnet.network_address, *net.dns}
    if net.subnet.version == 4:
        out.add(net.subnet.broadcast_address)
    if net.gateway is not None:
        out.add(net.gateway)
    return out


def candidates(
    net: Network,
    taken: Container[int],
    rng: random.Random,
    window: int,
    start: int = 0,
    need: int | None = None,
) -> tuple[list[Address], int]:
    """Up to ``window`` free addresses of ``net``, in random order, and the caller's next
    ``start`` hint. ``need``: how many random draws the caller can use (its attempts;
    default ``window``).

    In a pool with room to spare (at least ``SPREAD`` times ``window`` hosts) they are
    drawn at random from the whole pool: concurrent originators, each knowing only the
    claims it voted on, then almost never draw the same address (from the first free
    ones, 16 claims in flight collide about a quarter of the time, and every collision
    costs a round of claims). In a small pool, or one too full for random draws to find
    ``window`` free addresses, they are the first free ones.

    ``taken`` holds addresses as integers: the pool is walked as integers, since an
    address object per host costs a microsecond and a busy pool has thousands taken.
    ``start``: no free address lies below it (the caller's hint), so a walk begins there;
    the hint returned is the lowest free address a walk found (``start`` if none walked)."""
    skip = {int(a) for a in reserved(net)}
    make = ipaddress.IPv4Address if net.subnet.version == 4 else ipaddress.IPv6Address
    lowest = int(net.subnet.network_address) + 1
    last = int(net.subnet.broadcast_address) - (1 if net.subnet.version == 4 else 0)
    found: dict[int, None] = {}  # in the order drawn
    if last - lowest + 1 >= SPREAD * window:
        want = min(window, need or window)
        for _ in range(DRAWS * want):
            i = rng.randint(lowest, last)
            if i not in skip and i not in taken:
                found[i] = None
                if len(found) == want:
                    return [make(i) for i in found], start
    i = hint = max(lowest, start)
    walked = False
    while i <= last and len(found) < window:
        if i not in skip and i not in taken:
            if not walked:
                hint, walked = i, True
            found[i] = None
        i += 1
    free = [make(i) for i in sorted(found)]
    rng.shuffle(free)
    return free, hint if walked else start


def block_candidates(
    net: Network, taken: Container[int], rng: random.Random, need: int
) -> list[Address]:
    """Up to ``need`` blocks of ``net`` (their first addresses) with no address in
    ``taken``, drawn at random (then walked, in a network too full for random draws)."""
    first = -(-int(net.subnet.network_address) // BLOCK_SIZE)  # the first whole block
    last = (int(net.subnet.broadcast_address) + 1) // BLOCK_SIZE - 1
    if last < first:
        return []
    make = ipaddress.IPv4Address if net.subnet.version == 4 else ipaddress.IPv6Address

    def free(b: int) -> bool:
        return not any(n in taken for n in range(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE))

    found: dict[int, None] = {}
    for _ in range(DRAWS * need):
        b = rng.randint(first, last)
        if b not in found and free(b):
            found[b] = None
            if len(found) == need:
                return [make(b * BLOCK_SIZE) for b in found]
    if last - first < WALK_MAX_BLOCKS:  # (a huge IPv6 network is never walked)
        for b in range(first, last + 1):
            if len(found) == need:
                break
            if b not in found and free(b):
                found[b] = None
    return [make(b * BLOCK_SIZE) for b in found]


def check_fixed(net: Network, text: str) -> Address:
    """A requested fixed address on ``net``; :class:`AddressError` says what to fix."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise AddressError(
            f"{text!r:.80} is not an IP address: write --net {net.name}:ADDRESS with an "
            f"address in {net.subnet}"
        ) from None
    if ip.version != net.subnet.version or ip not in net.subnet:
        raise AddressError(
            f"address {ip} is outside network {net.name}'s subnet {net.subnet}: pick an "
            "address inside it, or leave it out to get one from the pool"
        )
    if ip in reserved(net):
        what = "gateway or DNS server" if ip in {net.gateway, *net.dns} else "network address"
        if net.subnet.version == 4 and ip == net.subnet.broadcast_address:
            what = "broadcast address"
        raise AddressError(
            f"address {ip} is network {net.name}'s {what}: pick a host address, or leave it "
            "out to get one from the pool"
        )
    return ip


def runs_nowhere(
    owner: str | None, roster: Container[str], torn_down_by: str | None, fenced: bool
) -> bool:
    """Whether a removed workload whose last owner was ``owner`` can no longer run
    anywhere, so its addresses may be granted again: it never had an owner, the owner
    left the roster, said it tore it down (``torn_down_by`` is who said so: only the
    owner's word counts), or was fenced (verified off). Otherwise a cut-off owner may
    still run the guest, and its address handed out again would answer twice."""
    return owner is None or owner not in roster or torn_down_by == owner or fenced


def node_holder(holder: str) -> str | None:
    """The node a node's own holder (``node:NAME``, ``pool:TAG:NAME``) names; None for a
    workload. A voter grants such a claim only to that node itself."""
    if holder.startswith(NODE_PREFIX):
        return holder[len(NODE_PREFIX) :]
    if holder.startswith(POOL_PREFIX):
        _, sep, node = holder[len(POOL_PREFIX) :].partition(":")
        return node if sep and node else None
    return None


def holder_text(holder: str) -> str:
    if holder.startswith(NODE_PREFIX):
        return f"node {holder[len(NODE_PREFIX) :]}"
    node = node_holder(holder)
    if node is not None:
        return f"node {node}'s pool (it hands those out to submissions through {node})"
    return f"workload {holder}"


# -- the claimer ----------------------------------------------------------------------


@dataclass
class Claimer:
    """One NIC's address: candidates in turn until a majority of ``voters`` grants one.

    Drive it with :meth:`begin`, :meth:`receive` (a voter's reply) and :meth:`tick`
    (time passed). Each returns the :class:`Claim` to send to the voters when the
    claimer moved to a new candidate (None otherwise); a majority of grants wins,
    whichever voters give them (the shell asks a bare majority first). When
    :attr:`done`, either :attr:`won` holds the address or :attr:`refusal` a sentence;
    :attr:`lost` lists addresses some voters granted that the claimer did not keep
    (release them).
    """

    claim_prefix: str
    net: Network
    holder: str
    voters: frozenset[str]
    pool: list[Address]
    fixed: bool
    attempts: int
    timeout_s: float
    describe: Callable[[str], str] = holder_text
    won: Address | None = None
    refusal: str | None = None
    lost: list[str] = field(default_factory=list)
    current: Claim | None = None
    grants: set[str] = field(default_factory=set)
    denies: dict[str, str] = field(default_factory=dict)  # voter -> holder
    deadline: float = 0.0
    tried: int = 0
    timeouts: int = 0
    answered_most: int = 0  # the most voters that answered any one attempt
    full: bool = False  # refused because no candidate was left (the network is full)
    block: bool = False  # each candidate is the first address of a block to claim whole

    @property
    def done(self) -> bool:
        return self.won is not None or self.refusal is not None

    def silent(self) -> list[str]:
        """Voters that have not answered the current claim (resend to them)."""
        answered = self.grants | set(self.denies)
        return sorted(self.voters - answered)

    def begin(self, now: float) -> Claim | None:
        return self._next(now)

    def receive(self, voter: str, reply: Reply, now: float) -> Claim | None:
        cur = self.current
        if self.done or cur is None or reply.claim != cur.claim or voter not in self.voters:
            return None
        if isinstance(reply, Grant):
            self.grants.add(voter)
            self.denies.pop(voter, None)  # a grant, once given, is a promise
        elif voter not in self.grants:
            self.denies[voter] = reply.holder
        result = vote_result(self.voters, self.grants, self.denies)
        if result is VoteResult.WON:
            self.won = ipaddress.ip_address(cur.address.partition("/")[0])
            self.current = None
            return None
        if result is VoteResult.LOST:
            self._give_up_current()
            if self.fixed:
                self.refusal = self._held(cur)
                return None
            return self._next(now)
        return None

    def _held(self, cur: Claim) -> str:
        holder = _most_named(self.denies.values())
        return (
            f"address {cur.address} on network {self.net.name} is held by "
            f"{self.describe(holder)}: pick another address, or leave it out to get one "
            "from the pool"
        )

    def late(self, voter: str, reply: Reply) -> Release | None:
        """The ``Release`` that gives back ``reply``'s grant if it came for an attempt
        this claimer gave up (a majority denied, or time ran out, before that voter
        answered; or the claim ended): such a grant would hold the address for nobody
        until ``grant_ttl_s``. None for any other reply (a grant of the address won is
        kept)."""
        cur = self.current
        if (
            not isinstance(reply, Grant)
            or voter not in self.voters
            or not reply.claim.startswith(self.claim_prefix + ".")
            or (cur is not None and reply.claim == cur.claim)
        ):
            return None
        try:
            address = ipaddress.ip_address(reply.address.partition("/")[0])
        except ValueError:
            return None
        return None if address == self.won else Release(reply.address, self.holder)

    def tick(self, now: float) -> Claim | None:
        if self.done or self.current is None or now < self.deadline:
            return None
        self.timeouts += 1
        cur = self.current
        self._give_up_current()
        if self.fixed:
            # A voter that denied named the holder: that is the reason to give, even if
            # too few answered for a majority either way (some are cut off).
            self.refusal = self._held(cur) if self.denies else self._no_majority()
            return None
        return self._next(now)

    def _give_up_current(self) -> None:
        cur = self.current
        self.answered_most = max(self.answered_most, len(self.grants) + len(self.denies))
        # A voter that has not answered yet may grant after we gave up (a majority
        # denied, or time ran out, first): its grant would hold the address for a
        # holder that never uses it until ``grant_ttl_s``, and deny every other claim
        # meanwhile. So a silent voter's possible grant is released as a granted one is.
        if cur is not None and (self.grants or self.silent()):
            self.lost.append(cur.address)
        self.current = None

    def _next(self, now: float) -> Claim | None:
        if self.tried >= self.attempts or not self.pool:
            if not self.pool and self.tried == 0:
                self.refusal = self._full()
            elif self.timeouts and self.answered_most < majority(len(self.voters)):
                self.refusal = self._no_majority()
            elif not self.pool:
                self.refusal = self._full()
            else:
                self.refusal = (
                    f"no address on network {self.net.name} was granted after {self.tried} "
                    "attempts (other submissions claimed the same ones): retry"
                )
            return None
        address = self.pool.pop(0)
        self.tried += 1
        self.grants, self.denies = set(), {}
        self.deadline = now + self.timeout_s
        text = block_text(address) if self.block else str(address)
        self.current = Claim(f"{self.claim_prefix}.{self.tried}", text, self.net.name, self.holder)
        return self.current

    def _full(self) -> str:
        self.full = True
        return (
            f"network {self.net.name} ({self.net.subnet}) has no free address left: remove a "
            "workload that uses it, or create a larger network"
        )

    def _no_majority(self) -> str:
        need = majority(len(self.voters))
        return (
            f"no majority answered the address claim on network {self.net.name} "
            f"({self.answered_most} of {len(self.voters)} voters, {need} needed): this node "
            "may be cut off from the mesh; retry once it is whole, or submit through a "
            "node that sees a majority"
        )


def _most_named(holders: Iterable[str]) -> str:
    counts: dict[str, int] = {}
    for h in holders:
        counts[h] = counts.get(h, 0) + 1
    return max(sorted(counts), key=lambda h: counts[h]) if counts else "another holder"


# -- what a view holds ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Nic:
    """One NIC of a placement, as the address rules see it."""

    holder: str
    network: str
    address: str


def nic_addresses(holder: str, nics: Collection[tuple[str, str | None]]) -> list[Nic]:
    """``(network, ip)`` pairs of a spec's NICs as :class:`Nic`, unaddressed ones left out."""
    return [Nic(holder, n, canonical(ip)) for n, ip in nics if ip is not None]


__all__ = [
    "Abstain",
    "Claim",
    "Claimer",
    "Deny",
    "Entry",
    "Grant",
    "Msg",
    "Release",
    "VoterTable",
    "candidates",
    "check_fixed",
    "decode",
    "encode",
]
