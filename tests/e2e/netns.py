"""Several hosts on one machine: network namespaces on a bridge (root only).

A "switch" namespace holds a bridge (STP off, forward delay 0, multicast snooping off
so mDNS floods); each host namespace has a veth into it and an address in a private
test subnet, plus a multicast route (mDNS tools need one; the namespaces have no
default route, so nothing can leave the machine). Nothing is changed in the root
namespace. Every namespace is named after this process's pid and removed in
``teardown`` by that name.

Partitions: ``host.link(False)`` sets the host's veth down.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


def available() -> str | None:
    """None if namespaces can be used here, else the reason they can't."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@dataclass
class Host:
    ns: str
    addr: str
    veth_switch: str
    switch_ns: str

    def link(self, up: bool) -> None:
        _ip("link", "set", self.veth_switch, "up" if up else "down", ns=self.switch_ns)

    def cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]


@dataclass
class Lab:
    prefix: str
    subnet: str  # e.g. "10.213.7" → hosts .1 .. .N
    hosts: list[Host] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.prefix}sw"

    def setup(self, n: int) -> None:
        sw = self.switch
        subprocess.run(["ip", "netns", "add", sw], check=True, capture_output=True)
        _ip("link", "set", "lo", "up", ns=sw)
        _ip("link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0", ns=sw)
        _ip("link", "set", "br0", "type", "bridge", "mcast_snooping", "0", ns=sw)
        _ip("link", "set", "br0", "up", ns=sw)
        for i in range(1, n + 1):
            ns = f"{self.prefix}h{i}"
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            vh, vs = "eth0", f"v{i}"
            # Create the pair inside the host namespace, then move one end to the switch.
            _ip("link", "add", vh, "type", "veth", "peer", "name", vs, ns=ns)
            _ip("link", "set", vs, "netns", sw, ns=ns)
            _ip("link", "set", vs, "master", "br0", ns=sw)
            _ip("link", "set", vs, "up", ns=sw)
            addr = f"{self.subnet}.{i}"
            _ip("addr", "add", f"{addr}/24", "dev", vh, ns=ns)
            _ip("link", "set", vh, "up", ns=ns)
            _ip("link", "set", "lo", "up", ns=ns)
            _ip("route", "add", "224.0.0.0/4", "dev", vh, ns=ns)
            self.hosts.append(Host(ns, addr, vs, sw))

    def teardown(self) -> None:
        for name in [h.ns for h in self.hosts] + [self.switch]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self.hosts.clear()


@contextlib.contextmanager
def lab(n: int, tag: str = "") -> Iterator[Lab]:
    """``n`` hosts on one bridge; always torn down, by this process's own names."""
    pid = os.getpid()
    # 10.213.<pid-derived>.0/24: a private subnet that only exists in our namespaces.
    the_lab = Lab(prefix=f"mshd{pid}{tag}", subnet=f"10.213.{pid % 250 + 1}")
    try:
        the_lab.setup(n)
        yield the_lab
    finally:
        the_lab.teardown()
