"""The address core: codec, the voter's table, candidates, fixed addresses, the claimer."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core import addresses as core
from meshd.core.addresses import Claim, Claimer, Deny, Entry, Grant, Release, VoterTable
from meshd.core.network import Address, Network, define
from meshd.errors import AddressError, EnvelopeError

VOTERS = frozenset({"a", "b", "c"})


def net(subnet: str = "10.40.0.0/29", **kw: object) -> Network:
    return define("lan", subnet, version=1, by="a", **kw)  # type: ignore[arg-type]


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# -- codec ------------------------------------------------------------------------------

_text = st.text(min_size=1, max_size=40)
_addr = st.ip_addresses().map(str)
MSGS = st.one_of(
    st.builds(Claim, _text, _addr, _text, _text),
    st.builds(Grant, _text, _addr),
    st.builds(Deny, _text, _addr, _text),
    st.builds(Release, _addr, _text),
    st.builds(core.Abstain, _text),
    st.builds(core.TornDown, _text),
    st.builds(core.Ask, _text),
)


@given(MSGS)
def test_codec_round_trips(msg: core.Msg) -> None:
    assert core.decode(core.encode(msg)) == msg


@given(st.lists(MSGS, max_size=60))
def test_bundles_round_trip_and_fit_a_datagram(msgs: list[core.Msg]) -> None:
    bundles = core.encode_all(msgs)
    assert all(len(b) <= core.MAX_BUNDLE_BYTES for b in bundles)
    assert [m for b in bundles for m in core.decode_all(b)] == msgs


@pytest.mark.parametrize(
    "body", [b"[]", b"{}", b'[{"t":"u"}]', b"[" + b",".join([b'{"t":"u","i":"x"}'] * 100) + b"]"]
)
def test_decode_all_refuses(body: bytes) -> None:
    with pytest.raises(EnvelopeError):
        core.decode_all(body)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{", "must be JSON"),
        (b"[]", "not an address message"),
        (b'{"t":"x","a":"10.0.0.1"}', "not an address message"),
        (b'{"t":"g","i":"c1","a":"10.0.0.1","z":1}', "not an address message"),
        (b'{"t":"g","i":"","a":"10.0.0.1"}', "must be 1.."),
        (b'{"t":"g","i":1,"a":"10.0.0.1"}', "must be 1.."),
        (b'{"t":"g","i":"c1","a":"10.0.0.300"}', "not an IP address"),
        (b'{"t":"r","a":"10.0.0.1","h":"' + b"x" * 301 + b'"}', "must be 1.."),
    ],
)
def test_decode_refuses(body: bytes, why: str) -> None:
    with pytest.raises(EnvelopeError, match=why):
        core.decode(body)


# -- the voter's table -------------------------------------------------------------------


def test_a_free_address_is_granted_to_the_first_holder_only() -> None:
    t = VoterTable()
    first = t.decide(Claim("c1", "10.40.0.2", "lan", "w1"), 5.0, {})
    assert first == Entry("10.40.0.2", "lan", "w1", 5.0)
    assert isinstance(first, Entry)
    t.put(first)
    assert t.decide(Claim("c2", "10.40.0.2", "lan", "w2"), 6.0, {}) == Deny("c2", "10.40.0.2", "w1")
    # The same holder again (a lost answer, a retry): granted again.
    assert isinstance(t.decide(Claim("c3", "10.40.0.2", "lan", "w1"), 7.0, {}), Entry)


def test_decide_writes_nothing_itself() -> None:
    t = VoterTable()
    t.decide(Claim("c1", "10.40.0.2", "lan", "w1"), 5.0, {})
    assert t.entries() == []


def test_an_address_a_live_placement_holds_is_denied_even_if_not_in_the_table() -> None:
    t = VoterTable()
    got = t.decide(Claim("c1", "10.40.0.2", "lan", "w2"), 5.0, {"10.40.0.2": "w1"})
    assert got == Deny("c1", "10.40.0.2", "w1")


def test_the_key_is_the_address_across_networks_and_spellings() -> None:
    t = VoterTable()
    e = t.decide(Claim("c1", "fd00::0001", "six", "w1"), 1.0, {})
    assert isinstance(e, Entry)
    t.put(e)
    got = t.decide(Claim("c2", "fd00::1", "other", "w2"), 2.0, {})
    assert got == Deny("c2", "fd00::1", "w1")


def _by_ipaddress(text: str) -> tuple[str, int] | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(ip), int(ip)


def _fast(text: str) -> tuple[str, int] | None:
    try:
        return core.canonical(text), core.number(text)
    except ValueError:
        return None


EDGES = [
    "10.0.0.1", "0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3.04", "1.2.3",
    "1.2.3.4.5", "1.2.3.4 ", " 1.2.3.4", "1.2.3.4\x00", "\uff11.2.3.4", "0x1.2.3.4", "", "::",
    "fd00::0001", "::ffff:1.2.3.4", "FD00::A", "1.2.3.-1", "1..2.3",
]  # fmt: skip


@pytest.mark.parametrize("text", EDGES)
def test_canonical_and_number_agree_with_ipaddress(text: str) -> None:
    assert _fast(text) == _by_ipaddress(text)


@given(st.one_of(st.ip_addresses().map(str), st.text(alphabet="0123456789.:afx ", max_size=20)))
def test_canonical_and_number_agree_with_ipaddress_anywhere(text: str) -> None:
    assert _fast(text) == _by_ipaddress(text)


@pytest.mark.parametrize(
    ("entry", "backed", "removed", "roster", "now", "freed"),
    [
        # A live placement backs it: kept however old.
        (Entry("10.0.0.2", "lan", "w1", 0.0), {"10.0.0.2": "w1"}, set(), set(), 1e9, False),
        # The holder's tombstone: freed at once.
        (Entry("10.0.0.2", "lan", "w1", 99.0), {}, {"w1"}, set(), 100.0, True),
        # Nothing backs it yet, young: kept (its placement may be on its way).
        (Entry("10.0.0.2", "lan", "w1", 50.0), {}, set(), set(), 100.0, False),
        # Nothing backs it after the TTL: freed.
        (Entry("10.0.0.2", "lan", "w1", 10.0), {}, set(), set(), 100.0, True),
        # The placement names another address (the claim lost): freed after the TTL.
        (Entry("10.0.0.2", "lan", "w1", 10.0), {"10.0.0.3": "w1"}, set(), set(), 100.0, True),
        # A node's own address: kept while it is enrolled, however old.
        (Entry("10.0.0.2", "lan", "node:b", 0.0), {}, set(), {"b"}, 1e9, False),
        (Entry("10.0.0.2", "lan", "node:b", 99.0), {}, set(), {"a"}, 100.0, True),
    ],
)
def test_sweep(
    entry: Entry,
    backed: dict[str, str],
    removed: set[str],
    roster: set[str],
    now: float,
    freed: bool,
) -> None:
    t = VoterTable([entry])
    assert (t.sweep(now, 60.0, backed, removed, roster) == [entry]) is freed


def test_release_frees_only_an_unbacked_grant_of_that_holder() -> None:
    t = VoterTable([Entry("10.0.0.2", "lan", "w1", 0.0)])
    assert not t.releasable(Release("10.0.0.2", "w2"), {})
    assert not t.releasable(Release("10.0.0.2", "w1"), {"10.0.0.2": "w1"})
    assert t.releasable(Release("10.0.0.2", "w1"), {})


# -- candidates and fixed addresses ------------------------------------------------------


def test_candidates_skip_reserved_and_taken() -> None:
    n = net("10.40.0.0/29", gateway="10.40.0.1", dns=["10.40.0.2"])
    got, hint = core.candidates(n, {int(ip("10.40.0.4"))}, random.Random(1), 16)
    assert sorted(got) == [ip("10.40.0.3"), ip("10.40.0.5"), ip("10.40.0.6")]
    assert hint == int(ip("10.40.0.3"))


def test_a_small_pool_gives_its_first_free_addresses_in_random_order() -> None:
    n = net("10.40.0.0/26")  # 62 hosts: under SPREAD x window
    got = [core.candidates(n, set(), random.Random(s), 16)[0] for s in range(20)]
    assert all(sorted(o) == [ip(f"10.40.0.{i}") for i in range(1, 17)] for o in got)
    assert len({tuple(o) for o in got}) > 1


def test_a_roomy_pool_gives_addresses_drawn_from_all_of_it() -> None:
    n = net("10.40.0.0/16")
    taken = {int(ip("10.40.0.0")) + i for i in range(1, 30000, 2)}  # every other one low
    seen: set[Address] = set()
    for s in range(20):
        got, hint = core.candidates(n, taken, random.Random(s), 8, start=77)
        assert len(got) == len(set(got)) == 8
        assert not {int(a) for a in got} & taken and ip("10.40.255.255") not in got
        assert hint == 77  # nothing walked: the caller's hint stands
        seen |= set(got)
    # Spread over the pool, so concurrent claimers rarely draw the same address.
    assert len(seen) > 150 and max(seen) > ip("10.40.128.0") > min(seen)
    # No more than the claimer can try.
    assert len(core.candidates(n, taken, random.Random(1), 64, need=3)[0]) == 3


def test_a_pool_too_full_for_random_draws_is_walked() -> None:
    n = net("10.40.0.0/16")
    free = [ip("10.40.3.7"), ip("10.40.200.1"), ip("10.40.255.254")]
    taken = _AllBut({int(a) for a in free})
    got, hint = core.candidates(n, taken, random.Random(3), 8)
    assert sorted(got) == free
    assert hint == int(free[0])


class _AllBut:
    def __init__(self, free: set[int]) -> None:
        self.free = free

    def __contains__(self, item: object) -> bool:
        return item not in self.free


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("nope", "is not an IP address"),
        ("10.41.0.3", "outside network lan's subnet 10.40.0.0/29"),
        ("fd00::3", "outside network lan's subnet"),
        ("10.40.0.0", "network address"),
        ("10.40.0.7", "broadcast address"),
        ("10.40.0.1", "gateway or DNS server"),
    ],
)
def test_check_fixed_refuses_with_a_sentence(text: str, why: str) -> None:
    with pytest.raises(AddressError, match=why):
        core.check_fixed(net(gateway="10.40.0.1"), text)


def test_check_fixed_accepts_a_host_address() -> None:
    assert core.check_fixed(net(), "10.40.0.3") == ip("10.40.0.3")


# -- the claimer -------------------------------------------------------------------------


def claimer(pool: list[str], *, fixed: bool = False, attempts: int = 4) -> Claimer:
    return Claimer("k", net(), "w1", VOTERS, [ip(a) for a in pool], fixed, attempts, 1.0)


def test_a_majority_of_grants_fixes_the_address() -> None:
    c = claimer(["10.40.0.3", "10.40.0.4"])
    first = c.begin(0.0)
    assert first == Claim("k.1", "10.40.0.3", "lan", "w1")
    assert c.receive("a", Grant("k.1", "10.40.0.3"), 0.1) is None
    assert not c.done
    c.receive("b", Grant("k.1", "10.40.0.3"), 0.1)
    assert c.won == ip("10.40.0.3") and c.done and c.lost == []


def test_a_majority_of_denials_moves_to_the_next_candidate_and_releases_the_lost() -> None:
    c = claimer(["10.40.0.3", "10.40.0.4"])
    c.begin(0.0)
    c.receive("a", Grant("k.1", "10.40.0.3"), 0.1)
    c.receive("b", Deny("k.1", "10.40.0.3", "w9"), 0.1)
    nxt = c.receive("c", Deny("k.1", "10.40.0.3", "w9"), 0.1)
    assert nxt == Claim("k.2", "10.40.0.4", "lan", "w1")
    assert c.lost == ["10.40.0.3"]
    # A late answer to the old claim counts for nothing.
    assert c.receive("a", Grant("k.1", "10.40.0.3"), 0.2) is None
    c.receive("a", Grant("k.2", "10.40.0.4"), 0.2)
    c.receive("c", Grant("k.2", "10.40.0.4"), 0.2)
    assert c.won == ip("10.40.0.4")


def _vote(tables: dict[str, VoterTable], claim: Claim) -> dict[str, core.Reply]:
    """Each voter's answer to ``claim``, its grant (if any) held in its table."""
    replies: dict[str, core.Reply] = {}
    for voter, table in sorted(tables.items()):
        decision = table.decide(claim, 1.0, {})
        if isinstance(decision, Entry):
            table.put(decision)
            decision = Grant(claim.claim, decision.address)
        replies[voter] = decision
    return replies


