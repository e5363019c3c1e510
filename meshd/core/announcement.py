"""Announcing a guest's address on its segment: gratuitous ARP, unsolicited NA (issue 13).

Theory of operation
-------------------
A guest's address may come back with a new MAC (the address was freed and granted to
another workload) or the same MAC may come back behind another blade (a re-placement
after a fence). Peers on the segment still hold the old neighbour entry (Linux keeps a
REACHABLE entry ~30 s without asking again) and switches the old port, and many guests
(busybox udhcpc, a static address) announce nothing. So the node that attaches one of
its own guests' NICs announces the guest's (IP, MAC) for it, as ``arping -U`` would:

* IPv4: a gratuitous ARP *request* (RFC 5227 §3 "ARP Announcement": sender and target
  IP both the guest's, target hardware address zero) broadcast from the guest's MAC.
  Linux updates an existing entry from it (``arp_process``: ``is_garp`` overrides the
  lock time; a request leaves the entry STALE with the new MAC) and creates none
  unless ``arp_accept``; the Ethernet source teaches switches the guest's port.
* IPv6: an unsolicited Neighbor Advertisement (RFC 4861 §7.2.6) to all-nodes
  ``ff02::1``, Override set, Solicited clear, with the Target Link-Layer Address
  option, from the guest's address, hop limit 255 (receivers drop anything else).

Only frames are built here, byte for byte (tests compare them with hand-written
ones); :mod:`meshd.adapters.announcer` sends them on the bridge. Pure: no IO.
"""

from __future__ import annotations

import ipaddress
import struct

from meshd.core.network import Address

BROADCAST = b"\xff" * 6
ETH_ARP = 0x0806
ETH_IPV6 = 0x86DD
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"  # RFC 2464 §7: 33:33 + low 32 bits
ICMPV6 = 58
NEIGHBOR_ADVERT = 136
NA_OVERRIDE = 0x20000000
TARGET_LLADDR = 2


def mac_bytes(mac: str) -> bytes:
    """``0e:aa:bb:cc:dd:ee`` as 6 bytes (ValueError: not a MAC)."""
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes(int(p, 16) for p in parts)


def gratuitous_arp(ip: ipaddress.IPv4Address, mac: str) -> bytes:
    """The Ethernet frame announcing ``ip`` at ``mac`` (42 bytes, no padding)."""
    hw = mac_bytes(mac)
    arp = struct.pack(
        "!HHBBH6s4s6s4s",
        1,  # hardware: Ethernet
        0x0800,  # protocol: IPv4
        6,
        4,
        1,  # request (RFC 5227 §2.3: an announcement is a request)
        hw,
        ip.packed,
        b"\x00" * 6,
        ip.packed,
    )
    return BROADCAST + hw + struct.pack("!H", ETH_ARP) + arp


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def unsolicited_na(ip: ipaddress.IPv6Address, mac: str) -> bytes:
    """The Ethernet frame advertising ``ip`` at ``mac`` to all nodes (86 bytes)."""
    hw = mac_bytes(mac)
    option = struct.pack("!BB6s", TARGET_LLADDR, 1, hw)  # length in units of 8 bytes
    body = struct.pack("!I16s", NA_OVERRIDE, ip.packed) + option
    length = 4 + len(body)  # type, code, checksum
    pseudo = ip.packed + ALL_NODES.packed + struct.pack("!I3xB", length, ICMPV6)
    icmp = struct.pack("!BBH", NEIGHBOR_ADVERT, 0, 0) + body
    icmp = icmp[:2] + struct.pack("!H", _checksum(pseudo + icmp)) + icmp[4:]
    header = struct.pack("!IHBB16s16s", 6 << 28, length, ICMPV6, 255, ip.packed, ALL_NODES.packed)
    return ALL_NODES_MAC + hw + struct.pack("!H", ETH_IPV6) + header + icmp


def announcement(ip: Address, mac: str) -> bytes:
    """The frame announcing ``ip`` at ``mac``: a gratuitous ARP or an unsolicited NA."""
    if isinstance(ip, ipaddress.IPv4Address):
        return gratuitous_arp(ip, mac)
    return unsolicited_na(ip, mac)
