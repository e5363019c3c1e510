"""A guest's address is announced on its segment when its NIC is attached (issue 13).

A reused address comes back with a new MAC; a peer whose neighbour entry still holds
the old one (REACHABLE: Linux keeps it 15-45 s without asking) must replace it at once,
for busybox guests announce nothing themselves. Real namespaces, the real shell
(``guest_blade.py``), a peer on the switch; no QEMU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.core.nic import mac_for
from tests.integration.guest_lab import BRIDGE, Lab, usable

pytestmark = pytest.mark.skipif(usable() is not None, reason=str(usable()))

OLD_MAC = "0e:00:00:00:00:01"  # the address's previous holder
ROOT = Path(__file__).parent.parent.parent


def neighbour(lab: Lab, ns: str, ip: str) -> tuple[str, list[str]]:
    out = lab._in(ns, "ip", "-j", "neigh", "show", ip, "dev", "eth0").stdout
    entries = json.loads(out or "[]")
    if not entries:
        return "", []
    return str(entries[0].get("lladdr", "")), list(entries[0].get("state", []))


def peer(lab: Lab, name: str, *addrs: str) -> str:
    """A namespace on the switch (a host on the segment) with ``addrs`` on its eth0."""
    ns = lab._netns(name)
    port = f"to-{name}"[:15]
    lab._in(lab.sw, "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", ns)  # fmt: skip
    lab._in(lab.sw, "ip", "link", "set", port, "master", "sw", "up")
    for addr in addrs:
        extra = ["nodad"] if ":" in addr else []
        lab._in(ns, "ip", "addr", "add", addr, "dev", "eth0", *extra)
    lab._in(ns, "ip", "link", "set", "eth0", "up")
    return ns


def forwarding(lab: Lab, ns: str, within_s: float = 5.0) -> None:
    """Wait until every bridge port in ``ns`` forwards (a port just linked may not)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        ports = json.loads(lab._in(ns, "bridge", "-j", "link", "show").stdout or "[]")
        if ports and all(p.get("state") == "forwarding" for p in ports):
            return
        time.sleep(0.05)
    raise AssertionError(f"bridge ports in {ns} do not forward: {ports}")


def python_in(ns: str, code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = ["ip", "netns", "exec", ns, sys.executable, "-c", code]
    return subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=30)


def replaced(lab: Lab, ns: str, ip: str, mac: str, within_s: float) -> tuple[str, list[str]]:
    deadline = time.monotonic() + within_s
    seen = neighbour(lab, ns, ip)
    while seen[0] != mac and time.monotonic() < deadline:
        time.sleep(0.02)
        seen = neighbour(lab, ns, ip)
    return seen


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(prefix="h13g")
    try:
        yield lab
    finally:
        lab.close()


def test_a_peer_holding_the_old_mac_takes_the_new_one_at_attach(lab: Lab) -> None:
    ip = "10.77.0.21"
    lab.workload("w-reused", "reused", ip)
    blade = lab.blade("a", "10.77.0.2", create=False, attach=[])
    probe = peer(lab, "peer", "10.77.0.50/24")
    lab._in(probe, "ip", "neigh", "replace", ip, "lladdr", OLD_MAC, "dev", "eth0",
            "nud", "reachable")  # fmt: skip
    assert neighbour(lab, probe, ip) == (OLD_MAC, ["REACHABLE"])
    guest = lab.guest(blade, "w-reused", ip)  # the new holder, not yet up (no address)
    forwarding(lab, lab.sw)
    assert blade.send("attach w-reused") == "OK", lab.errors("a")
    mac, state = replaced(lab, probe, ip, guest.mac, within_s=0.5)
    assert (mac, state) == (mac_for("w-reused", 0), ["STALE"]), lab.errors("a")
    # The blade's bridge learnt nothing from its own frames: the guest's MAC is not
    # on the uplink (the metadata server trusts where the bridge learnt a MAC).
    fdb = lab._in(blade.ns, "bridge", "-j", "fdb", "show", "br", BRIDGE).stdout
    ports = {e["ifname"] for e in json.loads(fdb) if e.get("mac") == guest.mac}
    assert ports <= {guest.tap}, ports