def _release(tables: dict[str, VoterTable], c: Claimer) -> None:
    """What the shell does when a claim ends: ``Release`` of each lost address to all."""
    for table in tables.values():
        for address in c.lost:
            if table.releasable(Release(address, c.holder), {}):
                table.drop(address)


def test_a_claim_refused_before_a_slow_voter_granted_gives_that_grant_back() -> None:
    """A removed workload's fixed address, claimed again while only one voter has swept
    the tombstone: the two others deny before that voter's grant arrives. The refused
    claimer must still release it there, or the grant (to a holder that never runs)
    denies every later claim of the address until ``grant_ttl_s``."""
    address = "10.40.0.9"
    tables = {v: VoterTable([Entry(address, "lan", "w0", 0.0)]) for v in sorted(VOTERS)}
    tables["b"].drop(address)  # b swept w0's tombstone already; a and c not yet
    c = claimer([address], fixed=True, attempts=1)
    claim = c.begin(0.0)
    assert claim is not None
    replies = _vote(tables, claim)
    assert replies["b"] == Grant(claim.claim, address)
    c.receive("a", replies["a"], 0.1)
    c.receive("c", replies["c"], 0.1)
    assert c.refusal is not None and "held by workload w0" in c.refusal
    c.receive("b", replies["b"], 0.2)  # too late: the claim is over
    _release(tables, c)
    assert tables["b"].get(address) is None
    # Every voter has swept by now: a new claim of the address wins on all three.
    for table in tables.values():
        if (held := table.get(address)) is not None and held.holder == "w0":
            table.drop(address)
    again = Claimer("k2", net(), "w2", VOTERS, [ip(address)], True, 1, 1.0)
    claim = again.begin(2.0)
    assert claim is not None
    for voter, reply in _vote(tables, claim).items():
        again.receive(voter, reply, 2.1)
    assert again.won == ip(address)


