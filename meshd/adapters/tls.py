"""TLS for the mesh TCP port: mutual TLS between members, pinned to the mesh CA.

The server asks for a client certificate but does not demand it at the handshake
(``CERT_OPTIONAL``), because two unauthenticated routes must stay reachable: fetching
the CA certificate and enrolling with a join token. A client that presents a
certificate must present one from the mesh CA (the handshake fails otherwise); every
other route is refused by the API unless the handshake produced a verified mesh
certificate that is not revoked (see ``meshd.api.server``).

Peers are identified by the certificate's CN, not by DNS: blades are addressed by IP,
so hostname checking is off and callers check the peer's certificate themselves.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

from cryptography import x509

from meshd.identity import files, pki
from meshd.identity.files import NodeIdentity


def _load_chain(ctx: ssl.SSLContext, ident: NodeIdentity) -> None:
    # ssl can only load keys from files; write them to a private temp dir briefly.
    with tempfile.TemporaryDirectory(prefix="meshd-tls-") as tmp:
        cert_path = Path(tmp) / "chain.pem"
        key_path = Path(tmp) / "key.pem"
        files.write_private(cert_path, pki.cert_pem(ident.cert) + pki.cert_pem(ident.ca_cert))
        files.write_private(key_path, pki.key_pem(ident.key))
        ctx.load_cert_chain(cert_path, key_path)


def server_context(ident: NodeIdentity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    _load_chain(ctx, ident)
    ctx.load_verify_locations(cadata=pki.cert_pem(ident.ca_cert).decode())
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(ident: NodeIdentity | None, ca_cert: x509.Certificate) -> ssl.SSLContext:
    """A client trusting only the mesh CA; with ``ident``, it also proves who we are."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=pki.cert_pem(ca_cert).decode())
    if ident is not None:
        _load_chain(ctx, ident)
    return ctx


def insecure_client_context() -> ssl.SSLContext:
    """Only for fetching the CA certificate, which the caller then checks by fingerprint."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