def test_an_unsolicited_na_replaces_an_ipv6_neighbour(lab: Lab) -> None:
    """The adapter on a bridge (IPv6 networks get no DHCP, but their addresses move too)."""
    ip, new_mac = "fd00:77::21", mac_for("w-six", 0)
    host = lab._netns("host")
    lab._in(host, "ip", "link", "add", "h13gbr", "type", "bridge", "stp_state", "0",
            "forward_delay", "0")  # fmt: skip
    lab._in(host, "ip", "link", "set", "h13gbr", "up")
    lab._in(lab.sw, "ip", "link", "add", "to-host", "type", "veth", "peer", "name", "up0",
            "netns", host)  # fmt: skip
    lab._in(lab.sw, "ip", "link", "set", "to-host", "master", "sw", "up")
    lab._in(host, "ip", "link", "set", "up0", "master", "h13gbr", "up")
    probe = peer(lab, "peer6", "fd00:77::50/64")
    lab._in(probe, "ip", "-6", "neigh", "replace", ip, "lladdr", OLD_MAC, "dev", "eth0",
            "nud", "reachable")  # fmt: skip
    assert neighbour(lab, probe, ip) == (OLD_MAC, ["REACHABLE"])
    forwarding(lab, lab.sw)
    forwarding(lab, host)
    code = (
        "import ipaddress, sys; from meshd.adapters.announcer import send;"
        "from meshd.core.announcement import announcement;"
        f"sys.exit(0 if send('h13gbr', announcement(ipaddress.ip_address('{ip}'), '{new_mac}'))"
        " else 1)"
    )
    done = python_in(host, code)
    assert done.returncode == 0, done.stderr
    assert replaced(lab, probe, ip, new_mac, within_s=0.5) == (new_mac, ["STALE"])


def test_a_bridge_that_is_gone_is_logged_not_raised(lab: Lab) -> None:
    host = lab._netns("lone")
    code = (
        "import ipaddress, sys; from meshd.adapters.announcer import send;"
        "from meshd.core.announcement import announcement;"
        "f = announcement(ipaddress.ip_address('10.77.0.9'), '0e:00:00:00:00:09');"
        "sys.exit(0 if send('h13gnone', f) is False else 1)"
    )
    done = python_in(host, code)
    assert done.returncode == 0, done.stderr
    assert "cannot announce on h13gnone" in done.stderr


def switch_port(lab: Lab, mac: str) -> set[str]:
    fdb = json.loads(lab._in(lab.sw, "bridge", "-j", "fdb", "show", "br", "sw").stdout or "[]")
    return {e["ifname"] for e in fdb if e.get("mac") == mac and "self" not in e.get("flags", [])}


def test_a_moved_guest_is_found_behind_its_new_blade_at_attach(lab: Lab) -> None:
    """Same MAC, another blade (a re-placement): the switch forwards to the new blade's
    port from the attach on, not only once the guest itself sends something."""
    ip = "10.77.0.31"
    lab.workload("w-moved", "moved", ip)
    a = lab.blade("a", "10.77.0.2", create=False, attach=[])
    b = lab.blade("b", "10.77.0.3", create=False, attach=[])
    guest = lab.guest(a, "w-moved", ip)  # it talks (IPv6 at link up): the switch learns it
    assert a.send("attach w-moved") == "OK", lab.errors("a")
    deadline = time.monotonic() + 5
    while switch_port(lab, guest.mac) != {"to-a"} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert switch_port(lab, guest.mac) == {"to-a"}
    assert a.send("detach w-moved") == "OK"  # blade a is gone for it (its port removed)
    # On b, meshd makes the tap itself; nobody reads it yet (QEMU not started): only
    # the announcement can tell the switch where the guest now is.
    assert b.send("attach w-moved") == "OK", lab.errors("b")
    deadline = time.monotonic() + 0.5
    while switch_port(lab, guest.mac) != {"to-b"} and time.monotonic() < deadline:
        time.sleep(0.02)
    assert switch_port(lab, guest.mac) == {"to-b"}
