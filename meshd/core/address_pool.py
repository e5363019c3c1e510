"""A node's own pool: blocks of addresses a majority granted it ahead of demand (issue 13).

Theory of operation
-------------------
A majority claim (:mod:`meshd.core.addresses`) costs a round of votes and a durable
write on every voter that answers, on the submit path. So each node also holds, per
network it has been asked for, a few **blocks** (:data:`BLOCK_SIZE` aligned addresses,
claimed whole by one majority claim, :func:`meshd.core.addresses.block_of`) granted
ahead of demand to holders of its own, ``pool:TAG:NODE`` (:func:`holder`; a tag per
claim, so two claims of one node never win or give back one block between them). A
voter grants a ``pool:…:NODE`` claim only to NODE itself, denies any other claim of an
address inside a block it granted, and frees the block only on NODE's word (a
``Release``, or ``TornDown`` when the voter asks about an old block: a lost Release) or
once NODE left the roster (then keeping a grant for each of the block's addresses that
a removed workload's owner may still run); never by age, and never because a
placement stops backing it.

Handing one out (:meth:`PoolBook.take`) asks nobody and writes nothing of its own: the
address is in the workload's spec before its auction starts, and the auction's round
record, which carries the spec, is fsynced before its award leaves this node. A crash
before that write leaves no award anywhere, so nothing can hold the address; after it,
the award may reach a placement this node's view has not seen yet. So a restarted node
counts every address of its pool as lent (:meth:`PoolBook.adopt`), to the workload its
view places there or to nobody known, until :meth:`PoolBook.settle` sees otherwise.
An address stays lent while any of these holds:

* a live placement in this node's view carries it (whatever generation or owner: a
  re-placement after a fence keeps the spec);
* its workload is a tombstone that may still run somewhere (its owner has not torn
  it down, is not fenced and is still enrolled: the shell's ``runs_nowhere``);
* its workload is not in the view at all and it was lent less than ``ttl_s`` ago (an
  auction under way, or one that failed, whose placement could still show up late).

Otherwise it goes back to this node's free pool, never to the network's: other nodes
see it held (by the pool's grant) until this node gives it back.

Pure: no IO, no clock (times are passed in).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass

from meshd.core.addresses import BLOCK_SIZE, block_of, canonical, node_holder
from meshd.core.addresses import POOL_PREFIX as PREFIX


def holder(tag: str, node: str) -> str:
    """The holder a pool claim of ``node`` asks for (``tag``: unique per claim)."""
    return f"{PREFIX}{tag}:{node}"


def node_of(holder_text: str) -> str | None:
    """The node a ``pool:TAG:NODE`` holder belongs to; None for any other holder."""
    return node_holder(holder_text) if holder_text.startswith(PREFIX) else None


def target(configured: int, hosts: int, voters: int) -> int:
    """How many blocks (:data:`BLOCK_SIZE` addresses each) a node keeps in its pool of a
    network with ``hosts`` usable addresses: enough for ``configured`` addresses, and
    all pools of ``voters`` nodes together at most an eighth of the network (a small
    network keeps none: every address is claimed on demand)."""
    return min(-(-configured // BLOCK_SIZE), hosts // (8 * max(1, voters) * BLOCK_SIZE))


UNKNOWN = ""  # the workload an address adopted at a start was lent to, if not in view
RETIRED = "\x00retired:"  # the pool key of a network's blocks that are being given back


def retired(network: str) -> str:
    """Where :meth:`PoolBook.retire` parks ``network``'s blocks."""
    return RETIRED + network


@dataclass(slots=True)
class Lent:
    workload: str
    since: float  # when it was lent (or adopted at a restart)


