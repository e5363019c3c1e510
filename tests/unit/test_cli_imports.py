"""A light CLI command loads only what it needs (issue 15: a command in ≤ 100 ms).

Each case runs ``meshd ARGS`` through ``meshd.cli.main.main`` in a fresh interpreter
and lists the modules it loaded. Asking a daemon (``status``, ``peers``) or printing
help must not load the daemon (its shells, aiohttp, the DHT, mDNS, QEMU), the
identity's cryptography, the store or the config's dataclasses: each costs tens of
milliseconds of imports on every call. Deterministic: it reads ``sys.modules``, it
times nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = (
    "aiohttp",
    "cryptography",
    "nacl",
    "apsw",
    "kademlia",
    "zeroconf",
    "qemu",
    "psutil",
    "uvloop",
    "asyncio",
    "msgspec",
    "meshd.shell",
    "meshd.api",
    "meshd.adapters",
    "meshd.identity",
    "meshd.config",
    "meshd.core",
)

PROBE = """
import json, sys
from meshd.cli import main
try:
    code = main.main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def loaded(tmp_path: Path, *args: str) -> tuple[object, set[str]]:
    """The exit code of ``meshd ARGS`` and every module it loaded."""
    report = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", PROBE, str(report), *args],
        capture_output=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    doc = json.loads(report.read_text())
    return doc["code"], set(doc["modules"])


def heavy_in(modules: set[str], heavy: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in heavy))


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["--help"],
        ["status", "--help"],
        ["run", "--help"],
        ["status"],
        ["peers", "--json"],
        ["workloads"],
        ["workload", "show", "w1"],
        ["resolve", "@web@alpha@lab.example"],
        ["bmc", "check", "--json"],
    ],
    ids=" ".join,
)
def test_a_light_command_loads_nothing_heavy(tmp_path: Path, args: list[str]) -> None:
    talks = args[0] != "--version" and "--help" not in args
    if talks:
        args = [*args, "--data-dir", str(tmp_path / "node")]  # no daemon there: exit 1
    code, modules = loaded(tmp_path, *args)
    assert code in (0, 1)
    # Printing help or the version needs no HTTP client either.
    assert heavy_in(modules, HEAVY if talks else (*HEAVY, "http")) == []


def test_bmc_set_reads_its_password_file_and_loads_nothing_heavy(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    args = ["bmc", "set", "--url", "https://bmc.lab", "--user", "u", "--password-file"]
    code, modules = loaded(tmp_path, *args, str(secret), "--data-dir", str(tmp_path / "n"))
    assert code == 1  # no daemon there
    assert "http.client" in modules  # it got as far as calling the daemon
    assert heavy_in(modules) == []


def test_the_probe_sees_what_a_command_imports_lazily(tmp_path: Path) -> None:
    """The check above is only worth something if it can fail: ``config show`` and
    ``node ls`` import the config and the store inside their handlers."""
    code, modules = loaded(tmp_path, "config", "show", "--data-dir", str(tmp_path))
    assert code == 0
    assert "meshd.config" in heavy_in(modules)
    code, modules = loaded(tmp_path, "node", "ls", "--data-dir", str(tmp_path))
    assert "apsw" in modules
