"""The mesh's public-key infrastructure: one Ed25519 CA per mesh, one certificate per node.

Theory of operation
-------------------
A mesh is defined by its CA certificate. Every node holds an Ed25519 key and an X.509
certificate signed by that CA which names the node (CN), the mesh domain (O) and the
holder's role (OU: ``node``, ``admin`` or ``tenant:<name>``). The SHA-256 fingerprint
of the CA certificate's DER is the mesh's identity: join tokens carry it and joiners pin
TLS to it, like kubeadm's ``--discovery-token-ca-cert-hash``.

Verification here is deliberately narrow and strict: a certificate is accepted when it
was issued by *this* CA (issuer name and Ed25519 signature), is inside its validity
window at ``now``, is an end-entity certificate for this mesh's domain, and names a
syntactically valid node. Revocation is checked by callers against the revocation
list (``meshd.identity.revocation``), since it changes at run time.

Everything here is pure: time is passed in; randomness comes from the OS CSPRNG
through ``cryptography`` (key and serial generation), which is what keys need.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from meshd.errors import IdentityError

# Anchored with \Z, not $: in Python "$" also matches before a trailing newline, which
# would let "alpha\n" through as a node name.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
NAME_RE = re.compile(r"^" + _LABEL + r"\Z")
DOMAIN_RE = re.compile(r"^(?=.{1,253}\Z)" + _LABEL + r"(?:\." + _LABEL + r")*\Z")
TENANT_RE = re.compile(r"^tenant:" + _LABEL + r"\Z")
ROLES_FIXED = ("node", "admin")
# What cryptography raises, lazily, when a field of a loaded certificate or CSR turns out
# to be malformed or of an unsupported type (certificates arrive from peers inside
# envelopes); translated to IdentityError at this edge so bad input is dropped.
_PARSE_ERRORS = (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid node name (a DNS label), else raise IdentityError."""
    if not NAME_RE.match(name):
        raise IdentityError(
            f"invalid node name {name!r}: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def check_domain(domain: str) -> str:
    """Return ``domain`` if it is a valid lowercase DNS domain, else raise IdentityError."""
    if not DOMAIN_RE.match(domain):
        raise IdentityError(
            f"invalid mesh domain {domain!r}: use a lowercase DNS name such as lab.example"
        )
    return domain


def check_role(role: str) -> str:
    """Return ``role`` if it is ``node``, ``admin`` or ``tenant:<name>``, else raise."""
    if role in ROLES_FIXED or TENANT_RE.match(role):
        return role
    raise IdentityError(f"invalid role {role!r}: use node, admin or tenant:<name>")


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def node_id_of(key: Ed25519PublicKey) -> str:
    """The node's 160-bit id (hex): the DHT id, derived so nobody can pick a neighbourhood."""
    return hashlib.sha256(public_raw(key)).digest()[:20].hex()


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lowercase hex: what tokens carry and TLS pins to."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1:
        raise IdentityError(f"certificate must carry exactly one {oid._name} attribute")
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


@dataclass(frozen=True)
class CertInfo:
    """What a verified certificate tells about its holder."""

    name: str
    domain: str
    role: str
    node_id: str
    serial: str
    not_before: float
    not_after: float
    fingerprint: str


def describe(cert: x509.Certificate) -> CertInfo:
    """Parse the fields meshd relies on; raises IdentityError when they are missing."""
    try:
        return _describe(cert)
    except _PARSE_ERRORS as exc:
        raise IdentityError(f"malformed certificate: {exc}") from exc


def _describe(cert: x509.Certificate) -> CertInfo:
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise IdentityError("certificate key is not Ed25519; meshd accepts only Ed25519 keys")
    return CertInfo(
        name=_attr(cert.subject, NameOID.COMMON_NAME),
        domain=_attr(cert.subject, NameOID.ORGANIZATION_NAME),
        role=_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        node_id=node_id_of(key),
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        fingerprint=fingerprint(cert),
    )


def create_ca(domain: str, now: float, days: int) -> tuple[Ed25519PrivateKey, x509.Certificate]:
    """Found a mesh: a self-signed Ed25519 CA for ``domain``, valid ``days`` from ``now``."""
    check_domain(domain)
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshd CA {domain}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, domain),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - 300))
        .not_valid_after(_utc(now + days * 86400))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, algorithm=None)
    )
    return key, cert


def make_csr(key: Ed25519PrivateKey, name: str, domain: str) -> x509.CertificateSigningRequest:
    check_name(name)
    check_domain(domain)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, domain),
        ]
    )
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, algorithm=None)


