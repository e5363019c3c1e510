"""Several hosts as network namespaces on one bridge, joined by mDNS alone (root).

Proves:
* five nodes started with `--mdns ADDR` and no seeds find each other and all see five
  alive (the join time is printed; benchmarks/bench_join.py records it);
* Debian's `avahi-browse`, an independent mDNS implementation, run in another
  namespace, lists the `_meshd._udp` service every node announces, with its address;
* a node of another mesh (another CA and mesh secret) announcing on the same LAN is
  never admitted, and admits nobody.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e import netns

try:
    from tests.integration.daemon import Daemon, Mesh
except ImportError:  # pragma: no cover
    from daemon import Daemon, Mesh  # type: ignore[no-redef]

PORT = 7420
N = 5
AVAHI_SCRIPT = Path(__file__).with_name("avahi_browse.sh")
# avahi-daemon and D-Bus need their own /run dirs: a private mount namespace gives them.
UNSHARE = ["unshare", "-m", "--propagation", "private"]

reason = netns.available()
if reason is None and not (shutil.which("avahi-browse") and shutil.which("avahi-daemon")):
    reason = "avahi-browse/avahi-daemon are not installed (bootstrap/setup.sh --test installs them)"
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


def _peers(d: Daemon) -> dict[str, str]:
    return {p["name"]: p["state"] for p in d.api("GET", "/v1/peers")}


def _no_seeds(d: Daemon, addr: str) -> None:
    """Drop the token's seeds from meshd.toml: discovery must come from mDNS alone."""
    (d.data_dir / "meshd.toml").write_text(f'listen = "{addr}:{PORT}"\n')


def test_five_namespaces_join_by_mdns(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    with netns.lab(N + 2, tag="m") as lab:
        try:
            hosts = lab.hosts[:N]
            nodes = []
            for i, h in enumerate(hosts):
                d = mesh.daemon(f"n{i + 1}", preset="lan")
                d.prefix = tuple(h.cmd([]))
                nodes.append(d)
            founder = nodes[0]
            founder.init(listen=f"{hosts[0].addr}:{PORT}")
            founder.start("--mdns", hosts[0].addr)
            for d, h in zip(nodes[1:], hosts[1:], strict=True):
                token = founder.create_token()
                d.init(join=token, listen=f"{h.addr}:{PORT}")
                _no_seeds(d, h.addr)
            founder.stop()
            _no_seeds(founder, hosts[0].addr)

            # Another mesh on the same LAN, same domain: must never be admitted.
            intruder_host = lab.hosts[N]
            intruder = mesh.daemon("n1", preset="lan")  # same name as ours, on purpose
            intruder.data_dir = tmp_path / "intruder"
            intruder.prefix = tuple(intruder_host.cmd([]))
            intruder.init(listen=f"{intruder_host.addr}:{PORT}")

            start = time.monotonic()
            for d, h in zip(nodes, hosts, strict=True):
                d.spawn("--mdns", h.addr)
            intruder.spawn("--mdns", intruder_host.addr)
            for d in [*nodes, intruder]:
                d.wait_ready()
            names = {d.name for d in nodes}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                views = [_peers(d) for d in nodes]
                if all(set(v) == names and set(v.values()) == {"alive"} for v in views):
                    break
                time.sleep(0.05)
            else:
                pytest.fail(f"nodes did not all see each other via mDNS: {views}")
            print(f"mdns join of {N} namespaces: {time.monotonic() - start:.2f}s after spawn")

            # The intruder is invisible to us and we are invisible to it.
            time.sleep(1.0)
            for d in nodes:
                assert set(_peers(d)) == names
            assert set(_peers(intruder)) == {"n1"}
            assert {m["name"] for m in nodes[1].api("GET", "/v1/roster")} == names

            # An independent mDNS stack lists every node's announcement.
            browse = subprocess.run(
                [*lab.hosts[N + 1].cmd(UNSHARE), "sh", str(AVAHI_SCRIPT), "eth0", "3"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            fields = [line.split(";") for line in browse.stdout.splitlines()]
            # "=;iface;proto;instance;type;domain;host;address;port;txt"
            addrs = {(f[7], f[8]) for f in fields if f[0] == "=" and f[4] == "_meshd._udp"}
            for h in hosts:
                assert (h.addr, str(PORT)) in addrs, (browse.stdout, browse.stderr)
        finally:
            mesh.close()
