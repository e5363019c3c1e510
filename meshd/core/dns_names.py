"""Mesh names as DNS names: which ``@service@node@domain`` query a DNS question asks.

``meshd run --dns HOST:PORT`` answers DNS for the mesh's domain (``meshd.shell.dns``).
A question maps to a name query (:mod:`meshd.core.names`) like this, for domain
``lab.example``:

=================================  =============================  =====================
DNS name                           mesh name                      answers
=================================  =============================  =====================
``web.alpha.lab.example``          ``@web@alpha@lab.example``     A/AAAA, SRV
``web.lab.example``                ``@web@lab.example`` (all)     A/AAAA, SRV
``_web._tcp.lab.example``          ``@web@lab.example``, TCP ones  SRV (RFC 2782)
=================================  =============================  =====================

Names are case-insensitive (RFC 4343). A name outside the domain is not ours (the server
answers REFUSED); a name inside it that is not one of these forms does not exist
(NXDOMAIN). Pure: no IO.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshd.core.names import NameQuery

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


@dataclass(frozen=True, slots=True)
class DnsQuery:
    """A DNS name read as a mesh name query; ``proto`` set for the RFC 2782 form."""

    query: NameQuery
    proto: str | None = None


def in_domain(qname: str, domain: str) -> bool:
    name, dom = qname.lower().rstrip("."), domain.lower().rstrip(".")
    return name == dom or name.endswith("." + dom)


def read(qname: str, domain: str) -> DnsQuery | None:
    """The mesh query ``qname`` asks, or None if it names nothing meshd could answer."""
    name, dom = qname.lower().rstrip("."), domain.lower().rstrip(".")
    if not name.endswith("." + dom):
        return None
    labels = name[: -len(dom) - 1].split(".")
    if len(labels) == 2 and labels[0].startswith("_") and labels[1] in ("_tcp", "_udp"):
        service = labels[0][1:]
        if _LABEL.match(service):
            return DnsQuery(NameQuery(service, domain, None), labels[1][1:])
        return None
    if not all(_LABEL.match(label) for label in labels):
        return None
    if len(labels) == 1:
        return DnsQuery(NameQuery(labels[0], domain, None))
    if len(labels) == 2:
        return DnsQuery(NameQuery(labels[0], domain, labels[1]))
    return None
