"""What meshd does to the host's network for its guests: bridges, addresses, taps, guard.

Thin: each function runs iproute2 (``ip``, ``bridge``) or ``nft`` with a timeout
through :func:`meshd.adapters.drivers.qemu_host.run_tool`, makes a tap with ioctls
(:mod:`meshd.adapters.taps`), or reads sysfs/procfs; the
texts and decisions come from :mod:`meshd.core.guest_net`. Failures are DriverErrors
saying what to do (the runner marks the workload failed; nothing crashes the daemon).
Root only, in the network namespace meshd runs in.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from meshd.adapters.drivers import qemu_host
from meshd.adapters.drivers.qemu_host import has_netdev, run_tool
from meshd.core.guest_net import METADATA_IP, guard_ruleset
from meshd.core.network import Address
from meshd.core.nic import TAP_PREFIX
from meshd.errors import DriverError

logger = logging.getLogger(__name__)
SYS_NET = Path("/sys/class/net")
BRIDGE_NF = ("iptables", "arptables", "ip6tables")


def bridge_exists(bridge: str) -> bool:
    return has_netdev(bridge, "bridge")


def ports_of(bridge: str) -> list[str]:
    """The interfaces enslaved to ``bridge`` (sysfs ``brif``)."""
    try:
        return sorted(p.name for p in (SYS_NET / bridge / "brif").iterdir())
    except OSError:
        return []


def uplinks_of(bridges: list[str]) -> list[str]:
    """The ports of ``bridges`` that are not guests' taps."""
    return sorted({p for b in bridges for p in ports_of(b) if not p.startswith(TAP_PREFIX)})


def bridge_nf_off(proc: Path = Path("/proc/sys/net/bridge")) -> None:
    """``bridge-nf-call-*`` = 0 in this namespace (new namespaces start at 1 and send
    bridged frames through iptables). Absent when br_netfilter is not loaded: fine."""
    for name in BRIDGE_NF:
        path = proc / f"bridge-nf-call-{name}"
        with contextlib.suppress(OSError):
            if path.read_text().strip() != "0":
                path.write_text("0\n")


async def ensure_bridge(
    bridge: str, mac: str, create: bool, uplink: str | None, vlan: int | None, timeout_s: float
) -> str | None:
    """Make sure ``bridge`` exists and is up with ``mac``; None, or a sentence saying
    what could not be done beside it (a VLAN the kernel refuses)."""
    note = None
    if not bridge_exists(bridge):
        if not create:
            raise DriverError(
                f"bridge {bridge} does not exist on this node: create it and attach it to the "
                "network's segment, or set [guests] create_bridges = true"
            )
        await run_tool(
            [
                "ip", "link", "add", bridge, "address", mac, "type", "bridge",
                "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0",
            ],
            f"cannot create bridge {bridge}",
            timeout_s,
        )  # fmt: skip
        if uplink:
            note = await _attach_uplink(bridge, uplink, vlan, timeout_s)
    else:
        current = _read(SYS_NET / bridge / "address")
        if current != mac:
            await run_tool(
                ["ip", "link", "set", bridge, "address", mac],
                f"cannot set the MAC of bridge {bridge}",
                timeout_s,
            )
    await run_tool(["ip", "link", "set", bridge, "up"], f"cannot bring {bridge} up", timeout_s)
    return note


async def _attach_uplink(
    bridge: str, uplink: str, vlan: int | None, timeout_s: float
) -> str | None:
    if not has_netdev(uplink):
        return f"uplink {uplink} does not exist: bridge {bridge} reaches no other node"
    port = uplink
    if vlan is not None:
        port = f"{uplink[:10]}.{vlan}"[:15]
        if not has_netdev(port):
            try:
                await run_tool(
                    ["ip", "link", "add", "link", uplink, "name", port, "type", "vlan",
                     "id", str(vlan)],
                    f"cannot add VLAN {vlan} on {uplink}",
                    timeout_s,
                )  # fmt: skip
            except DriverError as exc:
                return (
                    f"{exc} (this kernel may lack 802.1Q): bridge {bridge} is not on "
                    f"VLAN {vlan}; attach it to the segment by hand"
                )
    try:
        await run_tool(
            ["ip", "link", "set", port, "master", bridge, "up"],
            f"cannot attach {port} to {bridge}",
            timeout_s,
        )
    except DriverError as exc:
        return str(exc)
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


async def ensure_address(bridge: str, ip: Address, prefixlen: int, timeout_s: float) -> None:
    """``ip/prefixlen`` and 169.254.169.254/32 on ``bridge`` (``replace``: idempotent)."""
    for addr in (f"{ip}/{prefixlen}", f"{METADATA_IP}/32"):
        await run_tool(
            ["ip", "addr", "replace", addr, "dev", bridge, "noprefixroute"]
            if addr.startswith(str(METADATA_IP))
            else ["ip", "addr", "replace", addr, "dev", bridge],
            f"cannot put {addr} on {bridge}",
            timeout_s,
        )


async def tap_up(tap: str, bridge: str, timeout_s: float) -> bool:
    """A tap on ``bridge``; an existing one on it is left as it is (a running guest
    holds it: a restarted meshd reattaches). True when it was made now."""
    if has_netdev(tap):
        if (SYS_NET / tap / "master").resolve().name == bridge:
            return False
        await run_tool(
            ["ip", "link", "set", tap, "master", bridge, "up"],
            f"cannot attach {tap} to {bridge}",
            timeout_s,
        )
        return False
    await qemu_host.tap_up(tap, bridge, timeout_s)  # made, attached, removed on failure
    return True


tap_down = qemu_host.tap_down


async def apply_guard(uplinks: list[str], timeout_s: float, scratch: Path) -> None:
    """Load the nftables guard (:func:`meshd.core.guest_net.guard_ruleset`)."""
    script = scratch / "guard.nft"
    script.write_text(guard_ruleset(uplinks))
    await run_tool(["nft", "-f", str(script)], "cannot load the nftables guard", timeout_s)


def arp_table(proc: Path = Path("/proc/net/arp")) -> str:
    """This namespace's IPv4 neighbours (a read, no subprocess: the metadata server
    looks here on every request)."""
    try:
        return proc.read_text()
    except OSError:
        return ""


def forwarding_table(bridge: str) -> tuple[bytes, dict[int, str]]:
    """The bridge's learnt MACs (sysfs ``brforward``) and its ports by number."""
    names: dict[int, str] = {}
    for port in ports_of(bridge):
        with contextlib.suppress(OSError, ValueError):
            names[int(_read(SYS_NET / bridge / "brif" / port / "port_no"), 16)] = port
    try:
        return (SYS_NET / bridge / "brforward").read_bytes(), names
    except OSError:
        return b"", names
