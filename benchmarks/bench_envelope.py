"""Envelope cost per message: sign+seal, open+verify (warm and cold), and wire overhead.

Prints one JSON line per figure. The body is 256 bytes and the kind is "bid"; the
receiver's replay memories use the `lan()` preset (30 s window, 65536 nonces) and
messages are 2 ms apart, so the window slides and nonces expire as in steady state.

- ``sign_seal_us``: the sender's whole cost, Signer.sign then Sealer.seal.
- ``open_verify_us``: the receiver's, Sealer.open then Verifier.verify, with the
  author's certificate already in the verifier's cache (the steady state).
- ``verify_cold_us``: Verifier.verify alone when the certificate is *not* cached (the
  first message from a new author): it also parses the certificate and checks the CA's
  signature on it. Two authors alternate through a one-entry cache, so every message
  misses.
- ``seal_overhead_bytes``, ``sign_overhead_bytes`` (and ``*_compact_bytes`` for the
  compact form that names the author by node id): what each layer adds to a payload;
  signing carries the author's certificate, so its overhead depends on the name length.

The anchors are the primitives underneath (Ed25519 sign and verify over the same
message, XSalsa20-Poly1305 over the same payload): the gap to them is the envelope's
own framing, parsing, certificate and replay bookkeeping.

Usage: .venv/bin/python benchmarks/bench_envelope.py [--n 10000] [--rounds 3]
Each figure is the median of ``rounds`` rounds of ``n`` messages (``n/4`` when cold).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import nacl.secret

from meshd import config
from meshd.core.envelope import ReplayGuard, Sealer, Signer, Verifier, addressee
from meshd.core.keyring import KeyRing, MeshKey
from meshd.identity import pki
from meshd.identity.revocation import RevocationList

NOW = 1_700_000_000.0
STEP_S = 0.002  # 500 messages per second per receiver
BODY = bytes(range(256))
KIND = "bid"

# Every datagram is sealed for the receiver at HERE and comes from PEER.
HERE = ("10.0.0.2", 7000)
PEER = ("10.0.0.1", 7000)


def emit(figure: str, value: float, unit: str, n: int, rounds: int) -> None:
    line = {
        "bench": "envelope",
        "figure": figure,
        "value": round(value, 2),
        "unit": unit,
        "n": n,
        "rounds": rounds,
    }
    print(json.dumps(line), flush=True)


@contextmanager
def no_gc() -> Iterator[None]:
    """Keep collector pauses out of the timed loops, as timeit does."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def timed(loop: Callable[..., int], *args: Any) -> float:
    """Microseconds per item of ``loop(*args)``, which returns how many items it did."""
    with no_gc():
        start = time.perf_counter()
        count = loop(*args)
        elapsed = time.perf_counter() - start
    return elapsed / count * 1e6


def send_all(signer: Signer, tx: Sealer, stamps: list[float], out: list[bytes]) -> int:
    for now in stamps:
        out.append(tx.seal(signer.sign(KIND, BODY, now), HERE, now))
    return len(stamps)


def receive_all(rx: Sealer, verifier: Verifier, datagrams: list[bytes], stamps: list[float]) -> int:
    for datagram, now in zip(datagrams, stamps, strict=True):
        verifier.verify(rx.open(datagram, PEER, now), now)
    return len(stamps)


def verify_all(verifier: Verifier, msgs: list[bytes], stamps: list[float]) -> int:
    for msg, now in zip(msgs, stamps, strict=True):
        verifier.verify(msg, now)
    return len(stamps)


class Mesh:
    """A CA, two authors, and the mesh secret: what every node holds."""

    def __init__(self) -> None:
        cfg = config.lan()
        self.cfg = cfg
        self.ca_key, self.ca_cert = pki.create_ca("lab.example", NOW, cfg.security.ca_validity_days)
        self.keys = [pki.new_key() for _ in range(2)]
        self.certs = [
            pki.issue(
                self.ca_key,
                self.ca_cert,
                key.public_key(),
                name,
                "node",
                NOW,
                cfg.security.cert_validity_days,
            )
            for key, name in zip(self.keys, ("alpha", "bravo"), strict=True)
        ]
        self.secret = os.urandom(nacl.secret.SecretBox.KEY_SIZE)

    def guard(self) -> ReplayGuard:
        return ReplayGuard(self.cfg.security.max_clock_skew_s, self.cfg.security.replay_cache_size)

    def sealer(self) -> Sealer:
        keys = KeyRing(self.cfg.security.key_grace_s)
        keys.add(MeshKey(0, self.secret), NOW)
        return Sealer(keys, self.guard(), addressee(HERE).__eq__)

    def verifier(self, cache_size: int = 4096) -> Verifier:
        return Verifier(self.ca_cert, RevocationList(), self.guard(), cache_size)


