"""Bounded exposure of the TCP API: what strangers without a certificate can't do.

* hundreds of slow or idle connections (silent TCP, half a TLS handshake, a header byte
  a second) are all closed within the handshake and header timeouts, the daemon's
  descriptors stay bounded, and the local CLI answers on the unix socket throughout,
  even with a low open-file limit (where, unbounded, the flood takes every descriptor);
* a body bigger than its route takes is a 413 with a sentence;
* a malformed request from a stranger is one short log line (rate-limited) and a
  counter, never a traceback.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import time

try:
    from tests.integration.daemon import Daemon, Mesh, client_context
    from tests.integration.flood import Flood
except ImportError:  # tests/integration is not a package, so pytest put it on sys.path
    from daemon import Daemon, Mesh, client_context  # type: ignore[no-redef,import-not-found]
    from flood import Flood  # type: ignore[no-redef,import-not-found]

import psutil

HANDSHAKE_S = 1.0
HEADER_S = 2.0
TIMEOUTS = (
    "--set",
    f"api.tls_handshake_timeout_s={HANDSHAKE_S}",
    "--set",
    f"api.header_timeout_s={HEADER_S}",
)


def _host_port(d: Daemon) -> tuple[str, int]:
    host, _, port = d.address.rpartition(":")
    return host, int(port)


def _metric(d: Daemon, name: str, **labels: str) -> float:
    text = d.api("GET", "/metrics")
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_slow_connections_are_closed_and_the_cli_still_answers(mesh_factory: Mesh) -> None:
    d = mesh_factory.daemon("alpha")
    # A low open-file limit, as on many hosts: 300 idle connections would take them all.
    d.prefix = ("prlimit", "--nofile=300:4096")
    d.init()
    d.start(*TIMEOUTS)
    flood = Flood(*_host_port(d))
    try:
        flood.open(450)
        opened = len(flood.conns)
        assert opened + flood.refused_at_connect == 450
        deadline = time.monotonic() + HANDSHAKE_S + HEADER_S + 4.0
        cli_answers = 0
        while flood.poll() and time.monotonic() < deadline:
            # The local operator, mid-flood.
            status = d.cli("status", "--json", timeout=10)
            assert status.returncode == 0, status.stderr
            cli_answers += 1
            fds = psutil.Process(d.pid).num_fds()
            assert fds < 300, f"the daemon holds {fds} descriptors"
        assert flood.still_open() == 0, (
            f"{flood.still_open()} of {opened} slow connections still open after "
            f"{HANDSHAKE_S + HEADER_S + 4.0:g}s"
        )
        assert cli_answers > 0
        for kind in ("idle", "half", "drip"):
            assert any(c.kind == kind for c in flood.conns), f"no {kind} connection got in"
    finally:
        flood.close()
    assert d.cli("status").returncode == 0
    log = d.log_path.read_text()
    assert "Traceback" not in log
    assert _metric(d, "meshd_api_refused_total", reason="handshake_failed") > 0
    assert _metric(d, "meshd_api_refused_total", reason="header_timeout") > 0


def test_one_peer_address_holds_at_most_its_budget(mesh_factory: Mesh) -> None:
    d = mesh_factory.daemon("alpha")
    d.init()
    d.start("--set", "api.max_connections_per_peer=5")
    host, port = _host_port(d)
    socks = [socket.create_connection((host, port), timeout=5.0) for _ in range(8)]
    try:
        time.sleep(0.5)
        closed = 0
        for s in socks:
            s.settimeout(0.2)
            try:
                closed += s.recv(1) == b""
            except TimeoutError:
                pass
            except OSError:
                closed += 1
        assert closed == 3
        assert _metric(d, "meshd_api_refused_total", reason="over_budget") == 3
    finally:
        for s in socks:
            s.close()


def test_an_oversize_body_is_a_413_with_a_sentence(mesh_factory: Mesh) -> None:
    d = mesh_factory.found("alpha")
    for path, size in (("/v1/services", 100 * 1024), ("/v1/workloads", 2 * 1024**2)):
        conn = http.client.HTTPConnection("localhost")
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(d.socket_path))
        conn.sock = sock
        try:
            body = b'{"name": "' + b"x" * size + b'"}'
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            doc = json.loads(resp.read())
        finally:
            conn.close()
        assert resp.status == 413, (path, resp.status, doc)
        assert re.search(r"larger than \d+ bytes, the most POST " + path, doc["error"])


def test_a_malformed_request_from_a_stranger_is_one_short_line(mesh_factory: Mesh) -> None:
    d = mesh_factory.found("alpha")
    host, port = _host_port(d)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    before = d.log_path.read_text()
    for _ in range(5):
        with ctx.wrap_socket(socket.create_connection((host, port), timeout=5.0)) as s:
            s.sendall(b"GET /v1/node HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
            assert re.match(rb"HTTP/1.[01] 400 ", s.recv(4096))
    time.sleep(0.3)
    new = d.log_path.read_text()[len(before) :]
    assert "Traceback" not in new
    lines = [line for line in new.splitlines() if "malformed_request" in line]
    assert len(lines) == 1, new
    assert len(lines[0]) < 300
    assert _metric(d, "meshd_api_refused_total", reason="malformed_request") == 5


def test_a_peer_that_drops_a_request_midway_is_a_debug_line_not_a_traceback(
    mesh_factory: Mesh,
) -> None:
    """A member that goes away in the middle of a post (a node stopping while it joins,
    a timeout on its side) is normal life for a mesh: no error, no traceback."""
    alpha = mesh_factory.found("alpha")
    beta = mesh_factory.join("beta", via=alpha)
    host, port = _host_port(alpha)
    crt, key = beta.node_cert
    ctx = client_context(alpha.ca_file, (crt, key))
    for _ in range(5):  # a body cut short: the headers promise 4 KiB, 10 bytes come
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(
                b"POST /v1/mesh/message HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/octet-stream\r\nContent-Length: 4096\r\n\r\n"
                + b"0123456789"
            )
    time.sleep(1.0)
    log = alpha.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "level=error" not in log, log[-3000:]
