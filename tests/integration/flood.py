"""Slow and idle connections to a daemon's TCP API: what a stranger can do without a cert.

Three kinds, in equal numbers: ``idle`` opens TCP and sends nothing; ``half`` sends the
first bytes of a TLS record (half a ClientHello) and stops; ``drip`` completes the TLS
handshake (no client certificate) and then sends one byte of a request header per
``tick``. :class:`Flood` opens them, drips, and records when the server closed each one.
Used by tests/integration/test_api_exposure.py and benchmarks/bench_api_exposure.py.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from dataclasses import dataclass, field

KINDS = ("idle", "half", "drip")
# A TLS handshake record header and the start of a ClientHello: valid, and incomplete.
HALF_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
DRIP = b"GET /v1/node HTTP/1.1\r\nHost: meshd\r\nX-Slow: " + b"a" * 4096


@dataclass
class Conn:
    kind: str
    sock: socket.socket
    opened: float
    closed_at: float | None = None
    sent: int = 0


@dataclass
class Flood:
    host: str
    port: int
    conns: list[Conn] = field(default_factory=list)
    refused_at_connect: int = 0

    def open(self, count: int) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        for i in range(count):
            kind = KINDS[i % len(KINDS)]
            try:
                raw = socket.create_connection((self.host, self.port), timeout=5.0)
                sock: socket.socket = raw
                if kind == "half":
                    raw.sendall(HALF_HELLO)
                elif kind == "drip":
                    sock = ctx.wrap_socket(raw)
            except OSError:
                # Refused once the daemon's budget is full: closed at once, as it should be.
                self.refused_at_connect += 1
                continue
            sock.setblocking(False)
            self.conns.append(Conn(kind, sock, time.monotonic()))

    def poll(self) -> int:
        """Note the connections the server closed; drip one byte on the others."""
        now = time.monotonic()
        for c in self.conns:
            if c.closed_at is not None:
                continue
            if _closed(c.sock):
                c.closed_at = now
                c.sock.close()
            elif c.kind == "drip" and c.sent < len(DRIP):
                try:
                    c.sock.send(DRIP[c.sent : c.sent + 1])
                    c.sent += 1
                except (BlockingIOError, ssl.SSLWantWriteError):
                    pass
                except OSError:
                    c.closed_at = now
                    c.sock.close()
        return self.still_open()

    def still_open(self) -> int:
        return sum(1 for c in self.conns if c.closed_at is None)

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.sock.close()


def _closed(sock: socket.socket) -> bool:
    try:
        data = sock.recv(4096)
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False
    except OSError:
        return True
    # Anything the server sends a slow client is its goodbye (a TLS alert, a 408);
    # the next read sees the close.
    return data == b"" or _closed_after(sock)


def _closed_after(sock: socket.socket) -> bool:
    time.sleep(0.01)
    try:
        return sock.recv(4096) == b""
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False
    except OSError:
        return True