def test_a_grant_for_an_attempt_given_up_is_given_back_one_for_the_address_won_kept() -> None:
    c = claimer(["10.40.0.3", "10.40.0.4"])
    c.begin(0.0)
    assert c.late("a", Grant("k.1", "10.40.0.3")) is None  # the current attempt
    c.receive("a", Deny("k.1", "10.40.0.3", "w9"), 0.1)
    c.receive("b", Deny("k.1", "10.40.0.3", "w9"), 0.1)  # moved on to k.2
    # c's grant of the first candidate comes late (the release at the claim's end may
    # have reached c before its claim did): given back at once.
    assert c.late("c", Grant("k.1", "10.40.0.3")) == Release("10.40.0.3", "w1")
    c.receive("a", Grant("k.2", "10.40.0.4"), 0.2)
    c.receive("b", Grant("k.2", "10.40.0.4"), 0.2)
    assert c.won == ip("10.40.0.4")
    assert c.late("c", Grant("k.2", "10.40.0.4")) is None  # the address won: kept
    assert c.late("c", Deny("k.1", "10.40.0.3", "w9")) is None
    assert c.late("zz", Grant("k.1", "10.40.0.3")) is None  # not a voter
    assert c.late("c", Grant("other.1", "10.40.0.3")) is None  # not this claimer's