def nows(n: int) -> list[float]:
    return [NOW + i * STEP_S for i in range(n)]


def bench_warm(mesh: Mesh, n: int, rounds: int) -> None:
    sign_seal: list[float] = []
    open_verify: list[float] = []
    for _ in range(rounds):
        stamps = nows(n)
        datagrams: list[bytes] = []
        signer = Signer(mesh.keys[0], mesh.certs[0])
        sign_seal.append(timed(send_all, signer, mesh.sealer(), stamps, datagrams))
        verifier = mesh.verifier()
        verifier.verify(signer.sign(KIND, BODY, NOW - 1), NOW - 1)  # cache the certificate
        open_verify.append(timed(receive_all, mesh.sealer(), verifier, datagrams, stamps))
    emit("sign_seal_us", statistics.median(sign_seal), "us", n, rounds)
    emit("open_verify_us", statistics.median(open_verify), "us", n, rounds)


def bench_cold(mesh: Mesh, n: int, rounds: int) -> None:
    signers = [Signer(key, cert) for key, cert in zip(mesh.keys, mesh.certs, strict=True)]
    results: list[float] = []
    for _ in range(rounds):
        stamps = nows(n)
        msgs = [signers[i % 2].sign(KIND, BODY, now) for i, now in enumerate(stamps)]
        # Two authors through a one-entry cache: every message is a miss.
        results.append(timed(verify_all, mesh.verifier(cache_size=1), msgs, stamps))
    emit("verify_cold_us", statistics.median(results), "us", n, rounds)


def bench_overhead(mesh: Mesh) -> None:
    signed = Signer(mesh.keys[0], mesh.certs[0]).sign(KIND, BODY, NOW)
    sealed = mesh.sealer().seal(signed, HERE, NOW)
    emit("seal_overhead_bytes", len(sealed) - len(signed), "bytes", 1, 1)
    emit("sign_overhead_bytes", len(signed) - len(BODY), "bytes", 1, 1)
    emit("cert_der_bytes", len(pki.cert_der(mesh.certs[0])), "bytes", 1, 1)
    emit("wire_overhead_bytes", len(sealed) - len(BODY), "bytes", 1, 1)
    # The compact form names the author by node id (membership datagrams).
    compact = Signer(mesh.keys[0], mesh.certs[0]).sign(KIND, BODY, NOW, compact=True)
    emit("sign_overhead_compact_bytes", len(compact) - len(BODY), "bytes", 1, 1)
    emit(
        "wire_overhead_compact_bytes",
        len(mesh.sealer().seal(compact, HERE, NOW)) - len(BODY),
        "bytes",
        1,
        1,
    )


def bench_anchors(mesh: Mesh, n: int, rounds: int) -> None:
    key = mesh.keys[0]
    public = key.public_key()
    message = Signer(key, mesh.certs[0]).sign(KIND, BODY, NOW)
    signed_part = message[:-64]  # what the envelope signs, give or take its prefix
    signature = key.sign(signed_part)
    box = nacl.secret.SecretBox(mesh.secret)
    nonce = os.urandom(nacl.secret.SecretBox.NONCE_SIZE)
    ciphertext = box.encrypt(message, nonce)

    def sign() -> int:
        for _ in range(n):
            key.sign(signed_part)
        return n

    def verify() -> int:
        for _ in range(n):
            public.verify(signature, signed_part)
        return n

    def seal() -> int:
        for _ in range(n):
            box.encrypt(message, os.urandom(nacl.secret.SecretBox.NONCE_SIZE))
        return n

    def open_() -> int:
        for _ in range(n):
            box.decrypt(ciphertext)
        return n

    for figure, loop in (
        ("anchor_ed25519_sign_us", sign),
        ("anchor_ed25519_verify_us", verify),
        ("anchor_secretbox_seal_us", seal),
        ("anchor_secretbox_open_us", open_),
    ):
        emit(figure, statistics.median(timed(loop) for _ in range(rounds)), "us", n, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (median)")
    args = parser.parse_args()
    mesh = Mesh()
    bench_warm(mesh, args.n, args.rounds)
    bench_cold(mesh, max(1, args.n // 4), args.rounds)
    bench_overhead(mesh)
    bench_anchors(mesh, args.n, args.rounds)


if __name__ == "__main__":
    main()
