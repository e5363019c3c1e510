"""A node's identity on disk: keys, certificates and the mesh secret under DATA_DIR/identity.

Layout (private files 0600, the directory 0700)::

    identity/node.key      this node's Ed25519 key           (0600)
    identity/node.crt      this node's certificate, CA-signed
    identity/ca.crt        the mesh CA certificate
    identity/ca.key        the mesh CA key, only on CA holders (0600)
    identity/mesh.secret   32 random bytes sealing every datagram (0600)
    identity/join.key      a joiner's key while it enrols (0600): kept before the CSR
                           is sent so a failed join can be retried with the same key;
                           becomes node.key once the identity is saved

Files are written to a temporary name with their final mode and renamed into place,
so a crash never leaves a half-written key and a key is never briefly world-readable.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.core.envelope import SECRET_BYTES
from meshd.errors import IdentityError
from meshd.identity import pki

NODE_KEY = "node.key"
NODE_CERT = "node.crt"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
MESH_SECRET = "mesh.secret"  # noqa: S105 - a file name, not a secret
JOIN_KEY = "join.key"


def identity_dir(data_dir: Path) -> Path:
    return data_dir / "identity"


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` atomically, never readable beyond ``mode`` even for an instant."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed O_CREAT's mode; make it exact
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def ensure_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


@dataclass(frozen=True)
class NodeIdentity:
    """Everything a node needs to prove who it is and talk to its mesh."""

    key: Ed25519PrivateKey
    cert: x509.Certificate
    ca_cert: x509.Certificate
    mesh_secret: bytes
    ca_key: Ed25519PrivateKey | None
    info: pki.CertInfo

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def domain(self) -> str:
        return self.info.domain

    @property
    def node_id(self) -> str:
        return self.info.node_id

    @property
    def ca_fingerprint(self) -> str:
        return pki.fingerprint(self.ca_cert)

    @property
    def is_ca_holder(self) -> bool:
        return self.ca_key is not None


def exists(data_dir: Path) -> bool:
    d = identity_dir(data_dir)
    return any((d / f).exists() for f in (NODE_KEY, NODE_CERT, CA_CERT, MESH_SECRET))


def save(data_dir: Path, ident: NodeIdentity) -> None:
    """Write a new identity; refuses to overwrite one that exists."""
    if exists(data_dir):
        raise IdentityError(
            f"{data_dir} already holds a node identity; refusing to overwrite it "
            "(use another --data-dir, or remove the node first)"
        )
    ensure_private_dir(data_dir)
    d = identity_dir(data_dir)
    ensure_private_dir(d)
    if ident.ca_key is not None:
        write_private(d / CA_KEY, pki.key_pem(ident.ca_key))
    write_private(d / CA_CERT, pki.cert_pem(ident.ca_cert), 0o644)
    write_private(d / MESH_SECRET, ident.mesh_secret)
    write_private(d / NODE_KEY, pki.key_pem(ident.key))
    # The certificate last: its presence marks a complete identity.
    write_private(d / NODE_CERT, pki.cert_pem(ident.cert), 0o644)
    (d / JOIN_KEY).unlink(missing_ok=True)


def join_key(data_dir: Path) -> Ed25519PrivateKey:
    """The key this joiner enrols with: the one kept by an earlier attempt, else a new one.

    Written to disk before the CSR leaves, so a joiner that dies after the seed signed
    it in can ask again with the same key and get the same certificate back.
    """
    ensure_private_dir(data_dir)
    d = identity_dir(data_dir)
    ensure_private_dir(d)
    path = d / JOIN_KEY
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise IdentityError(f"{path} is readable by others; run `chmod 600 {path}`")
        return pki.load_key_pem(_read(path, "join key"), str(path))
    key = pki.new_key()
    write_private(path, pki.key_pem(key))
    return key


def discard_join_key(data_dir: Path) -> None:
    """A seed refused the join: forget the key, and the identity dir if nothing else is in it."""
    d = identity_dir(data_dir)
    (d / JOIN_KEY).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        d.rmdir()  # only if empty


def save_ca_key(data_dir: Path, ident: NodeIdentity, ca_key: Ed25519PrivateKey) -> NodeIdentity:
    """Make this node a CA holder: write ``ca.key`` (0600); return the updated identity."""
    write_private(identity_dir(data_dir) / CA_KEY, pki.key_pem(ca_key))
    return replace(ident, ca_key=ca_key)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise IdentityError(
            f"no {what} at {path}; run `meshd init` for this data directory first"
        ) from exc
    except OSError as exc:
        raise IdentityError(f"can't read {what} at {path}: {exc.strerror}") from exc


def load(data_dir: Path, now: float) -> NodeIdentity:
    """Load and check this node's identity; raises IdentityError saying what is wrong."""
    d = identity_dir(data_dir)
    if not (d / NODE_CERT).exists():
        raise IdentityError(
            f"no node identity in {data_dir}; run `meshd init --name NAME --domain DOMAIN` "
            "to found a mesh or `meshd init --name NAME --join TOKEN` to join one"
        )
    for private in (NODE_KEY, MESH_SECRET, CA_KEY):
        p = d / private
        if p.exists() and p.stat().st_mode & 0o077:
            raise IdentityError(f"{p} is readable by others; run `chmod 600 {p}`")
    key = pki.load_key_pem(_read(d / NODE_KEY, "node key"), str(d / NODE_KEY))
    cert = pki.load_cert_pem(_read(d / NODE_CERT, "node certificate"), str(d / NODE_CERT))
    ca_cert = pki.load_cert_pem(_read(d / CA_CERT, "CA certificate"), str(d / CA_CERT))
    secret = _read(d / MESH_SECRET, "mesh secret")
    if len(secret) != SECRET_BYTES:
        raise IdentityError(f"{d / MESH_SECRET} must hold exactly {SECRET_BYTES} bytes")
    ca_key = None
    if (d / CA_KEY).exists():
        ca_key = pki.load_key_pem(_read(d / CA_KEY, "CA key"), str(d / CA_KEY))
    info = pki.verify(cert, ca_cert, now)
    if pki.public_raw(cert.public_key()) != pki.public_raw(key.public_key()):  # type: ignore[arg-type]
        raise IdentityError(f"{d / NODE_KEY} does not match {d / NODE_CERT}")
    return NodeIdentity(key, cert, ca_cert, secret, ca_key, info)
