"""The frames that announce a guest's address, byte for byte (meshd.core.announcement)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from meshd.adapters.announcer import Announcer
from meshd.core.announcement import announcement, gratuitous_arp, mac_bytes, unsolicited_na

MAC = "0e:01:02:03:04:05"


def test_a_gratuitous_arp_is_an_rfc5227_announcement_from_the_guest_mac() -> None:
    frame = gratuitous_arp(ipaddress.IPv4Address("10.77.0.11"), MAC)
    assert frame.hex(" ") == (
        "ff ff ff ff ff ff "  # to everyone
        "0e 01 02 03 04 05 "  # from the guest's MAC (switches learn its port)
        "08 06 "  # ARP
        "00 01 08 00 06 04 "  # Ethernet / IPv4, 6- and 4-byte addresses
        "00 01 "  # request
        "0e 01 02 03 04 05 0a 4d 00 0b "  # sender: the guest's MAC and IP
        "00 00 00 00 00 00 0a 4d 00 0b"  # target: no MAC, the same IP
    )


def test_an_unsolicited_na_overrides_to_all_nodes_with_hop_limit_255() -> None:
    frame = unsolicited_na(ipaddress.IPv6Address("fd00:77::11"), MAC)
    guest = "fd 00 00 77 00 00 00 00 00 00 00 00 00 00 00 11"
    assert frame.hex(" ") == (
        "33 33 00 00 00 01 "  # to all nodes' multicast MAC
        "0e 01 02 03 04 05 "
        "86 dd "  # IPv6
        "60 00 00 00 00 20 3a ff "  # version 6, 32 bytes of ICMPv6, hop limit 255
        f"{guest} "  # from the guest's address
        "ff 02 00 00 00 00 00 00 00 00 00 00 00 00 00 01 "  # to ff02::1
        "88 00 47 85 "  # neighbour advertisement, code 0, checksum
        "20 00 00 00 "  # Override, not Solicited, not Router
        f"{guest} "  # target: the guest's address
        "02 01 0e 01 02 03 04 05"  # target link-layer address option
    )


def test_the_na_checksum_verifies() -> None:
    ip = ipaddress.IPv6Address("2001:db8::abcd")
    frame = unsolicited_na(ip, "0e:ff:fe:10:20:30")
    icmp = frame[14 + 40 :]
    pseudo = ip.packed + ipaddress.IPv6Address("ff02::1").packed + bytes([0, 0, 0, 32, 0, 0, 0, 58])
    data = pseudo + icmp
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF


def test_announcement_picks_the_frame_by_family() -> None:
    v4, v6 = ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("fd00::5")
    assert announcement(v4, MAC) == gratuitous_arp(v4, MAC)  # type: ignore[arg-type]
    assert announcement(v6, MAC) == unsolicited_na(v6, MAC)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "0e:01:02:03:04", "0e-01-02-03-04-05", "zz:01:02:03:04:05"])
def test_a_bad_mac_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        mac_bytes(bad)


async def test_a_detached_workloads_announcements_stop_and_a_bad_bridge_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No socket reaches a device here: the bridge does not exist (or, unprivileged,
    the raw socket is refused); either way the failure is a log line."""
    announcer = Announcer(count=3, interval_s=60.0)
    ip = ipaddress.ip_address("10.77.0.21")
    assert announcer.start("w-one", "h13gnone", ip, MAC) is False
    announcer.start("w-two", "h13gnone", ip, MAC)
    assert "cannot announce on h13gnone" in caplog.text
    assert (announcer.pending("w-one"), announcer.pending("w-two")) == (1, 1)
    await announcer.forget("w-one")
    await asyncio.sleep(0)
    assert (announcer.pending("w-one"), announcer.pending("w-two")) == (0, 1)
    await announcer.close()
    await asyncio.sleep(0)
    assert announcer.pending("w-two") == 0


async def test_no_announcements_when_turned_off() -> None:
    announcer = Announcer(count=0, interval_s=1.0)
    assert announcer.start("w", "h13gnone", ipaddress.ip_address("10.0.0.1"), MAC) is False
    assert announcer.pending("w") == 0
