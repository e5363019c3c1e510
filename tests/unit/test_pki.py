"""The mesh PKI: validation tables, issuing, and everything ``verify`` must refuse."""

from __future__ import annotations

import datetime as dt
import hashlib
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.errors import IdentityError
from meshd.identity import pki

try:
    from tests.unit import pki_fixtures as fx
except ImportError:  # tests/unit is not a package, so pytest put it on sys.path
    import pki_fixtures as fx  # type: ignore[no-redef]

# A bit flip can make a serial number negative; cryptography warns when it parses one.
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")

NOW = fx.NOW
DAY = fx.DAY
HEX = re.compile(r"[0-9a-f]+")


def forge(
    *,
    cn: str | None = "zeta",
    o: str = fx.DOMAIN,
    ou: str | None = "node",
    key: object = None,
    ca: bool = False,
    basic: bool = True,
    extra: tuple[x509.NameAttribute, ...] = (),
) -> x509.Certificate:
    """A certificate signed by the test mesh's CA but *not* made by ``pki.issue``."""
    m = fx.mesh()
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o), *extra]
    if cn is not None:
        attrs.insert(0, x509.NameAttribute(NameOID.COMMON_NAME, cn))
    if ou is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    public = (key or Ed25519PrivateKey.generate()).public_key()  # type: ignore[attr-defined]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(m.ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(NOW - 60, tz=dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(NOW + DAY, tz=dt.UTC))
    )
    if basic:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=None), critical=True
        )
    return builder.sign(m.ca_key, None)


# -- validation tables -------------------------------------------------------------------

GOOD_NAMES = ["a", "0", "alpha", "node-1", "1-2-3", "blade07", "a" * 63, "a-b-c-d"]
BAD_NAMES = [
    "",
    "-a",
    "a-",
    "-",
    "Alpha",
    "ALPHA",
    "a_b",
    "a.b",
    "a b",
    "a" * 64,
    "alpha\n",  # regression: "$" used to match before a trailing newline
    "\nalpha",
    "alpha ",
    " alpha",
    "é",
    "ａlpha",  # fullwidth a  # noqa: RUF001
    "a\x00",
    "a/b",
    "tenant:acme",
]

GOOD_DOMAINS = [
    "lab.example",
    "a",
    "x.y.z",
    "my-lab.example",
    "1.2.3",
    "a" * 63 + ".example",
    ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61]),  # exactly 253
]
BAD_DOMAINS = [
    "",
    ".",
    "lab..example",
    ".lab.example",
    "lab.example.",
    "Lab.example",
    "lab_example",
    "-lab.example",
    "lab-.example",
    "lab.-example",
    "a" * 64 + ".example",
    ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62]),  # 254
    "lab.example\n",
    "lab example",
    "lab.example/x",
    "ünï.example",
]

