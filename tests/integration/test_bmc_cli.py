"""`meshd bmc set` / `meshd bmc check` with a real daemon against the sushy-tools emulator.

The password must appear nowhere but the 0600 file: not in the daemon's log, any API
answer, the event log, the metrics, or the CLI's output (text and --json).
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

try:
    from tests.integration.daemon import Daemon, Mesh
    from tests.integration.sushy import Emulator, emulators
except ImportError:  # tests/integration is not a package, so pytest put it on sys.path
    from daemon import Daemon, Mesh  # type: ignore[no-redef,import-not-found]
    from sushy import Emulator, emulators  # type: ignore[no-redef,import-not-found]

__all__ = ["emulators"]  # the fixture, used by name

Make = Callable[..., Emulator]


def password_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / f"pw-{abs(hash((text, mode)))}"
    path.write_text(text)
    path.chmod(mode)
    return path


def bmc_set(node: Daemon, emu: Emulator, pw: Path, *extra: str):  # type: ignore[no-untyped-def]
    return node.cli(
        "bmc", "set", "--url", emu.url, "--user", emu.user, "--password-file", pw, *extra
    )


def test_bmc_set_and_check_without_ever_showing_the_password(
    mesh_factory: Mesh, emulators: Make, tmp_path: Path
) -> None:
    emu = emulators({"blade1": "On", "blade2": "Off"})
    alpha = mesh_factory.found("alpha")
    seen: list[str] = []  # every answer and output, grepped for the password at the end

    # The password file: private, not empty.
    loose = password_file(tmp_path, emu.password + "\n", 0o644)
    out = bmc_set(alpha, emu, loose, "--system", "blade1", "--ca-file", str(emu.ca_file))
    assert out.returncode == 1 and "chmod 600" in out.stderr
    out = bmc_set(alpha, emu, password_file(tmp_path, "\n"), "--system", "blade1")
    assert out.returncode == 1 and "is empty" in out.stderr
    pw = password_file(tmp_path, emu.password + "\n")

    # https unless --insecure says otherwise.
    plain = alpha.cli(
        "bmc", "set", "--url", "http://127.0.0.1:1", "--user", "u", "--password-file", pw
    )
    assert plain.returncode == 1 and "--insecure" in plain.stderr
    seen += [plain.stdout, plain.stderr]

    # Set with the CA file: stored 0600 before the answer, the CA copied in.
    out = bmc_set(alpha, emu, pw, "--system", "blade1", "--ca-file", str(emu.ca_file), "--json")
    assert out.returncode == 0, out.stderr
    seen += [out.stdout, out.stderr]
    doc = json.loads(out.stdout)
    assert doc["url"] == emu.url and doc["system"] == "blade1" and "password" not in doc
    stored = alpha.data_dir / "identity" / "bmc.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert json.loads(stored.read_text())["password"] == emu.password
    assert (alpha.data_dir / "identity" / "bmc-ca.pem").read_bytes() == emu.ca_file.read_bytes()
    emu.ca_file.unlink()  # the daemon's copy is what counts from now on

    # Check: the emulator's state, through the daemon.
    out = alpha.cli("bmc", "check", "--json")
    assert out.returncode == 0, out.stderr
    seen += [out.stdout, out.stderr]
    check = json.loads(out.stdout)
    assert check["power_state"] == "On" and check["reachable"] and check["error"] is None
    assert check["url"] == emu.url
    assert check["system"] == f"/redfish/v1/Systems/{emu.uuid('blade1')}"
    assert isinstance(check["elapsed_ms"], float)
    out = alpha.cli("bmc", "check")
    assert out.returncode == 0 and "On" in out.stdout
    seen += [out.stdout, out.stderr]

    # A wrong password: stored, then check says what is wrong and exits 1.
    wrong = password_file(tmp_path, "not-the-password")
    out = bmc_set(alpha, emu, wrong, "--system", "blade2", "--insecure")
    assert out.returncode == 0, out.stderr
    seen += [out.stdout, out.stderr]
    out = alpha.cli("bmc", "check", "--json")
    assert out.returncode == 1
    assert "HTTP 401" in json.loads(out.stdout)["error"]
    seen += [out.stdout, out.stderr]
    out = bmc_set(alpha, emu, pw, "--system", "blade2", "--insecure")
    out = alpha.cli("bmc", "check")
    assert out.returncode == 0 and "Off" in out.stdout, out.stderr
    seen += [out.stdout, out.stderr]

    # The routes are for the local operator or an admin: a node certificate is refused.
    refused = alpha.https_get("/v1/bmc", cert=alpha.node_cert)
    assert refused.status == 403
    seen.append(refused.body.decode())

    # Everything the daemon shows: the API, events, metrics, its log.
    seen.append(json.dumps(alpha.api("GET", "/v1/bmc")))
    events = alpha.api("GET", "/v1/events?limit=1000")
    kinds = [e["kind"] for e in events]
    assert kinds.count("bmc.set") == 3 and kinds.count("bmc.checked") == 4
    seen.append(json.dumps(events))
    seen.append(alpha.https_get("/metrics", cert=alpha.node_cert).body.decode())
    seen.append(json.dumps(alpha.api("GET", "/v1/openapi.json")))
    alpha.stop()
    seen.append(alpha.log_path.read_text(errors="replace"))
    assert 'msg="bmc set" url=' in seen[-1]  # the log was written, and is grepped
    for text in seen:
        assert emu.password not in text
        assert "not-the-password" not in text


def test_bmc_check_without_a_bmc_says_how_to_set_one(mesh_factory: Mesh) -> None:
    alpha = mesh_factory.found("alpha")
    out = alpha.cli("bmc", "check")
    assert out.returncode == 1 and "meshd bmc set --url" in out.stderr
    assert alpha.api("GET", "/v1/bmc") == {"configured": False}