class PoolBook:
    """This node's pools: the blocks a majority granted it, per network, and which of
    their addresses are lent to workloads."""

    def __init__(self) -> None:
        self.blocks: dict[str, tuple[str, str]] = {}  # pool holder -> (network, block)
        self.lent: dict[str, Lent] = {}  # address -> to whom, since
        self._where: dict[str, tuple[str, str]] = {}  # address -> (network, pool holder)
        self._free: dict[str, dict[str, None]] = {}  # network -> its free addresses
        self._ints: set[int] = set()  # every pool address, as an integer
        self.added = 0  # blocks added so far (a block can enter a network only so)

    @classmethod
    def from_doc(cls, doc: object) -> tuple[PoolBook, list[str]]:
        """The book as :meth:`to_doc` wrote it (nothing lent: see :meth:`adopt`), and
        what of ``doc`` was not a block of this shape (skipped)."""
        book, bad = cls(), []
        for net, held in doc.items() if isinstance(doc, dict) else ():
            for text, pool_holder in held.items() if isinstance(held, dict) else ():
                try:
                    if not (isinstance(net, str) and isinstance(pool_holder, str)):
                        raise ValueError("not text")
                    book.add(net, str(text), pool_holder)
                except ValueError:
                    bad.append(f"{net!r:.40}: {text!r:.60} -> {pool_holder!r:.80}")
        if not isinstance(doc, dict):
            bad.append(f"{doc!r:.80}")
        return book, bad

    def to_doc(self) -> dict[str, dict[str, str]]:
        """What the store keeps: network -> block -> holder (lending rides the auction's
        records)."""
        doc: dict[str, dict[str, str]] = {}
        for pool_holder, (net, text) in sorted(self.blocks.items()):
            doc.setdefault(net, {})[text] = pool_holder
        return doc

    def networks(self) -> list[str]:
        return sorted({net for net, _ in self.blocks.values()})

    def free(self, network: str) -> list[str]:
        """The addresses of ``network``'s pool that are not lent."""
        return list(self._free.get(network, ()))

    def free_count(self, network: str) -> int:
        return len(self._free.get(network, ()))

    def holder_of(self, address: str) -> str | None:
        where = self._where.get(address)
        return None if where is None else where[1]

    def holders(self) -> set[str]:
        return set(self.blocks)

    def ints(self) -> set[int]:
        """Every pool address as an integer (what this node's claims skip)."""
        return self._ints

    def add(self, network: str, text: str, pool_holder: str) -> None:
        """Keep block ``text``, granted to ``pool_holder``."""
        block = block_of(text)
        self.blocks[pool_holder] = (network, block.text)
        self.added += 1
        self._ints.update(block.numbers)
        free = self._free.setdefault(network, {})
        for n in block.numbers:
            a = block.address(n)
            self._where[a] = (network, pool_holder)
            if a not in self.lent:
                free[a] = None

    def forget(self, pool_holder: str) -> None:
        """Undo :meth:`add` of a block nothing was lent from (its write failed)."""
        net, text = self.blocks.pop(pool_holder)
        block = block_of(text)
        self._ints.difference_update(block.numbers)
        free = self._free.get(net, {})
        for n in block.numbers:
            a = block.address(n)
            free.pop(a, None)
            self._where.pop(a, None)

    def retire(self, network: str, keep: Callable[[str], bool]) -> None:
        """Move ``network``'s blocks whose first address ``keep`` refuses (the network
        was removed, or now has another subnet) out of its pool: nothing more is lent
        from them, and they are given back (:meth:`drop_free_blocks` of
        :func:`retired`) once nothing lent from them is held."""
        old = retired(network)
        for pool_holder, (net, text) in sorted(self.blocks.items()):
            block = block_of(text)
            if net != network or keep(block.address(block.first)):
                continue
            self.blocks[pool_holder] = (old, text)
            free, parked = self._free.get(network, {}), self._free.setdefault(old, {})
            for n in block.numbers:
                a = block.address(n)
                self._where[a] = (old, pool_holder)
                if free.pop(a, 0) is None:
                    parked[a] = None

    def drop_free_blocks(self, network: str, keep: int = 0) -> list[tuple[str, str]]:
        """Remove ``network``'s blocks none of whose addresses is lent, as long as at
        least ``keep`` free addresses stay; (block, holder) of each, to give back."""
        out = []
        free = self._free.get(network, {})
        for pool_holder, (net, text) in sorted(self.blocks.items()):
            if net != network:
                continue
            if len(free) - BLOCK_SIZE < keep:
                break
            block = block_of(text)
            addresses = [block.address(n) for n in block.numbers]
            if any(a in self.lent for a in addresses):
                continue
            for a in addresses:
                free.pop(a, None)
                del self._where[a]
            self._ints.difference_update(block.numbers)
            del self.blocks[pool_holder]
            out.append((text, pool_holder))
        if not free:
            self._free.pop(network, None)
        return out

    def take(
        self,
        network: str,
        workload: str,
        now: float,
        busy: Container[str],
        skip: Container[str] = (),
    ) -> str | None:
        """Lend a free address of ``network``'s pool to ``workload``: not one ``busy``
        holds (the view's live NICs), nor one in ``skip`` (the network's gateway, say);
        None if there is none."""
        for a in self._free.get(network, ()):
            if a not in busy and a not in skip:
                self._lend(a, workload, now)
                return a
        return None

    def take_fixed(
        self, network: str, address: str, workload: str, now: float, busy: Container[str]
    ) -> bool:
        """Lend a requested address if it is free in this node's own pool (and no live
        placement ``busy`` knows of holds it)."""
        a = canonical(address)
        if a in self._free.get(network, ()) and a not in busy:
            self._lend(a, workload, now)
            return True
        return False

    def _lend(self, address: str, workload: str, now: float) -> None:
        self.lent[address] = Lent(workload, now)
        where = self._where.get(address)
        if where is not None:
            self._free.get(where[0], {}).pop(address, None)

    def _back(self, address: str) -> None:
        del self.lent[address]
        where = self._where.get(address)
        if where is not None:
            self._free.setdefault(where[0], {})[address] = None

    def give_back(self, workload: str, addresses: Iterable[str]) -> None:
        """Undo :meth:`take` for a workload whose auction never started."""
        for a in addresses:
            lent = self.lent.get(a)
            if lent is not None and lent.workload == workload:
                self._back(a)

    def adopt(self, held: Mapping[str, str], now: float) -> None:
        """At a start: every address of the pool counts as lent from ``now``, to the
        workload the view holds it for (``held``: address -> workload, of live placements
        and of removed ones their owner may still run), or else to nobody known
        (:data:`UNKNOWN`: back after the TTL). What this node lent
        just before it stopped may be on its way to a placement this view has not seen
        yet (an award under way, a confirmation lost), and the round records that name
        it may have been pruned since: nothing short of the TTL says it can't be."""
        for a in list(self._where):
            if a not in self.lent:
                self._lend(a, held.get(a, UNKNOWN), now)

    def settle(
        self,
        now: float,
        ttl_s: float,
        held: Mapping[str, str],
        state: Callable[[str], str],
    ) -> list[str]:
        """Return lent addresses that nothing can hold any more to the free pool (see
        the module's rules); the addresses returned. ``held``: address -> workload, of
        every live placement's NICs in the view and of removed ones their owner may
        still run; ``state(workload)``: ``"live"``, ``"removed"`` (a tombstone nothing
        can run any more), ``"running"`` (a tombstone its owner may still run) or
        ``"unknown"`` (not in the view)."""
        back = []
        # (O(lent): ``held`` is a dict, the view's whole index, in all but rare cases.)
        for a in [a for a in self.lent if a not in held]:
            lent = self.lent[a]
            s = state(lent.workload)
            if s == "running" or (s == "unknown" and now - lent.since < ttl_s):
                continue
            back.append(a)
            self._back(a)
        for free in self._free.values():  # a holder the book did not know of
            for a in [a for a in free if a in held]:
                self._lend(a, held[a], now)
        return back