def csr_name(csr: x509.CertificateSigningRequest) -> tuple[str, Ed25519PublicKey]:
    """Check a CSR's self-signature and key type; return the node name it asks for."""
    try:
        if not csr.is_signature_valid:
            raise IdentityError("the certificate request's signature is invalid")
        key = csr.public_key()
        subject = csr.subject
    except _PARSE_ERRORS as exc:
        raise IdentityError(f"malformed certificate request: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise IdentityError("the certificate request's key is not Ed25519")
    return check_name(_attr(subject, NameOID.COMMON_NAME)), key


MAX_SAN_ADDRESSES = 16


def ip_sans(addresses: Iterable[str]) -> list[x509.IPAddress]:
    """The node's IP addresses as subject alternative names, so ``curl https://IP:PORT``
    verifies against the mesh CA; a wildcard or duplicate is left out."""
    out: list[x509.IPAddress] = []
    seen: set[str] = set()
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise IdentityError(
                f"{text!r} is not an IP address: a certificate names its node's addresses "
                "as IP literals"
            ) from None
        if ip.is_unspecified or str(ip) in seen:
            continue
        seen.add(str(ip))
        out.append(x509.IPAddress(ip))
    if len(out) > MAX_SAN_ADDRESSES:
        raise IdentityError(
            f"a certificate names at most {MAX_SAN_ADDRESSES} addresses, not {len(out)}: "
            "listen on a specific address (--listen IP:PORT)"
        )
    return out


def issue(
    ca_key: Ed25519PrivateKey,
    ca_cert: x509.Certificate,
    public_key: Ed25519PublicKey,
    name: str,
    role: str,
    now: float,
    days: int,
    addresses: Iterable[str] = (),
) -> x509.Certificate:
    """Sign a certificate for ``name`` with ``role`` in the CA's mesh; ``addresses`` (IP
    literals) join ``name.domain`` among its subject alternative names."""
    check_name(name)
    check_role(role)
    ips = ip_sans(addresses)
    domain = _attr(ca_cert.subject, NameOID.ORGANIZATION_NAME)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, domain),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        ]
    )
    not_after = min(now + days * 86400, ca_cert.not_valid_after_utc.timestamp())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - 300))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"{name}.{domain}"), *ips]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, algorithm=None)
    )


def verify(cert: x509.Certificate, ca_cert: x509.Certificate, now: float) -> CertInfo:
    """Accept ``cert`` only if this mesh's CA issued it and it is valid at ``now``."""
    try:
        return _verify(cert, ca_cert, now)
    except _PARSE_ERRORS as exc:
        raise IdentityError(f"malformed certificate: {exc}") from exc


def _verify(cert: x509.Certificate, ca_cert: x509.Certificate, now: float) -> CertInfo:
    if cert.issuer != ca_cert.subject:
        raise IdentityError("certificate was not issued by this mesh's CA")
    # The outer algorithm field and the signature BIT STRING's unused-bits octet are
    # outside the signed part: without these checks one certificate has several DER
    # encodings (and fingerprints) that all verify.
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.ED25519:
        raise IdentityError("certificate is not signed with Ed25519")
    if not cert_der(cert).endswith(b"\x03\x41\x00" + cert.signature):
        raise IdentityError("certificate signature is not a plain Ed25519 signature")
    ca_key = ca_cert.public_key()
    if not isinstance(ca_key, Ed25519PublicKey):
        raise IdentityError("the mesh CA key is not Ed25519")
    try:
        ca_key.verify(cert.signature, cert.tbs_certificate_bytes)
    except InvalidSignature as exc:
        raise IdentityError("certificate signature does not verify against the mesh CA") from exc
    info = _describe(cert)
    if not info.not_before <= now <= info.not_after:
        raise IdentityError(f"certificate for {info.name!r} is not valid at this time")
    if info.domain != _attr(ca_cert.subject, NameOID.ORGANIZATION_NAME):
        raise IdentityError(f"certificate for {info.name!r} names another mesh domain")
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound as exc:
        raise IdentityError("certificate lacks basic constraints") from exc
    if basic.ca:
        raise IdentityError("a CA certificate can't act as a node")
    check_name(info.name)
    check_role(info.role)
    return info


def ca_domain(ca_cert: x509.Certificate) -> str:
    return _attr(ca_cert.subject, NameOID.ORGANIZATION_NAME)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def load_cert_pem(data: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise IdentityError(f"{what} is not a PEM certificate") from exc


def load_cert_der(data: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise IdentityError("malformed certificate") from exc


def key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key_pem(data: bytes, what: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{what} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{what} is not an Ed25519 key")
    return key
