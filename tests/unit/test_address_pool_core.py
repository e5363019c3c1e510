"""Pools of addresses: blocks in the voter's table, and the pool's own book (pure)."""

from __future__ import annotations

import ipaddress
import random

import pytest

from meshd.core import address_pool
from meshd.core.address_pool import PoolBook
from meshd.core.addresses import (
    BLOCK_SIZE,
    Claim,
    Deny,
    Entry,
    Release,
    VoterTable,
    block_candidates,
    block_of,
    canonical,
    claim_numbers,
    decode,
    encode,
    holder_text,
    node_holder,
)
from meshd.core.network import Network, check_subnet, define
from meshd.errors import EnvelopeError, NetworkError

POOL = "pool:t1:n1"


def _net(subnet: str = "10.40.0.0/22", gateway: str | None = "10.40.0.1") -> Network:
    gw = None if gateway is None else ipaddress.ip_address(gateway)
    return Network("lan", ipaddress.ip_network(subnet), gw, "br0", None, (), False, 1, "n1")


# -- blocks on the wire and in the voter's table --------------------------------------


def test_a_block_is_sixteen_aligned_addresses_and_nothing_else() -> None:
    b = block_of("10.40.0.16/28")
    assert (b.text, b.numbers) == ("10.40.0.16/28", range(b.first, b.first + BLOCK_SIZE))
    assert canonical("10.40.0.16/28") == "10.40.0.16/28"
    assert block_of("fd00::10/124").address(block_of("fd00::10/124").first + 1) == "fd00::11"
    n = int(ipaddress.ip_address("10.40.0.5"))
    assert claim_numbers("10.40.0.5") == range(n, n + 1)
    for bad in ("10.40.0.17/28", "10.40.0.0/27", "10.40.0.0/29", "fd00::/120", "x/28"):
        with pytest.raises(ValueError):
            block_of(bad)


def test_block_claims_travel_and_misshapen_ones_are_dropped() -> None:
    msg = Claim("c.1", "10.40.0.16/28", "lan", POOL)
    assert decode(encode(msg)) == msg
    assert decode(encode(Release("10.40.0.16/28", POOL))) == Release("10.40.0.16/28", POOL)
    with pytest.raises(EnvelopeError):
        decode(encode(Claim("c.1", "10.40.0.0/24", "lan", POOL)))


def test_a_voter_grants_a_block_only_if_no_address_in_it_is_held() -> None:
    t = VoterTable([Entry("10.40.0.20", "lan", "w1", 1.0)])
    denied = t.decide(Claim("c.1", "10.40.0.16/28", "lan", POOL), 2.0, {})
    assert denied == Deny("c.1", "10.40.0.16/28", "w1")
    in_view = t.decide(Claim("c.2", "10.40.0.32/28", "lan", POOL), 2.0, {"10.40.0.47": "w9"})
    assert in_view == Deny("c.2", "10.40.0.32/28", "w9")
    entry = t.decide(Claim("c.3", "10.40.0.48/28", "lan", POOL), 2.0, {})
    assert entry == Entry("10.40.0.48/28", "lan", POOL, 2.0)
    assert isinstance(entry, Entry)
    t.put(entry)
    assert set(block_of("10.40.0.48/28").numbers) <= t.address_ints()
    # Inside a granted block, a claim by anybody else is denied naming the pool...
    inside = t.decide(Claim("c.4", "10.40.0.50", "lan", "w2"), 3.0, {})
    assert inside == Deny("c.4", "10.40.0.50", POOL)
    other = t.decide(Claim("c.5", "10.40.0.48/28", "lan", "pool:t2:n2"), 3.0, {})
    assert other == Deny("c.5", "10.40.0.48/28", POOL)
    # ...and the same holder asking again is granted again (a lost answer).
    assert isinstance(t.decide(Claim("c.6", "10.40.0.48/28", "lan", POOL), 3.0, {}), Entry)
    # The table rebuilt from the store knows the block too.
    again = VoterTable(t.entries())
    assert again.decide(Claim("c.7", "10.40.0.63", "lan", "w3"), 4.0, {}) == Deny(
        "c.7", "10.40.0.63", POOL
    )
    again.drop("10.40.0.48/28")
    assert isinstance(again.decide(Claim("c.8", "10.40.0.63", "lan", "w3"), 4.0, {}), Entry)
    assert not set(block_of("10.40.0.48/28").numbers) & again.address_ints()


def test_a_block_is_given_back_only_by_its_holder_and_never_under_a_live_placement() -> None:
    t = VoterTable([Entry("10.40.0.48/28", "lan", POOL, 1.0)])
    assert not t.releasable(Release("10.40.0.48/28", "pool:t2:n1"), {})
    assert not t.releasable(Release("10.40.0.48/28", POOL), {"10.40.0.49": "w1"})
    assert t.releasable(Release("10.40.0.48/28", POOL), {})


