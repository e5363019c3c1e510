"""Our certificate goes ahead of compact datagrams until the receiver has verified us."""

from __future__ import annotations

from meshd.shell.introductions import Introductions

A = ("127.0.0.1", 7001)
B = ("127.0.0.1", 7002)


def test_a_node_that_never_answered_gets_our_certificate_once_a_second() -> None:
    intro = Introductions(every_s=1.0)
    assert intro.due(A, 10.0)
    assert not intro.due(A, 10.5)  # a probe, its gossip and acks in one second: once
    assert intro.due(B, 10.5)  # per address
    assert intro.due(A, 11.0)


def test_an_ack_ends_the_introductions_until_the_node_leaves() -> None:
    intro = Introductions(every_s=1.0)
    assert intro.due(A, 0.0)
    intro.verified_by(A)
    assert not intro.due(A, 5.0)
    intro.forget(A)  # dead or left: it may come back reinstalled, without our cert
    assert intro.due(A, 5.0)


def test_memory_stays_bounded_under_many_addresses() -> None:
    intro = Introductions(every_s=1.0, memory=8)
    for i in range(100):
        assert intro.due(("10.0.0.1", i), float(i))
    assert len(intro._sent_at) <= 8
