"""Networks as mesh-wide objects: validation rows, the codec, the merge properties."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core import network
from meshd.core.network import Network, NetworkTable
from meshd.errors import EnvelopeError, NetworkConflictError, NetworkError


def N(
    name: str = "lan",
    subnet: str = "10.40.0.0/24",
    *,
    version: int = 10,
    by: str = "n1",
    removed: bool = False,
) -> Network:
    n = network.define(name, subnet, version=version, by=by)
    return Network(n.name, n.subnet, None, n.bridge, None, (), removed, version, by)


# -- validation: each refusal says what to change -----------------------------------

GOOD = [
    dict(name="lan", subnet="10.40.0.0/24"),
    dict(name="v6", subnet="fd00:40::/64", gateway="fd00:40::1", dns=["fd00::53"]),
    dict(name="tiny", subnet="192.168.9.0/30", gateway="192.168.9.1"),
    dict(name="tiny6", subnet="fd00:9::/126"),
    dict(name="tagged", subnet="10.1.0.0/16", vlan=1, bridge="br0"),
    dict(name="tagged2", subnet="10.2.0.0/16", vlan=4094, bridge="a" * 15),
    dict(name="dns", subnet="10.3.0.0/24", dns=["1.1.1.1", "2606:4700:4700::1111"]),
]


@pytest.mark.parametrize("kw", GOOD)
def test_valid_definitions_are_accepted(kw: dict[str, object]) -> None:
    n = network.define(version=1, by="n1", **kw)  # type: ignore[arg-type]
    assert n.name == kw["name"] and str(n.subnet) == kw["subnet"] and not n.removed
    assert network.decode(network.encode(n)) == n  # and survive the wire


BAD = [
    (dict(subnet="10.40.0.0/33"), "write it as CIDR"),
    (dict(subnet="banana"), "write it as CIDR"),
    (dict(subnet="10.40.0.0"), "no prefix length"),
    (dict(subnet="10.40.0.7/24"), "did you mean 10.40.0.0/24"),
    (dict(subnet="10.40.0.0/31"), "use a prefix of /30 or shorter"),
    (dict(subnet="10.40.0.0/32"), "too small"),
    (dict(subnet="fd00::/127"), "use a prefix of /126 or shorter"),
    (dict(subnet="fd00::/128"), "too small"),
    (dict(gateway="10.41.0.1"), "outside subnet 10.40.0.0/24"),
    (dict(gateway="fd00::1"), "outside subnet"),
    (dict(gateway="10.40.0.0"), "network address"),
    (dict(gateway="10.40.0.255"), "broadcast address"),
    (dict(gateway="gw"), "not an IP address"),
    (dict(vlan=0), "from 1 to 4094"),
    (dict(vlan=4095), "from 1 to 4094"),
    (dict(bridge="a" * 16), "1-15 characters"),
    (dict(bridge="br/0"), "no '/'"),
    (dict(bridge="br 0"), "whitespace"),
    (dict(bridge=""), "1-15 characters"),
    (dict(dns=["dns.example"]), "DNS server 'dns.example' is not an IP address"),
    (dict(name="Lan"), "lowercase letters"),
    (dict(name="-lan"), "starting and ending"),
    (dict(name="a" * 64), "1-63"),
    (dict(name="l_an"), "invalid network name"),
]


@pytest.mark.parametrize(("kw", "says"), BAD)
def test_invalid_definitions_are_refused_with_a_sentence(kw: dict[str, object], says: str) -> None:
    args: dict[str, object] = {"name": "lan", "subnet": "10.40.0.0/24", **kw}
    with pytest.raises(NetworkError) as info:
        network.define(version=1, by="n1", **args)  # type: ignore[arg-type]
    assert says in str(info.value)


def test_default_bridge_is_a_valid_interface_name() -> None:
    n = network.define("a" * 63, "10.0.0.0/8", version=1, by="n1")
    assert n.bridge == network.check_bridge(n.bridge) and len(n.bridge) == 15


def test_json_has_the_interface_keys() -> None:
    n = network.define(
        "lan", "10.40.0.0/24", gateway="10.40.0.1", vlan=7, dns=["10.40.0.2"], version=5, by="n2"
    )
    assert n.to_json() == {
        "name": "lan",
        "subnet": "10.40.0.0/24",
        "gateway": "10.40.0.1",
        "bridge": "br-lan",
        "vlan": 7,
        "dns": ["10.40.0.2"],
        "created_by": "n2",
        "version": 5,
    }


# -- overlap and name conflicts at create time --------------------------------------


@pytest.mark.parametrize(
    ("existing", "new", "refused"),
    [
        ("10.40.0.0/24", "10.40.0.0/24", True),
        ("10.40.0.0/16", "10.40.7.0/24", True),  # inside
        ("10.40.7.0/24", "10.40.0.0/16", True),  # around
        ("10.40.0.0/24", "10.40.1.0/24", False),  # next door
        ("10.40.0.0/24", "fd00::/64", False),  # another family
        ("fd00::/48", "fd00:0:0:1::/64", True),
    ],
)
def test_overlapping_subnets_are_refused(existing: str, new: str, refused: bool) -> None:
    t = NetworkTable()
    t.merge(N("old", existing), b"s")
    if refused:
        with pytest.raises(NetworkConflictError, match="overlaps network old"):
            t.check_create(N("new", new))
    else:
        t.check_create(N("new", new))


def test_a_removed_network_frees_its_name_and_subnet() -> None:
    t = NetworkTable()
    t.merge(N("lan", version=10), b"a")
    with pytest.raises(NetworkConflictError, match="already exists"):
        t.check_create(N("lan", "10.99.0.0/24"))
    t.merge(N("lan", version=11, removed=True), b"b")
    assert t.networks() == [] and t.live("lan") is None
    again = N("lan", version=t.next_version("lan", 5))
    t.check_create(again)
    assert again.version == 12 and t.merge(again, b"c") and t.live("lan") == again


# -- the codec refuses what no operator could have made -----------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"n":"lan"}',
        network.encode(N()).replace(b'"v":10', b'"v":-1'),
        network.encode(N()).replace(b'"v":10', b'"v":true'),
        network.encode(N()).replace(b'"r":false', b'"r":0'),
        network.encode(N()).replace(b"10.40.0.0/24", b"10.40.0.0/32"),
        network.encode(N()).replace(b'"vl":null', b'"vl":5000'),
        network.encode(N()).replace(b'"br":"br-lan"', b'"br":"b/r"'),
        network.encode(N()).replace(b'"d":[]', b'"d":["x"]'),
        network.encode(N()).replace(b'"g":null', b'"g":"10.99.0.1"'),
        network.encode(N()).replace(b'"n":"lan"', b'"n":"LAN"'),
        network.encode(N()).replace(b'"b":"n1"', b'"b":""'),
    ],
)
def test_decode_refuses_bad_records(body: bytes) -> None:
    with pytest.raises(EnvelopeError):
        network.decode(body)


# -- last writer wins: commutative, associative, idempotent -------------------------


@pytest.mark.parametrize(
    ("held", "incoming", "kept"),
    [
        (None, N(), True),
        (N(version=10), N(version=11, removed=True), True),  # a later rm wins
        (N(version=11, removed=True), N(version=10), False),  # a replayed old create
        (N(version=10), N(version=10), False),  # the same record again
        (N(version=10, by="n1"), N(version=10, by="n3"), True),  # ties go by signer
        (N(version=10), N(version=10, removed=True), True),  # then the tombstone wins
        (N(version=11, removed=True), N(version=12), True),  # created again later
    ],
)
def test_merge_rule(held: Network | None, incoming: Network, kept: bool) -> None:
    t = NetworkTable()
    if held is not None:
        t.merge(held, b"h")
    assert t.merge(incoming, b"i") is kept
    assert t.get(incoming.name) == (incoming if kept else held)


records = st.builds(
    N,
    name=st.sampled_from(["a", "b", "c"]),
    subnet=st.sampled_from(["10.0.0.0/24", "10.0.0.0/16", "fd00::/64"]),
    version=st.integers(0, 4),
    by=st.sampled_from(["n1", "n2", "n3"]),
    removed=st.booleans(),
)


def _state(rs: list[Network]) -> dict[str, Network]:
    t = NetworkTable()
    for r in rs:
        t.merge(r, network.encode(r))
    return {r.name: r for r in t.records()}


@given(st.lists(records, max_size=8))
def test_merge_is_order_free_and_idempotent(rs: list[Network]) -> None:
    want = _state(rs)
    for perm in itertools.islice(itertools.permutations(rs), 24):  # commutative
        assert _state(list(perm)) == want
    assert _state(rs + rs) == want  # idempotent


@given(st.lists(records, max_size=5), st.lists(records, max_size=5), st.lists(records, max_size=5))
def test_merge_is_associative(a: list[Network], b: list[Network], c: list[Network]) -> None:
    # merging a table into another = merging its records; (a+b)+c == a+(b+c)
    ab = list(_state(a + b).values())
    bc = list(_state(b + c).values())
    assert _state(ab + c) == _state(a + bc)


def test_network_core_is_pure() -> None:
    tree = ast.parse(Path(network.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    assert not names & {"asyncio", "socket", "apsw", "aiohttp", "time", "random", "os"}
