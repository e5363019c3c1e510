"""CA custody with real processes: promoting a holder, retrying a join, backup and restore.

Prints JSON lines:
* ``promote_s``: `POST /v1/ca/promote` on the founder's unix socket until the answer
  (mTLS to the member, sealed key, its CA-signed acknowledgement), one per member of
  a 1 + ``--members`` mesh on 127.0.0.1; median and max. ``promote_cli_s``: the same
  through `meshd ca promote` (CLI start-up included), once.
* ``join_s`` / ``join_retry_s``: `meshd init --join` wall time, a first join (the
  anchor) against the same command run again after the joiner was killed right after
  the seed's answer arrived (the seed answers with the certificate it issued); median.
* ``backup_s`` / ``restore_s``: `meshd ca backup` / `meshd ca restore` wall time
  (Argon2id "moderate": the passphrase's cost is most of it).

Run: .venv/bin/python benchmarks/bench_ca.py [--members 3] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.daemon import MESHD, Daemon, Mesh, _child_env, wait_all_alive  # noqa: E402
from tests.integration.test_ca_custody import DIE_BEFORE_SAVE  # noqa: E402


def _timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=_child_env(), check=False
    )
    return time.monotonic() - t0, proc


def _emit(name: str, values: list[float], **extra: object) -> None:
    doc = {
        "name": name,
        "unit": "s",
        "value": round(statistics.median(values), 4),
        "max": round(max(values), 4),
        "runs": len(values),
        **extra,
    }
    print(json.dumps(doc), flush=True)


def promote(mesh: Mesh, founder: Daemon, members: int) -> None:
    nodes = [mesh.join(f"m{i}", via=founder) for i in range(1, members + 2)]
    wait_all_alive([founder, *nodes])
    times = []
    for d in nodes[:-1]:
        t0 = time.monotonic()
        founder.api("POST", "/v1/ca/promote", {"node": d.name})
        times.append(time.monotonic() - t0)
    _emit("promote_s", times, members=members)
    took, proc = _timed(
        [*MESHD, "ca", "promote", nodes[-1].name, "--data-dir", str(founder.data_dir)]
    )
    assert proc.returncode == 0, proc.stderr
    _emit("promote_cli_s", [took])


def joins(mesh: Mesh, founder: Daemon, runs: int) -> None:
    first, retry = [], []
    for i in range(runs):
        d = mesh.daemon(f"j{i}")
        took, proc = _timed(d.init_command(founder.api_token()))
        assert proc.returncode == 0, proc.stderr
        first.append(took)
        d = mesh.daemon(f"r{i}")
        argv = d.init_command(founder.api_token())
        _, died = _timed([sys.executable, "-c", DIE_BEFORE_SAVE, *argv[len(MESHD) :]])
        assert died.returncode == 17, died.stderr
        took, proc = _timed(argv)
        assert proc.returncode == 0, proc.stderr
        retry.append(took)
    _emit("join_s", first)
    _emit("join_retry_s", retry, anchor="join_s")


def backup(mesh: Mesh, founder: Daemon, base: Path) -> None:
    secret = base / "passphrase"
    secret.write_text("a long offline passphrase\n")
    out = base / "ca.backup"
    took, proc = _timed(
        [
            *MESHD,
            "ca",
            "backup",
            "--out",
            str(out),
            "--passphrase-file",
            str(secret),
            "--data-dir",
            str(founder.data_dir),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    _emit("backup_s", [took])
    member = mesh.join("b1", via=founder, start=False)
    took, proc = _timed(
        [
            *MESHD,
            "ca",
            "restore",
            "--from",
            str(out),
            "--passphrase-file",
            str(secret),
            "--data-dir",
            str(member.data_dir),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    _emit("restore_s", [took])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        mesh = Mesh(Path(tmp))
        try:
            founder = mesh.found("alpha")
            promote(mesh, founder, args.members)
            joins(mesh, founder, args.runs)
            backup(mesh, founder, Path(tmp))
        finally:
            mesh.close()


if __name__ == "__main__":
    main()
