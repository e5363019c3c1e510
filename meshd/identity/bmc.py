"""This node's BMC endpoint on disk, beside its other secrets under DATA_DIR/identity.

Layout::

    identity/bmc.json     the endpoint, password included        (0600)
    identity/bmc-ca.pem   a copy of the CA the operator named      (0644)
    identity/bmc-peers/NAME.json, NAME-ca.pem
                          every member's endpoint, as that member shared it over mTLS
                          (the node that fences NAME needs it once NAME is dead)

Written like the node's keys (:func:`meshd.identity.files.write_private`: a temporary
file with its final mode, fsync, rename) and then the directory is fsynced, so a
``meshd bmc set`` that was answered survives a power cut. The CA file is copied
rather than referred to: the operator's copy may move or go, and the node must still
be fenceable. :func:`load` is what the rest of meshd calls to read this node's
endpoint (the lead's sealed sharing with the mesh reads it from here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography import x509

from meshd.core.bmc import BmcEndpoint
from meshd.errors import ConfigError
from meshd.identity.files import ensure_private_dir, identity_dir, write_private

BMC_FILE = "bmc.json"
BMC_CA_FILE = "bmc-ca.pem"
MAX_CA_BYTES = 256 * 1024


def path(data_dir: Path) -> Path:
    return identity_dir(data_dir) / BMC_FILE


def load(data_dir: Path) -> BmcEndpoint | None:
    """This node's BMC endpoint, None when none was set; ConfigError when unusable."""
    p = path(data_dir)
    try:
        if p.stat().st_mode & 0o077:
            raise ConfigError(f"{p} is readable by others; run `chmod 600 {p}`")
        raw = p.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"can't read the BMC endpoint at {p}: {exc.strerror}") from exc
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{p} is not valid JSON; run `meshd bmc set` again") from None
    return BmcEndpoint.from_json(doc)


def save(data_dir: Path, endpoint: BmcEndpoint) -> BmcEndpoint:
    """Store ``endpoint`` durably (0600); a CA file is copied in first and the stored
    endpoint names the copy. Returns what was stored."""
    endpoint.validate()
    d = identity_dir(data_dir)
    ensure_private_dir(d)
    if endpoint.ca_file is not None:
        copy = d / BMC_CA_FILE
        if Path(endpoint.ca_file) != copy:
            write_private(copy, read_ca(Path(endpoint.ca_file)), 0o644)
        endpoint = BmcEndpoint(
            endpoint.url,
            endpoint.user,
            endpoint.password,
            endpoint.system,
            str(copy),
            endpoint.insecure,
        )
    body = json.dumps(endpoint.to_json(), sort_keys=True).encode()
    write_private(path(data_dir), body)
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself must be on disk before we answer
    finally:
        os.close(fd)
    return endpoint


def _peers_dir(data_dir: Path) -> Path:
    return identity_dir(data_dir) / "bmc-peers"


def save_peer(data_dir: Path, name: str, endpoint: BmcEndpoint, ca_pem: bytes | None) -> None:
    """Keep member ``name``'s endpoint (0600), with its CA certificate if it has one."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"bad member name for a BMC endpoint: {name[:40]!r}")
    d = _peers_dir(data_dir)
    ensure_private_dir(d)
    ca_file = None
    if ca_pem is not None:
        if len(ca_pem) > MAX_CA_BYTES:
            raise ConfigError(f"the BMC CA of {name} is larger than {MAX_CA_BYTES} bytes")
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise ConfigError(f"the BMC CA of {name} holds no PEM certificate") from None
        ca_path = d / f"{name}-ca.pem"
        write_private(ca_path, ca_pem, 0o644)
        ca_file = str(ca_path)
    kept = BmcEndpoint(
        endpoint.url,
        endpoint.user,
        endpoint.password,
        endpoint.system,
        ca_file,
        endpoint.insecure,
    ).validate()
    write_private(d / f"{name}.json", json.dumps(kept.to_json(), sort_keys=True).encode())


def load_peer(data_dir: Path, name: str) -> BmcEndpoint | None:
    """Member ``name``'s endpoint as it shared it; None when it never did."""
    p = _peers_dir(data_dir) / f"{name}.json"
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"can't read {p}: {exc.strerror}") from exc
    try:
        return BmcEndpoint.from_json(json.loads(raw))
    except ValueError:
        raise ConfigError(f"{p} is not valid JSON") from None


def own_ca(endpoint: BmcEndpoint) -> bytes | None:
    """The CA certificate this node's endpoint names (the stored copy), if any."""
    if endpoint.ca_file is None:
        return None
    return Path(endpoint.ca_file).read_bytes()


def read_ca(src: Path) -> bytes:
    """The PEM certificates in ``src``; ConfigError saying what is wrong with it."""
    try:
        if src.stat().st_size > MAX_CA_BYTES:
            raise ConfigError(f"--ca-file {src} is larger than {MAX_CA_BYTES} bytes")
        pem = src.read_bytes()
    except OSError as exc:
        raise ConfigError(f"can't read --ca-file {src}: {exc.strerror}") from exc
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(
            f"--ca-file {src} holds no PEM certificate; give the CA that signed the BMC's "
            "certificate (-----BEGIN CERTIFICATE-----)"
        ) from None
    return pem