GOOD_ROLES = ["node", "admin", "tenant:acme", "tenant:a", "tenant:" + "a" * 63, "tenant:a-1"]
BAD_ROLES = [
    "",
    "Node",
    "root",
    "nodes",
    "admin ",
    "node\n",
    "tenant:",
    "tenant:Acme",
    "tenant:a_b",
    "tenant:-x",
    "tenant:acme:x",
    "tenant:acme\n",
    "tenants:acme",
    "tenant: acme",
    "tenant:" + "a" * 64,
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names(name: str) -> None:
    assert pki.check_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names(name: str) -> None:
    with pytest.raises(IdentityError, match="invalid node name"):
        pki.check_name(name)


@pytest.mark.parametrize("domain", GOOD_DOMAINS)
def test_good_domains(domain: str) -> None:
    assert pki.check_domain(domain) == domain


@pytest.mark.parametrize("domain", BAD_DOMAINS)
def test_bad_domains(domain: str) -> None:
    with pytest.raises(IdentityError, match="invalid mesh domain"):
        pki.check_domain(domain)


@pytest.mark.parametrize("role", GOOD_ROLES)
def test_good_roles(role: str) -> None:
    assert pki.check_role(role) == role


@pytest.mark.parametrize("role", BAD_ROLES)
def test_bad_roles(role: str) -> None:
    with pytest.raises(IdentityError, match="invalid role"):
        pki.check_role(role)


@settings(max_examples=300)
@given(text=st.text(max_size=70))
def test_name_check_agrees_with_its_definition(text: str) -> None:
    # A DNS label, spelt out without a regex.
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-")
    ok = 1 <= len(text) <= 63 and set(text) <= allowed and not text.startswith("-")
    ok = ok and not text.endswith("-")
    if ok:
        assert pki.check_name(text) == text
    else:
        with pytest.raises(IdentityError):
            pki.check_name(text)


# -- the CA and issuing ------------------------------------------------------------------


def test_create_ca() -> None:
    m = fx.mesh()
    ca = m.ca_cert
    assert pki.ca_domain(ca) == fx.DOMAIN
    assert ca.subject == ca.issuer
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "meshd CA lab.example"
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (basic.ca, basic.path_length) == (True, 0)
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.not_valid_before_utc.timestamp() == NOW - 300
    assert ca.not_valid_after_utc.timestamp() == NOW + fx.CA_DAYS * DAY
    m.ca_cert.public_key().verify(ca.signature, ca.tbs_certificate_bytes)  # type: ignore[union-attr]


@pytest.mark.parametrize("domain", ["", "Lab.example", "lab.example\n"])
def test_create_ca_refuses_a_bad_domain(domain: str) -> None:
    with pytest.raises(IdentityError):
        pki.create_ca(domain, NOW, 1)


def test_issue_and_verify_round_trip() -> None:
    m = fx.mesh()
    key = pki.new_key()
    cert = pki.issue(m.ca_key, m.ca_cert, key.public_key(), "zeta", "tenant:acme", NOW, 7)
    info = pki.verify(cert, m.ca_cert, NOW)
    assert info == pki.CertInfo(
        name="zeta",
        domain=fx.DOMAIN,
        role="tenant:acme",
        node_id=pki.node_id_of(key.public_key()),
        serial=format(cert.serial_number, "x"),
        not_before=NOW - 300,
        not_after=NOW + 7 * DAY,
        fingerprint=pki.fingerprint(cert),
    )
    assert pki.describe(cert) == info
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["zeta.lab.example"]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_certificate_never_outlives_its_ca() -> None:
    ca_key, ca_cert = pki.create_ca("short.example", NOW, 10)
    cert = pki.issue(ca_key, ca_cert, pki.new_key().public_key(), "a", "node", NOW, 365)
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("name", "role"), [("Alpha", "node"), ("alpha\n", "node"), ("alpha", "root")]
)
def test_issue_refuses_bad_names_and_roles(name: str, role: str) -> None:
    m = fx.mesh()
    with pytest.raises(IdentityError):
        pki.issue(m.ca_key, m.ca_cert, pki.new_key().public_key(), name, role, NOW, 1)


def test_verify_accepts_the_whole_validity_window_and_nothing_outside() -> None:
    alpha = fx.mesh()["alpha"]
    info = alpha.info
    ca = fx.mesh().ca_cert
    for now in (info.not_before, NOW, info.not_after):
        assert pki.verify(alpha.cert, ca, now) == info
    for now in (info.not_before - 1, info.not_after + 1, 0.0, NOW + 10 * 365 * DAY):
        with pytest.raises(IdentityError, match="not valid at this time"):
            pki.verify(alpha.cert, ca, now)


# -- what verify refuses -----------------------------------------------------------------


@pytest.mark.parametrize("other", ["twin_mesh", "foreign_mesh"])
def test_verify_refuses_another_mesh(other: str) -> None:
    outsider = getattr(fx, other)()["alpha"]
    with pytest.raises(IdentityError):
        pki.verify(outsider.cert, fx.mesh().ca_cert, NOW)


def test_verify_refuses_an_expired_certificate() -> None:
    short = fx.mesh().issue("theta", days=1)
    assert pki.verify(short.cert, fx.mesh().ca_cert, NOW + DAY).name == "theta"
    with pytest.raises(IdentityError, match="not valid at this time"):
        pki.verify(short.cert, fx.mesh().ca_cert, NOW + DAY + 1)


def test_verify_refuses_a_not_yet_valid_certificate() -> None:
    early = fx.mesh().issue("eta", now=NOW + DAY)
    with pytest.raises(IdentityError, match="not valid"):
        pki.verify(early.cert, fx.mesh().ca_cert, NOW)


def test_verify_refuses_the_ca_certificate() -> None:
    with pytest.raises(IdentityError):
        pki.verify(fx.mesh().ca_cert, fx.mesh().ca_cert, NOW)


def test_verify_refuses_a_ca_flagged_certificate() -> None:
    with pytest.raises(IdentityError, match="CA certificate"):
        pki.verify(forge(ca=True), fx.mesh().ca_cert, NOW)


