"""Service names: the three forms parse, bad ones are refused, selection honours liveness."""

from __future__ import annotations

import random

import pytest

from meshd.core.names import Instance, NameQuery, parse, select
from meshd.errors import NamingError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@blog@alpha@lab.example", NameQuery("blog", "lab.example", "alpha")),
        ("@blog@*@lab.example", NameQuery("blog", "lab.example", None, any=True)),
        ("@blog@lab.example", NameQuery("blog", "lab.example", None)),
    ],
)
def test_forms(text: str, expected: NameQuery) -> None:
    assert parse(text) == expected
    assert parse(text).key == "svc/lab.example/blog"


@pytest.mark.parametrize(
    "bad", ["blog", "@blog", "@@alpha@x", "@Blog@x", "@blog@al_pha@x", "blog@a@b", "@a@b@c@d", ""]
)
def test_bad_names(bad: str) -> None:
    with pytest.raises(NamingError, match="name"):
        parse(bad)


INST = [
    Instance("blog", "alpha", "10.0.0.1", 80, "tcp"),
    Instance("blog", "beta", "10.0.0.2", 80, "tcp"),
    Instance("blog", "gamma", "10.0.0.3", 80, "tcp"),
    Instance("db", "beta", "10.0.0.2", 5432, "tcp"),
]


def test_all_excludes_dead_nodes() -> None:
    got = select(parse("@blog@lab.example"), INST, {"alpha", "gamma"}, "x", random.Random(1))
    assert [i.node for i in got] == ["alpha", "gamma"]


def test_one_node() -> None:
    q = parse("@blog@beta@lab.example")
    assert [i.node for i in select(q, INST, {"beta"}, "x", random.Random(1))] == ["beta"]
    assert select(q, INST, {"alpha"}, "x", random.Random(1)) == []


def test_any_prefers_self_then_spreads() -> None:
    q = parse("@blog@*@lab.example")
    live = {"alpha", "beta", "gamma"}
    assert [i.node for i in select(q, INST, live, "beta", random.Random(1))] == ["beta"]
    seen = {select(q, INST, live, "zeta", random.Random(s))[0].node for s in range(50)}
    assert seen == live


def test_record_round_trip_and_garbage() -> None:
    assert Instance.decode(INST[0].encode()) == INST[0]
    for bad in [
        b"",
        b"{}",
        b"[1]",
        b'{"service":"a","node":"b","address":"c","port":0,"proto":"tcp"}',
    ]:
        with pytest.raises(NamingError):
            Instance.decode(bad)