def test_a_pool_block_is_never_freed_by_age_only_when_its_node_leaves() -> None:
    t = VoterTable([Entry("10.40.0.48/28", "lan", POOL, 1.0)])
    assert t.sweep(1e9, 10.0, {}, set(), {"n1", "n2"}) == []
    freed = t.sweep(1e9, 10.0, {}, set(), {"n2"})
    assert [e.address for e in freed] == ["10.40.0.48/28"]


def test_pool_holders_name_their_node() -> None:
    assert node_holder("pool:abc:n1") == "n1" and node_holder("node:n2") == "n2"
    assert node_holder("pool:abc") is None and node_holder("w1") is None
    assert address_pool.node_of("pool:abc:n1") == "n1" and address_pool.node_of("node:n1") is None
    assert "node n1's pool" in holder_text("pool:abc:n1")


def test_block_candidates_are_free_aligned_and_inside_the_subnet() -> None:
    net = _net("10.40.0.0/26")  # 4 blocks
    taken = set(block_of("10.40.0.16/28").numbers) | {int(ipaddress.ip_address("10.40.0.40"))}
    got = block_candidates(net, taken, random.Random(1), 8)
    assert sorted(str(a) for a in got) == ["10.40.0.0", "10.40.0.48"]
    assert block_candidates(_net("10.40.0.0/29"), set(), random.Random(1), 2) == []
    big = block_candidates(_net("10.0.0.0/8"), set(), random.Random(2), 5)
    assert len(big) == 5 and all(int(a) % BLOCK_SIZE == 0 for a in big)
    huge = Network("v6", ipaddress.ip_network("fd00::/64"), None, "br0", None, (), False, 1, "n1")
    full = set(range(int(huge.subnet.network_address), int(huge.subnet.network_address) + 64))
    assert len(block_candidates(huge, full, random.Random(3), 3)) == 3  # never walked


def test_target_keeps_pools_to_an_eighth_of_the_network() -> None:
    assert address_pool.target(128, 1022, 3) == 2  # a /22 among three nodes
    assert address_pool.target(128, 254, 3) == 0  # a /24: claimed on demand
    assert address_pool.target(128, 262142, 4) == 8
    assert address_pool.target(0, 262142, 4) == 0


# -- the pool's book ---------------------------------------------------------------------


def _book() -> PoolBook:
    book = PoolBook()
    book.add("lan", "10.40.0.0/28", "pool:a:n1")
    book.add("lan", "10.40.0.16/28", "pool:b:n1")
    return book


def test_the_book_lends_each_address_once_and_skips_busy_and_reserved_ones() -> None:
    book = _book()
    got = {
        book.take("lan", f"w{i}", 1.0, {"10.40.0.2": "x"}, {"10.40.0.0", "10.40.0.1"})
        for i in range(29)
    }
    assert None not in got and len(got) == 29
    assert not got & {"10.40.0.0", "10.40.0.1", "10.40.0.2"}
    assert book.take("lan", "w99", 1.0, {}, {"10.40.0.0", "10.40.0.1", "10.40.0.2"}) is None
    assert book.take("other", "w1", 1.0, {}) is None


def test_a_fixed_address_is_lent_only_if_free_in_the_pool() -> None:
    book = _book()
    assert not book.take_fixed("lan", "10.40.0.9", "w1", 1.0, {"10.40.0.9": "w0"})  # live
    assert book.take_fixed("lan", "10.40.0.9", "w1", 1.0, {})
    assert not book.take_fixed("lan", "10.40.0.9", "w2", 1.0, {})
    assert not book.take_fixed("lan", "10.40.1.9", "w2", 1.0, {})
    book.give_back("w2", ["10.40.0.9"])  # not w2's: stays lent
    assert "10.40.0.9" in book.lent
    book.give_back("w1", ["10.40.0.9"])
    assert "10.40.0.9" in book.free("lan")


def test_settle_returns_what_nothing_can_hold_and_keeps_the_rest() -> None:
    book = _book()
    for w in ("live", "running", "removed", "young", "old"):
        assert book.take("lan", w, 0.0 if w == "old" else 90.0, {}) is not None
    addr = {lent.workload: a for a, lent in book.lent.items()}
    states = {"live": "live", "running": "running", "removed": "removed"}
    back = book.settle(100.0, 60.0, {addr["live"]: "live"}, lambda w: states.get(w, "unknown"))
    assert sorted(back) == sorted([addr["removed"], addr["old"]])
    assert set(book.lent) == {addr["live"], addr["running"], addr["young"]}
    # A live placement holding a free address of the pool is adopted as lent.
    free = book.free("lan")[0]
    book.settle(100.0, 60.0, {free: "w7"}, lambda w: "live")
    assert book.lent[free].workload == "w7"


