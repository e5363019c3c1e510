"""A DNS server for mesh names (``meshd run --dns HOST:PORT``), so ordinary programs and
``dig`` resolve ``web.alpha.lab.example`` as ``meshd resolve @web@alpha@lab.example``.

Questions are read as mesh name queries by :mod:`meshd.core.dns_names` and answered from
the same signed DHT service records and membership as ``meshd resolve`` (a dead node's
names stop answering as soon as it is declared dead), workloads' guest addresses
included: a workload with NICs publishes its services at its guest's address.

* A / AAAA: the instances' addresses; SRV: priority 0, weight 1, the port, and the
  target ``service.node.domain`` (whose A/AAAA records go in the additional section).
* A name in the domain that names nothing: NXDOMAIN; a name outside it: REFUSED (this
  is not a recursive resolver); a record type it does not serve: an empty answer.
* Answers carry ``dns.ttl_s``; lookups are cached for ``dns.cache_s`` (0: none), so a
  burst of queries costs one DHT lookup.
* A datagram that is not a DNS query is dropped (logged at debug); an answer too large
  for the client's UDP size is sent truncated (TC) for the client to retry over TCP,
  which this server does not offer: keep answers small (a few dozen instances).

The wire format is dnspython's (a well-kept library), imported only when ``--dns`` is
given, so daemons without it pay nothing at start-up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from meshd.config import DnsConfig
from meshd.core import dns_names
from meshd.core.names import Instance, NameQuery
from meshd.metrics import Registry
from meshd.units import parse_hostport

logger = logging.getLogger(__name__)
Resolve = Callable[[NameQuery], Awaitable[list[Instance]]]
UDP_PLAIN = 512  # a client without EDNS takes this much


class DnsServer(asyncio.DatagramProtocol):
    def __init__(
        self,
        domain: str,
        resolve: Resolve,
        cfg: DnsConfig,
        metrics: Registry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.domain = domain
        self._resolve = resolve
        self._cfg = cfg
        self._clock = clock
        self._cache: dict[tuple[str, str | None], tuple[float, list[Instance]]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.queries = metrics.counter("meshd_dns_queries_total", "DNS questions, by rcode")
        self.address: tuple[str, int] | None = None

    async def start(self, listen: str) -> tuple[str, int]:
        host, port = parse_hostport(listen, "--dns")
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self._transport = transport
        sock = transport.get_extra_info("sockname")
        self.address = (str(sock[0]), int(sock[1]))
        logger.info("dns serving domain=%s address=%s:%s", self.domain, *self.address)
        return self.address

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
        for task in self._tasks:
            task.cancel()

    # -- the protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio's, though it is one.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._answer_to(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_to(self, data: bytes, addr: Any) -> None:
        try:
            wire = await self.answer(data)
        except Exception:  # one bad question must not cost the server
            logger.exception("dns answer failed from=%s", addr)
            return
        if wire is not None and self._transport is not None:
            self._transport.sendto(wire, addr)

    # -- answers ------------------------------------------------------------------------

    async def answer(self, data: bytes) -> bytes | None:
        """The wire answer to one query datagram; None to drop it (not a DNS query)."""
        try:
            q = dns.message.from_wire(data)
        except (dns.exception.DNSException, ValueError) as exc:
            logger.debug("dns dropped a malformed datagram error=%s", exc)
            return None
        if q.flags & dns.flags.QR:
            return None  # an answer, not a question: never answer answers
        resp = dns.message.make_response(q)
        rcode = await self._fill(q, resp)
        resp.set_rcode(rcode)
        self.queries.inc(rcode=dns.rcode.to_text(rcode).lower())
        limit = max(UDP_PLAIN, q.payload) if q.edns >= 0 else UDP_PLAIN
        try:
            out: bytes = resp.to_wire(max_size=limit)
        except dns.exception.TooBig:
            resp.answer.clear()
            resp.additional.clear()
            resp.flags |= dns.flags.TC
            out = resp.to_wire(max_size=limit)
        return out

    async def _fill(self, q: dns.message.Message, resp: dns.message.Message) -> dns.rcode.Rcode:
        if q.opcode() != dns.opcode.QUERY:
            return dns.rcode.NOTIMP
        if len(q.question) != 1:
            return dns.rcode.FORMERR
        question = q.question[0]
        qname = question.name.to_text()
        if question.rdclass != dns.rdataclass.IN or not dns_names.in_domain(qname, self.domain):
            return dns.rcode.REFUSED
        resp.flags |= dns.flags.AA
        asked = dns_names.read(qname, self.domain)
        if asked is None:
            return dns.rcode.NXDOMAIN
        found = [
            i
            for i in await self._lookup(asked.query)
            if asked.proto is None or i.proto == asked.proto
        ]
        if not found:
            return dns.rcode.NXDOMAIN
        ttl = int(self._cfg.ttl_s)
        qtype = question.rdtype
        if qtype in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.ANY):
            self._addresses(resp, resp.answer, question.name, found, qtype, ttl)
        if qtype in (dns.rdatatype.SRV, dns.rdatatype.ANY):
            rrset = resp.find_rrset(
                resp.answer, question.name, dns.rdataclass.IN, dns.rdatatype.SRV, create=True
            )
            for inst in found:
                target = f"{inst.service}.{inst.node}.{self.domain}."
                rrset.add(_rdata(dns.rdatatype.SRV, f"0 1 {inst.port} {target}"), ttl)
                tname = dns.name.from_text(target)
                self._addresses(resp, resp.additional, tname, [inst], dns.rdatatype.ANY, ttl)
        return dns.rcode.NOERROR

    def _addresses(
        self,
        resp: dns.message.Message,
        section: list[Any],
        name: dns.name.Name,
        found: list[Instance],
        qtype: dns.rdatatype.RdataType,
        ttl: int,
    ) -> None:
        for inst in found:
            try:
                ip = ipaddress.ip_address(inst.address)
            except ValueError:
                continue  # a host name, not an address: nothing to put in A/AAAA
            rtype = dns.rdatatype.A if ip.version == 4 else dns.rdatatype.AAAA
            if qtype not in (rtype, dns.rdatatype.ANY):
                continue
            rrset = resp.find_rrset(section, name, dns.rdataclass.IN, rtype, create=True)
            rrset.add(_rdata(rtype, str(ip)), ttl)

    async def _lookup(self, query: NameQuery) -> list[Instance]:
        key = (query.service, query.node)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = await self._resolve(query)
        if self._cfg.cache_s > 0:
            if len(self._cache) > self._cfg.cache_entries:
                self._cache.clear()
            self._cache[key] = (now + self._cfg.cache_s, found)
        return found


def _rdata(rtype: dns.rdatatype.RdataType, text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(dns.rdataclass.IN, rtype, text)