def test_a_forged_certificate_is_fine_when_well_formed() -> None:
    # The control for the refusals below: forge() itself makes acceptable certificates.
    assert pki.verify(forge(), fx.mesh().ca_cert, NOW).name == "zeta"


@pytest.mark.parametrize(
    ("why", "cert"),
    [
        ("other domain", lambda: forge(o=fx.OTHER_DOMAIN)),
        ("no CN", lambda: forge(cn=None)),
        ("no OU", lambda: forge(ou=None)),
        ("two CNs", lambda: forge(extra=(x509.NameAttribute(NameOID.COMMON_NAME, "b"),))),
        ("bad name", lambda: forge(cn="Zeta")),
        ("name with newline", lambda: forge(cn="zeta\n")),
        ("bad role", lambda: forge(ou="root")),
        ("role with newline", lambda: forge(ou="admin\n")),
        ("no basic constraints", lambda: forge(basic=False)),
        ("EC key", lambda: forge(key=ec.generate_private_key(ec.SECP256R1()))),
    ],
)
def test_verify_refuses_odd_certificates_even_from_the_ca(why: str, cert: object) -> None:
    with pytest.raises(IdentityError):
        pki.verify(cert(), fx.mesh().ca_cert, NOW)  # type: ignore[operator]


def test_verify_refuses_a_tampered_signature() -> None:
    der = bytearray(fx.mesh()["alpha"].der)
    der[-1] ^= 0x01
    with pytest.raises(IdentityError, match="signature"):
        pki.verify(pki.load_cert_der(bytes(der)), fx.mesh().ca_cert, NOW)


def test_every_single_bit_flip_of_a_certificate_is_refused() -> None:
    # Regression: flips in the issuer name escaped as ValueError, flips in the version as
    # InvalidVersion, and flips in the outer algorithm or the BIT STRING's unused-bits
    # octet (both outside the signed part) were accepted.
    alpha = fx.mesh()["alpha"]
    ca = fx.mesh().ca_cert
    for pos in range(len(alpha.der)):
        for bit in range(8):
            with pytest.raises(IdentityError):
                pki.verify(pki.load_cert_der(fx.flip(alpha.der, pos, bit)), ca, NOW)


def test_the_certificate_encoding_is_canonical() -> None:
    alpha = fx.mesh()["alpha"]
    for extended in (alpha.der + b"\x00", b"\x00" + alpha.der):
        with pytest.raises(IdentityError):
            pki.verify(pki.load_cert_der(extended), fx.mesh().ca_cert, NOW)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600) | st.binary(max_size=600).map(lambda b: b"\x30\x82" + b))
def test_loading_garbage_only_raises_identity_error(data: bytes) -> None:
    for load in (pki.load_cert_der, lambda d: pki.load_cert_pem(d, "test input")):
        try:
            cert = load(data)
        except IdentityError:
            continue
        with pytest.raises(IdentityError):
            pki.verify(cert, fx.mesh().ca_cert, NOW)


def test_pem_and_der_round_trip() -> None:
    alpha = fx.mesh()["alpha"]
    assert pki.load_cert_der(pki.cert_der(alpha.cert)) == alpha.cert
    assert pki.load_cert_pem(pki.cert_pem(alpha.cert), "alpha") == alpha.cert
    with pytest.raises(IdentityError, match=r"alpha\.crt is not a PEM"):
        pki.load_cert_pem(alpha.der, "alpha.crt")


# -- CSRs --------------------------------------------------------------------------------


def test_csr_round_trip() -> None:
    key = pki.new_key()
    name, public = pki.csr_name(pki.make_csr(key, "theta", fx.DOMAIN))
    assert name == "theta"
    assert pki.public_raw(public) == pki.public_raw(key.public_key())


@pytest.mark.parametrize(("name", "domain"), [("Theta", fx.DOMAIN), ("theta", "Lab"), ("", "a")])
def test_make_csr_refuses_bad_names(name: str, domain: str) -> None:
    with pytest.raises(IdentityError):
        pki.make_csr(pki.new_key(), name, domain)


def _csr_der() -> bytes:
    csr = pki.make_csr(pki.new_key(), "theta", fx.DOMAIN)
    return csr.public_bytes(serialization.Encoding.DER)


def test_csr_name_refuses_a_broken_signature() -> None:
    der = _csr_der()
    for pos in (len(der) - 1, len(der) - 32, len(der) - 64):
        broken = x509.load_der_x509_csr(fx.flip(der, pos, 3))
        with pytest.raises(IdentityError, match="signature is invalid"):
            pki.csr_name(broken)


