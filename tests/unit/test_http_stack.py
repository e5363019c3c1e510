"""The daemon loads aiohttp without its import-time CA stores, and only those."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tests.unit import pki_fixtures

PROBE = """
import json, os, ssl
before = {k: os.environ.get(k) for k in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
from meshd.adapters import http_stack
http_stack.load()
import aiohttp.connector as connector
after = {k: os.environ.get(k) for k in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
print(json.dumps({
    "aiohttp_default_cas": len(connector._SSL_CONTEXT_VERIFIED.get_ca_certs()),
    "env_restored": before == after,
    "later_context_cas": ssl.create_default_context().cert_store_stats()["x509_ca"],
}))
"""


def probe(env: dict[str, str] | None = None) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=env
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_aiohttp_defaults_hold_no_ca_and_the_environment_is_put_back() -> None:
    got = probe()
    assert got["aiohttp_default_cas"] == 0
    assert got["env_restored"] is True


def test_a_context_made_later_reads_the_ca_file_it_is_told(tmp_path: Path) -> None:
    # A CA file named by SSL_CERT_FILE is read by contexts made after the load: the
    # variable was put back, not left pointing at nothing.
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki_fixtures.mesh().ca_cert.public_bytes(serialization.Encoding.PEM))
    env = dict(os.environ, SSL_CERT_FILE=str(ca))
    env.pop("SSL_CERT_DIR", None)
    got = probe(env)
    assert got["aiohttp_default_cas"] == 0
    assert got["later_context_cas"] == 1
