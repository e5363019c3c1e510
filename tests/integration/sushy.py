"""The real sushy-tools 2.2.0 Redfish emulator as the tests' BMC.

sushy-tools lives in its own virtualenv (``.cache/sushy-venv`` in the repository,
gitignored; ``bootstrap/setup.sh --test`` builds it, and :func:`sushy_python` builds it
on first use when missing). A test that can't have it is skipped with the reason.

:class:`Emulator` is one ``sushy-emulator --fake`` process with:

* one system per blade (``SUSHY_EMULATOR_FAKE_SYSTEMS``), each with a fixed UUID and an
  initial power state; the emulator lists systems by UUID and answers
  ``Systems/<name>`` with a 307 to the UUID path;
* a fresh ``SUSHY_EMULATOR_STATE_DIR`` (a stored system ignores config changes);
* TLS with a certificate for 127.0.0.1 signed by a test CA made here;
* HTTP Basic against an htpasswd file (bcrypt cost 4: cost 12 is 218 ms a request);
* the fake driver's power delay fixed (``delay_s``, see ``sushy_main.py``) or, with
  ``delay_s=None``, the stock random 1-11 s;
* port 0: werkzeug binds a free port and prints it, read from the emulator's log.

Its log (werkzeug's request lines) is kept, so a test can count the requests the
emulator actually served (:meth:`Emulator.requests`). The process is ended by its own
pid in :meth:`Emulator.close`.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import re
import signal
import ssl
import subprocess
import time
import urllib.request
import uuid
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".cache" / "sushy-venv"
VERSION = "2.2.0"
MAIN = Path(__file__).with_name("sushy_main.py")
START_TIMEOUT_S = 20.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours some request lines
REQUEST_LINE = re.compile(r'"(GET|POST|DELETE|PATCH|PUT|HEAD) (\S+) HTTP/[\d.]+" (\d{3})')


def sushy_python() -> Path:
    """The sushy venv's python, built once; pytest.skip saying why when it can't be."""
    python = VENV / "bin" / "python"
    stamp = VENV / f".sushy-tools-{VERSION}"
    if stamp.exists() and python.exists():
        return python
    try:
        if not python.exists():
            subprocess.run(
                ["python3", "-m", "venv", str(VENV)], check=True, capture_output=True, timeout=120
            )
        subprocess.run(
            [
                str(VENV / "bin" / "pip"),
                "install",
                "-q",
                "--disable-pip-version-check",
                f"sushy-tools=={VERSION}",
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pytest.skip(
            f"sushy-tools {VERSION} can't be installed in {VENV} ({exc}; "
            f"{detail.decode(errors='replace')[-300:]}); run `bash bootstrap/setup.sh --test`"
        )
    stamp.write_text(VERSION)
    return python


# -- a test CA and the emulator's certificate ---------------------------------------------


@dataclass(frozen=True)
class TestCa:
    cert_pem: bytes
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def make_ca(name: str = "meshd test BMC CA") -> TestCa:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return TestCa(cert.public_bytes(serialization.Encoding.PEM), key, cert)


def server_cert(ca: TestCa, address: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for ``address`` and localhost, signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(address)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


# -- the emulator ----------------------------------------------------------------------


def system_uuid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.bmc.meshd.test"))


@dataclass
class Emulator:
    """One running sushy-emulator; see the module docstring."""

    dir: Path
    systems: dict[str, str]  # name -> initial power state
    user: str = "admin"
    password: str = "s3cret-BMC-pw-7d1f"
    delay_s: int | None = 0
    tls: bool = True
    port: int = 0
    pid: int = 0
    ca: TestCa | None = None
    # Where it listens, and a wrapper for its command (``ip netns exec NS``): the e2e
    # blades reach it on a BMC network namespace (tests/e2e/blades.py).
    listen_ip: str = "127.0.0.1"
    prefix: tuple[str, ...] = ()
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.listen_ip}:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def log_path(self) -> Path:
        return self.dir / "emulator.log"

    def uuid(self, name: str) -> str:
        return system_uuid(name)

    def start(self) -> Emulator:
        python = sushy_python()
        self.dir.mkdir(parents=True, exist_ok=True)
        state = self.dir / "state"
        state.mkdir()
        htpasswd = self.dir / "htpasswd"
        hashed = subprocess.run(
            [str(python), "-c", _BCRYPT],
            input=self.password.encode(),
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout.decode()
        htpasswd.write_text(f"{self.user}:{hashed.strip()}\n")
        config: dict[str, Any] = {
            "SUSHY_EMULATOR_LISTEN_IP": self.listen_ip,
            "SUSHY_EMULATOR_LISTEN_PORT": 0,
            "SUSHY_EMULATOR_FAKE_DRIVER": True,
            "SUSHY_EMULATOR_STATE_DIR": str(state),
            "SUSHY_EMULATOR_AUTH_FILE": str(htpasswd),
            "SUSHY_EMULATOR_FAKE_SYSTEMS": [
                {"uuid": system_uuid(name), "name": name, "power_state": power, "nics": []}
                for name, power in self.systems.items()
            ],
        }
        if self.tls:
            self.ca = make_ca()
            cert, key = server_cert(self.ca, self.listen_ip)
            self.ca_file.write_bytes(self.ca.cert_pem)
            (self.dir / "bmc.pem").write_bytes(cert)
            (self.dir / "bmc.key").write_bytes(key)
            config["SUSHY_EMULATOR_SSL_CERT"] = str(self.dir / "bmc.pem")
            config["SUSHY_EMULATOR_SSL_KEY"] = str(self.dir / "bmc.key")
        conf = self.dir / "emulator.conf"
        # Flask reads the config as Python source: repr() writes literals it parses.
        conf.write_text("".join(f"{k} = {v!r}\n" for k, v in config.items()))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUSHY_")}
        if self.delay_s is not None:
            env["MESHD_SUSHY_DELAY_S"] = str(self.delay_s)
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [*self.prefix, str(python), str(MAIN), "--fake", "--config", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.pid = self._proc.pid
        self._wait_port()
        return self

    def _wait_port(self) -> None:
        end = time.monotonic() + START_TIMEOUT_S
        pattern = re.compile(rf"Running on https?://{re.escape(self.listen_ip)}:(\d+)")
        while time.monotonic() < end:
            found = pattern.search(self.log_path.read_text(errors="replace"))
            if found:
                self.port = int(found.group(1))
                return
            assert self._proc is not None
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.close()
        raise AssertionError(f"sushy-emulator did not start: {tail}")

    def close(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)

    # -- looking at it from outside our client ----------------------------------------

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request the emulator logged, in order."""
        text = ANSI.sub("", self.log_path.read_text(errors="replace"))
        return [(m, p, int(s)) for m, p, s in REQUEST_LINE.findall(text)]

    def get(self, path: str) -> Any:
        """GET a resource with urllib (an independent client), as the test's user."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file)) if self.tls else None
        token = b64encode(f"{self.user}:{self.password}".encode()).decode()
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return json.loads(resp.read())

    def reset(self, name: str, reset_type: str) -> None:
        """POST a ResetType to a system with urllib (sets the scene, outside our client)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file)) if self.tls else None
        token = b64encode(f"{self.user}:{self.password}".encode()).decode()
        req = urllib.request.Request(
            f"{self.url}/redfish/v1/Systems/{system_uuid(name)}/Actions/ComputerSystem.Reset",
            data=json.dumps({"ResetType": reset_type}).encode(),
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, context=ctx, timeout=10):
            pass

    def power(self, name: str) -> str:
        state: str = self.get(f"/redfish/v1/Systems/{system_uuid(name)}")["PowerState"]
        return state


@pytest.fixture
def emulators(tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    """``emulators({"blade1": "On"}, delay_s=0)`` starts an emulator; all are ended after."""
    made: list[Emulator] = []

    def make(systems: dict[str, str], **kw: Any) -> Emulator:
        emu = Emulator(tmp_path / f"bmc{len(made)}", systems, **kw)
        made.append(emu)
        return emu.start()

    try:
        yield make
    finally:
        for emu in made:
            emu.close()


_BCRYPT = (
    "import bcrypt, sys; "
    "print(bcrypt.hashpw(sys.stdin.buffer.read(), bcrypt.gensalt(rounds=4)).decode())"
)
