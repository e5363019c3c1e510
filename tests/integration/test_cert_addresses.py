"""A node's certificate names its IP addresses (issue 14: "the node certificate has no IP
address in its subject alternative names, so curl https://IP:PORT with the mesh CA fails
until you learn --resolve").

A client that checks the host name, as curl does, connects by IP to a founding node and
to a joined node, trusting only the mesh CA; the handshake succeeds and a request is
answered.
"""

from __future__ import annotations

import http.client
import ipaddress
import ssl

from cryptography import x509

from tests.integration.daemon import Daemon, Mesh


def _san_ips(d: Daemon) -> list[str]:
    cert = x509.load_pem_x509_certificate(d.node_cert[0].read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def _strict_get(d: Daemon, path: str) -> int:
    host, _, port = d.address.rpartition(":")
    ctx = ssl.create_default_context(cafile=str(d.ca_file))  # check_hostname on, like curl
    ctx.load_cert_chain(str(d.node_cert[0]), str(d.node_cert[1]))
    assert ctx.check_hostname
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_founder_and_joiner_certificates_name_their_ip_and_verify_by_ip(
    mesh_factory: Mesh,
) -> None:
    alpha = mesh_factory.found("alpha")
    beta = mesh_factory.join("beta", alpha)
    for d in (alpha, beta):
        assert _san_ips(d) == ["127.0.0.1"]
        ipaddress.ip_address(d.address.rpartition(":")[0])
        assert _strict_get(d, "/v1/node") == 200
