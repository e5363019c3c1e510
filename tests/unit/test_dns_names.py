"""DNS names read as mesh name queries (meshd.core.dns_names)."""

from __future__ import annotations

import pytest

from meshd.core.dns_names import DnsQuery, in_domain, read
from meshd.core.names import NameQuery

D = "lab.example"


@pytest.mark.parametrize(
    ("qname", "expected"),
    [
        ("web.alpha.lab.example.", DnsQuery(NameQuery("web", D, "alpha"))),
        ("WEB.Alpha.LAB.example", DnsQuery(NameQuery("web", D, "alpha"))),  # RFC 4343
        ("web.lab.example.", DnsQuery(NameQuery("web", D, None))),
        ("_web._tcp.lab.example.", DnsQuery(NameQuery("web", D, None), "tcp")),
        ("_web._udp.lab.example.", DnsQuery(NameQuery("web", D, None), "udp")),
        ("_web._sctp.lab.example.", None),
        ("a.b.c.lab.example.", None),  # deeper than service.node
        ("lab.example.", None),  # the domain itself names no service
        ("web.alpha.other.example.", None),
        ("we_b.lab.example.", None),  # not a label meshd gives out
        ("-web.lab.example.", None),
    ],
)
def test_dns_names_read_as_mesh_queries(qname: str, expected: DnsQuery | None) -> None:
    assert read(qname, D) == expected


def test_in_domain_is_by_whole_labels() -> None:
    assert in_domain("web.lab.example.", D) and in_domain("LAB.EXAMPLE", D)
    assert not in_domain("web.evillab.example.", D)
    assert not in_domain("example.", D)
