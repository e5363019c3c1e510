"""`meshd run --dns`: mesh names through DNS, asked with `dig` (Debian's dnsutils).

Two daemons; beta publishes `web` on port 8080. dig asks alpha's DNS server for
`web.beta.lab.example` (A), `web.lab.example` (SRV, with the target's A in the additional
section), `_web._tcp.lab.example` (SRV), a name in the domain that names nothing
(NXDOMAIN) and one outside it (REFUSED, not a recursive resolver); a datagram that is
not DNS gets no answer and the server goes on answering.
"""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

try:
    from tests.integration.daemon import DOMAIN, Daemon, Mesh, wait_for
except ImportError:  # tests/integration is not a package, so pytest put it on sys.path
    from daemon import DOMAIN, Daemon, Mesh, wait_for  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(
    shutil.which("dig") is None, reason="dig is not installed (Debian's dnsutils)"
)


def dig(server: str, *query: str) -> str:
    host, port = server.rsplit(":", 1)
    out = subprocess.run(
        ["dig", f"@{host}", "-p", port, "+time=2", "+tries=1", *query],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    return out.stdout


def short(server: str, *query: str) -> list[str]:
    return dig(server, "+short", *query).split()


@pytest.fixture
def two(mesh_factory: Mesh) -> tuple[Daemon, Daemon]:
    alpha = mesh_factory.daemon("alpha")
    alpha.init()
    alpha.start("--dns", "127.0.0.1:0")
    beta = mesh_factory.join("beta", via=alpha)
    return alpha, beta


def test_dig_resolves_mesh_names_through_meshd(two: tuple[Daemon, Daemon]) -> None:
    alpha, beta = two
    server = str(alpha.status()["dns"])
    beta.cli("service", "add", "web", "--port", "8080", check=True)
    beta_ip = beta.address.rsplit(":", 1)[0]
    name = f"web.beta.{DOMAIN}"
    wait_for("web published", lambda: short(server, name, "A") == [beta_ip], timeout=20)

    srv = short(server, f"web.{DOMAIN}", "SRV")
    assert srv == ["0", "1", "8080", f"web.beta.{DOMAIN}."], srv
    full = dig(server, f"web.{DOMAIN}", "SRV")
    assert "ADDITIONAL SECTION" in full and beta_ip in full, full
    assert short(server, f"_web._tcp.{DOMAIN}", "SRV") == srv
    assert short(server, f"_web._udp.{DOMAIN}", "SRV") == []

    assert "status: NXDOMAIN" in dig(server, f"nosuch.{DOMAIN}", "A")
    assert "status: NOERROR" in dig(server, name, "AAAA")  # exists, no IPv6 address
    assert "status: REFUSED" in dig(server, "example.com", "A")

    host, port = server.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00garbage, not a DNS message", (host, int(port)))
    assert short(server, name, "A") == [beta_ip]  # still answering

    beta.kill()  # a dead node's names stop answering once it is declared dead
    wait_for("beta's name gone", lambda: short(server, name, "A") == [], timeout=30)