def test_a_claim_timed_out_releases_on_the_voters_that_never_answered() -> None:
    c = claimer(["10.40.0.3"], fixed=True, attempts=1)
    c.begin(0.0)
    c.receive("a", Deny("k.1", "10.40.0.3", "w9"), 0.1)  # b and c silent
    assert c.tick(1.0) is None and c.refusal is not None
    assert c.lost == ["10.40.0.3"]  # their grants, if any came late, are released


def test_a_fixed_address_taken_is_refused_naming_its_holder() -> None:
    c = claimer(["10.40.0.3"], fixed=True, attempts=1)
    c.begin(0.0)
    c.receive("a", Deny("k.1", "10.40.0.3", "w9"), 0.1)
    c.receive("b", Deny("k.1", "10.40.0.3", "w9"), 0.1)
    assert c.won is None
    assert c.refusal is not None
    assert "10.40.0.3 on network lan is held by workload w9" in c.refusal


def test_an_empty_pool_is_full() -> None:
    c = claimer([])
    assert c.begin(0.0) is None
    assert c.refusal is not None and "has no free address left" in c.refusal


def test_every_candidate_denied_is_full() -> None:
    c = claimer(["10.40.0.3"])
    c.begin(0.0)
    for v in ("a", "b"):
        c.receive(v, Deny("k.1", "10.40.0.3", "w9"), 0.1)
    assert c.refusal is not None and "has no free address left" in c.refusal