def test_csr_name_refuses_a_non_ed25519_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "theta")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, SHA256())
    with pytest.raises(IdentityError, match="not Ed25519"):
        pki.csr_name(csr)


def test_csr_name_refuses_a_bad_name() -> None:
    key = pki.new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Theta")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, None)
    with pytest.raises(IdentityError, match="invalid node name"):
        pki.csr_name(csr)


def test_every_single_bit_flip_of_a_csr_is_refused_or_harmless() -> None:
    # Regression: flips in the key's algorithm escaped as UnsupportedAlgorithm/ValueError.
    key = pki.new_key()
    der = pki.make_csr(key, "theta", fx.DOMAIN).public_bytes(serialization.Encoding.DER)
    for pos in range(len(der)):
        for bit in range(8):
            try:
                csr = x509.load_der_x509_csr(fx.flip(der, pos, bit))
            except (ValueError, x509.InvalidVersion):
                continue  # the loader is the caller's edge, not pki's
            try:
                name, public = pki.csr_name(csr)
            except IdentityError:
                continue
            # Only the signature BIT STRING's unused-bits octet is malleable, and a CSR
            # is a one-shot request: what it asks for must be unchanged.
            assert (name, pki.public_raw(public)) == ("theta", pki.public_raw(key.public_key()))


# -- fingerprints and node ids ------------------------------------------------------------


def test_fingerprint_is_stable_sha256_hex() -> None:
    alpha = fx.mesh()["alpha"]
    fp = pki.fingerprint(alpha.cert)
    assert len(fp) == 64
    assert HEX.fullmatch(fp)
    assert fp == hashlib.sha256(alpha.der).hexdigest()
    assert fp == pki.fingerprint(alpha.cert)
    assert fp == pki.fingerprint(pki.load_cert_pem(pki.cert_pem(alpha.cert), "x"))
    assert fp == pki.fingerprint(pki.load_cert_der(alpha.der))
    assert fp == alpha.info.fingerprint
    assert fp != pki.fingerprint(fx.mesh()["beta"].cert)
    assert fp != pki.fingerprint(fx.mesh().ca_cert)


def test_node_id_is_160_bits_of_the_key_hash() -> None:
    m = fx.mesh()
    key = pki.new_key()
    a, b = m.issue("iota", key=key), m.issue("kappa", key=key)
    node_id = pki.node_id_of(key.public_key())
    assert len(node_id) == 40
    assert HEX.fullmatch(node_id)
    assert node_id == hashlib.sha256(pki.public_raw(key.public_key())).digest()[:20].hex()
    assert a.info.node_id == b.info.node_id == node_id  # the key decides, not the cert
    assert m["alpha"].info.node_id != m["beta"].info.node_id


# -- keys ---------------------------------------------------------------------------------


def test_key_pem_round_trip() -> None:
    key = pki.new_key()
    loaded = pki.load_key_pem(pki.key_pem(key), "node.key")
    assert pki.public_raw(loaded.public_key()) == pki.public_raw(key.public_key())


def test_load_key_pem_refuses_garbage_and_other_key_types() -> None:
    with pytest.raises(IdentityError, match="not an unencrypted PEM"):
        pki.load_key_pem(b"not a key", "node.key")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(IdentityError, match="not an Ed25519 key"):
        pki.load_key_pem(ec_pem, "node.key")


def test_a_certificate_names_its_ip_addresses_once_and_never_a_wildcard() -> None:
    ca_key, ca_cert = pki.create_ca("lab.test", NOW, 10)
    key = pki.new_key()
    cert = pki.issue(
        ca_key,
        ca_cert,
        key.public_key(),
        "alpha",
        "node",
        NOW,
        1,
        ["10.0.0.5", "fd00::5", "10.0.0.5", "0.0.0.0"],
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["alpha.lab.test"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5", "fd00::5"]
    pki.verify(cert, ca_cert, NOW)


@pytest.mark.parametrize(
    ("addresses", "sentence"),
    [
        (["blade01.lab"], "'blade01.lab' is not an IP address"),
        ([f"10.0.0.{i}" for i in range(1, 18)], "at most 16 addresses, not 17"),
    ],
)
def test_addresses_a_certificate_cant_name_are_refused_with_a_sentence(
    addresses: list[str], sentence: str
) -> None:
    ca_key, ca_cert = pki.create_ca("lab.test", NOW, 10)
    with pytest.raises(IdentityError, match=re.escape(sentence)):
        pki.issue(ca_key, ca_cert, pki.new_key().public_key(), "a", "node", NOW, 1, addresses)