def test_the_book_round_trips_and_a_restart_adopts_what_records_name() -> None:
    book = _book()
    book.take("lan", "w1", 1.0, {})
    doc = book.to_doc()
    assert doc == {"lan": {"10.40.0.0/28": "pool:a:n1", "10.40.0.16/28": "pool:b:n1"}}
    again, bad = PoolBook.from_doc(doc)
    assert bad == []
    assert not again.lent and len(again.free("lan")) == 32
    # At a start everything counts as lent: to the view's live holder, else unknown.
    again.adopt({"10.40.0.3": "w1", "10.99.0.1": "w2"}, 5.0)
    assert len(again.lent) == 32 and not again.free("lan")
    assert again.lent["10.40.0.3"].workload == "w1"
    assert again.lent["10.40.0.4"].workload == address_pool.UNKNOWN
    back = again.settle(5.0 + 61.0, 60.0, {"10.40.0.3": "w1"}, lambda w: "unknown")
    assert len(back) == 31 and set(again.lent) == {"10.40.0.3"}
    assert again.holder_of("10.40.0.20") == "pool:b:n1" and again.holders() == {
        "pool:a:n1",
        "pool:b:n1",
    }


def test_only_blocks_with_nothing_lent_are_given_back() -> None:
    book = _book()
    book.take_fixed("lan", "10.40.0.20", "w1", 1.0, {})
    assert book.drop_free_blocks("lan") == [("10.40.0.0/28", "pool:a:n1")]
    assert book.holder_of("10.40.0.1") is None and book.holder_of("10.40.0.20") == "pool:b:n1"
    book.give_back("w1", ["10.40.0.20"])
    assert book.drop_free_blocks("lan") == [("10.40.0.16/28", "pool:b:n1")]
    assert book.networks() == [] and book.ints() == set()


def test_a_block_whose_write_failed_is_forgotten_and_lent_ones_stay_lent() -> None:
    book = _book()
    lent = book.take("lan", "w1", 1.0, {})
    book.add("lan", "10.40.0.32/28", "pool:c:n1")
    book.forget("pool:c:n1")
    assert lent is not None and lent in book.lent and lent not in book.free("lan")
    assert book.holder_of("10.40.0.33") is None and "pool:c:n1" not in book.holders()
    assert len(book.free("lan")) == 31


def test_retired_blocks_lend_nothing_and_are_given_back_once_free() -> None:
    book = _book()
    lent = book.take("lan", "w1", 1.0, {})
    assert lent is not None
    book.retire("lan", lambda a: a.startswith("10.41."))  # the network moved
    assert book.free("lan") == [] and book.take("lan", "w2", 1.0, {}) is None
    old = address_pool.retired("lan")
    assert book.drop_free_blocks(old) == [("10.40.0.16/28", "pool:b:n1")]  # nothing lent
    book.give_back("w1", [lent])
    assert book.drop_free_blocks(old) == [("10.40.0.0/28", "pool:a:n1")]
    assert book.networks() == []


def test_an_ipv6_subnet_in_ipv4_compatible_space_is_refused() -> None:
    """Its addresses' numbers are IPv4 addresses' numbers, which the voter's table and
    the candidates key by: such a network is refused at creation."""
    with pytest.raises(NetworkError, match="overlaps ::/96"):
        define("v6", "::/64", version=1, by="n1")
    assert str(define("v6", "fd00:40::/64", version=1, by="n1").subnet) == "fd00:40::/64"
    assert str(check_subnet("::/64")) == "::/64"  # a record already held still loads


def test_a_pool_record_is_read_entry_by_entry() -> None:
    doc = {
        "lan": {"10.40.0.0/28": "pool:a:n1", "10.40.0.3/28": "pool:b:n1", "x": 5},
        "v": ["not", "a", "map"],
    }
    book, bad = PoolBook.from_doc(doc)
    assert book.holders() == {"pool:a:n1"} and len(bad) == 2
    assert PoolBook.from_doc(None)[1] and PoolBook.from_doc({})[1] == []


def test_only_the_surplus_over_what_is_kept_is_given_back() -> None:
    book = _book()
    book.add("lan", "10.40.0.32/28", "pool:c:n1")
    assert len(book.drop_free_blocks("lan", keep=32)) == 1
    assert len(book.free("lan")) == 32


def test_the_voter_table_indexes_pool_holders() -> None:
    t = VoterTable([Entry("10.40.0.48/28", "lan", POOL, 1.0), Entry("10.40.0.5", "lan", "w1", 1.0)])
    assert [e.address for e in t.pool_entries(POOL)] == ["10.40.0.48/28"]
    assert t.pool_entries("w1") == []
    t.drop("10.40.0.48/28")
    assert t.pool_entries(POOL) == []