def test_silence_moves_on_and_ends_with_no_majority() -> None:
    c = claimer(["10.40.0.3", "10.40.0.4"], attempts=2)
    c.begin(0.0)
    c.receive("a", Grant("k.1", "10.40.0.3"), 0.1)  # only this node answers
    assert c.tick(0.5) is None
    assert c.silent() == ["b", "c"]
    assert c.tick(1.0) == Claim("k.2", "10.40.0.4", "lan", "w1")
    assert c.lost == ["10.40.0.3"]
    c.receive("a", Grant("k.2", "10.40.0.4"), 1.1)
    assert c.tick(2.0) is None
    assert c.refusal is not None
    assert "no majority answered the address claim on network lan (1 of 3 voters, 2 needed)" in (
        c.refusal
    )


def test_a_voter_outside_the_roster_counts_for_nothing() -> None:
    c = claimer(["10.40.0.3"])
    c.begin(0.0)
    c.receive("zz", Grant("k.1", "10.40.0.3"), 0.1)
    c.receive("a", Grant("k.1", "10.40.0.3"), 0.1)
    assert not c.done


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_two_claimers_never_both_win_one_address(data: st.DataObject) -> None:
    """Voters with their own tables, two claimers racing for overlapping candidates,
    replies delivered (or lost) in any order: no address is won by both."""
    voters = sorted(data.draw(st.sets(st.sampled_from("abcde"), min_size=1)))
    tables = {v: VoterTable() for v in voters}
    pool = ["10.40.0.3", "10.40.0.4", "10.40.0.5"]
    claimers = [
        Claimer(
            f"k{i}",
            net(),
            f"w{i}",
            frozenset(voters),
            [ip(a) for a in data.draw(st.permutations(pool))],
            False,
            3,
            1.0,
        )
        for i in (1, 2)
    ]
    inflight: list[tuple[int, str, core.Msg]] = []  # (claimer index, voter, message)

    def send(i: int, claim: Claim | None) -> None:
        if claim is not None:
            inflight.extend((i, v, claim) for v in voters)

    for i, c in enumerate(claimers):
        send(i, c.begin(0.0))
    now = 0.0
    while inflight or not all(c.done for c in claimers):
        now += 0.1
        if not inflight:
            for i, c in enumerate(claimers):
                send(i, c.tick(now + 10.0))
            continue
        i, v, msg = inflight.pop(data.draw(st.integers(0, len(inflight) - 1)))
        if data.draw(st.booleans()) and data.draw(st.booleans()):
            continue  # lost
        if isinstance(msg, Claim):
            d = tables[v].decide(msg, now, {})
            if isinstance(d, Entry):
                tables[v].put(d)
                inflight.append((i, v, Grant(msg.claim, d.address)))
            else:
                inflight.append((i, v, d))
        elif isinstance(msg, Grant | Deny):
            send(i, claimers[i].receive(v, msg, now))
    won = [c.won for c in claimers if c.won is not None]
    assert len(won) == len(set(won))


def test_a_removed_workloads_address_is_reusable_only_once_nothing_can_run_it() -> None:
    roster = {"a", "b", "c"}
    # Its owner may still run it (cut off, not fenced, silent): held.
    assert not core.runs_nowhere("c", roster, None, fenced=False)
    # Someone else's word does not count; the owner's does.
    assert not core.runs_nowhere("c", roster, "b", fenced=False)
    assert core.runs_nowhere("c", roster, "c", fenced=False)
    # Fenced (verified off), gone from the roster, or never placed: nothing runs it.
    assert core.runs_nowhere("c", roster, None, fenced=True)
    assert core.runs_nowhere("c", {"a", "b"}, None, fenced=False)
    assert core.runs_nowhere(None, roster, None, fenced=False)


def test_a_dotted_quad_is_read_as_ipaddress_reads_it_and_only_when_canonical() -> None:
    def expected(text: str) -> int | None:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return None
        return int(ip) if ip.version == 4 and str(ip) == text else None

    rng = random.Random(5)
    odd = ["1.2.3.4", "01.2.3.4", "1.2.3", "256.1.1.1", "0.0.0.0", "1.2.3.4 ", "\uff11.2.3.4"]
    odd += ["1.2.3.4\x00", "+1.2.3.4", "0x1.2.3.4", "00.0.0.0", "", "1.2.3.4/28", "٣.2.3.4"]
    alphabet = "0123456789.x \x00\u0661"
    for _ in range(20000):
        odd.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 15))))
        octets = [str(rng.randint(0, 300)).zfill(rng.choice([1, 1, 2, 3])) for _ in range(4)]
        odd.append(".".join(octets[: rng.choice([3, 4, 4, 5])]))
    for text in odd:
        assert core._v4(text) == expected(text), repr(text)
