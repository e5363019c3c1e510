"""No single point of failure for enrolment, with real ``meshd`` processes.

* ``meshd ca promote``: a second CA holder enrols and removes nodes after the founder
  is gone; its revocations are honoured by the founder; tokens stay single use.
* ``meshd ca backup`` / ``restore``: a member becomes a holder again from the file.
* a join whose answer was lost (the joiner killed after the seed signed it in) is
  retried with the same key and succeeds; another key with that token is refused.
* ``meshd token create --replace NAME``: a replaced blade takes its old name, the old
  certificate stays refused everywhere.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

try:
    from tests.integration.daemon import (
        MESHD,
        Daemon,
        Mesh,
        _child_env,
        wait_all_alive,
        wait_for,
    )
except ImportError:  # tests/integration is not a package, so pytest put it on sys.path
    from daemon import (  # type: ignore[no-redef,import-not-found]
        MESHD,
        Daemon,
        Mesh,
        _child_env,
        wait_all_alive,
        wait_for,
    )


def refused(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0, f"expected a refusal, got success: {proc.stdout}"
    for n in needles:
        assert n in proc.stderr, f"{n!r} not in {proc.stderr!r}"
    return proc.stderr


def roster_of(node: Daemon) -> dict[str, dict[str, object]]:
    rows = json.loads(node.cli("node", "ls", "--json", check=True).stdout)
    return {r["name"]: r for r in rows}


def tls_status(node: Daemon, cert: tuple[Path, Path]) -> int:
    return node.https_get("/v1/node", cert=cert).status


def keep_cert(node: Daemon, where: Path) -> tuple[Path, Path]:
    where.mkdir(parents=True, exist_ok=True)
    crt, key = node.node_cert
    shutil.copy(crt, where / "node.crt")
    shutil.copy(key, where / "node.key")
    return where / "node.crt", where / "node.key"


# -- promote ------------------------------------------------------------------------------


def test_a_promoted_node_enrols_and_removes_after_the_founder_is_gone(
    mesh_factory: Mesh,
) -> None:
    alpha = mesh_factory.found("alpha")
    beta = mesh_factory.join("beta", via=alpha)
    wait_all_alive([alpha, beta])
    refused(beta.cli("token", "create"), "does not hold the mesh CA key")
    # A member can't promote itself through a holder's TCP API with its node certificate.
    body = json.dumps({"node": "beta"}).encode()
    resp = alpha.https(
        "POST",
        "/v1/ca/promote",
        cert=beta.node_cert,
        body=body,
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 403
    # Nor remove another node, mint a join token or publish a service on a holder.
    for method, path, payload in (
        ("DELETE", "/v1/roster/alpha", None),
        ("POST", "/v1/tokens", b"{}"),
        ("POST", "/v1/services", json.dumps({"name": "web", "port": 80}).encode()),
    ):
        resp = alpha.https(
            method,
            path,
            cert=beta.node_cert,
            body=payload,
            headers={"Content-Type": "application/json"},
        )
        assert resp.status == 403, (method, path, resp.status)
        assert "node certificate may not call" in resp.json()["error"]
    refused(alpha.cli("ca", "promote", "nobody"), "no current member named 'nobody'")
    refused(beta.cli("ca", "promote", "alpha"), "does not hold the mesh CA key")

    doc = json.loads(alpha.cli("ca", "promote", "beta", "--json", check=True).stdout)
    assert doc["node"] == "beta"
    ca_key = beta.data_dir / "identity" / "ca.key"
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    assert ca_key.read_bytes() == (alpha.data_dir / "identity" / "ca.key").read_bytes()
    assert beta.status()["ca_holder"] is True

    # The founder dies; beta enrols gamma and removes it again on its own.
    alpha.stop()
    from_beta = beta.create_token()
    gamma = mesh_factory.join("gamma", via=beta, token=from_beta)
    refused(mesh_factory.daemon("stray").init(join=from_beta, check=False), "already used")
    wait_all_alive([beta, gamma])
    gamma_cert = keep_cert(gamma, mesh_factory.base / "old-gamma")
    beta.cli("node", "remove", "gamma", check=True)
    assert tls_status(beta, gamma_cert) == 403

    # The founder comes back and honours the revocation beta signed.
    alpha.start()
    wait_for("alpha to learn gamma's removal", lambda: tls_status(alpha, gamma_cert) == 403, 30)
    assert "gamma was removed" in alpha.https_get("/v1/node", cert=gamma_cert).json()["error"]


def test_a_token_is_refused_at_a_holder_that_did_not_issue_it(mesh_factory: Mesh) -> None:
    alpha = mesh_factory.found("alpha")
    beta = mesh_factory.join("beta", via=alpha)
    wait_all_alive([alpha, beta])
    alpha.cli("ca", "promote", "beta", check=True)
    # A token from alpha that names beta as its seed: beta's store never recorded it.
    tok = alpha.cli("token", "create", "--seed", beta.address, check=True).stdout.strip()
    refused(mesh_factory.daemon("x").init(join=tok, check=False), "not issued by this seed")


# -- backup and restore -------------------------------------------------------------------


def test_backup_and_restore_bring_enrolment_back_when_every_holder_died(
    mesh_factory: Mesh, tmp_path: Path
) -> None:
    alpha = mesh_factory.found("alpha")
    beta = mesh_factory.join("beta", via=alpha)
    secret = tmp_path / "passphrase"
    secret.write_text("a long offline passphrase\n")
    backup = tmp_path / "ca.backup"
    alpha.cli("ca", "backup", "--out", backup, "--passphrase-file", secret, check=True)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in backup.read_bytes()
    checked = alpha.cli("ca", "restore", "--from", backup, "--passphrase-file", secret, check=True)
    assert "nothing changed" in checked.stdout
    refused(alpha.cli("ca", "backup", "--out", backup, "--passphrase-file", secret), "exists")

    # Every holder is gone: alpha's disk died with it.
    alpha.kill()
    shutil.rmtree(alpha.data_dir / "identity")
    refused(beta.cli("token", "create"), "meshd ca restore")

    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    refused(
        beta.cli("ca", "restore", "--from", backup, "--passphrase-file", wrong),
        "passphrase does not open",
    )
    assert not (beta.data_dir / "identity" / "ca.key").exists()
    other = mesh_factory.found("other", domain="other.example", start=False)
    refused(
        other.cli("ca", "restore", "--from", backup, "--passphrase-file", secret),
        "another mesh",
    )

    beta.cli("ca", "restore", "--from", backup, "--passphrase-file", secret, check=True)
    assert stat.S_IMODE((beta.data_dir / "identity" / "ca.key").stat().st_mode) == 0o600
    assert beta.status()["ca_holder"] is True  # the running daemon picked it up
    gamma = mesh_factory.join("gamma", via=beta)
    wait_all_alive([beta, gamma])


# -- a join retried after the joiner died ---------------------------------------------------

# The joiner is the real CLI, killed (os._exit) right after the seed's answer arrived
# and before it wrote its identity: the fault of a power cut at the worst moment.
DIE_BEFORE_SAVE = (
    "import os, sys\n"
    "from meshd.identity import files\n"
    "def die(*args): os._exit(17)\n"
    "files.save = die\n"
    "from meshd.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_a_join_whose_answer_was_lost_is_retried_with_the_same_key(mesh_factory: Mesh) -> None:
    alpha = mesh_factory.found("alpha")
    token = alpha.create_token()
    beta = mesh_factory.daemon("beta")
    argv = beta.init_command(token)
    died = subprocess.run(
        [sys.executable, "-c", DIE_BEFORE_SAVE, *argv[len(MESHD) :]],
        capture_output=True,
        text=True,
        timeout=60,
        env=_child_env(),
        check=False,
    )
    assert died.returncode == 17, died.stderr
    assert not (beta.data_dir / "identity" / "node.crt").exists()
    assert "beta" in roster_of(alpha)  # the seed did sign it in

    # A third party with the same token is refused, under beta's name or another.
    thief = mesh_factory.daemon("thief")
    refused(thief.init(join=token, check=False), "already used")
    impostor = mesh_factory.daemon("impostor")
    refused(
        subprocess.run(
            [*MESHD, "init", "--name", "beta", "--join", token, "--data-dir", impostor.data_dir],
            capture_output=True,
            text=True,
            timeout=60,
            env=_child_env(),
            check=False,
        ),
        "already in this mesh",
    )

    # The joiner runs the same command again and completes, with the certificate the
    # seed issued the first time.
    beta.init(join=token)
    assert not (beta.data_dir / "identity" / "join.key").exists()
    issued = roster_of(alpha)["beta"]["node_id"]
    beta.start()
    assert beta.status()["node_id"] == issued
    wait_all_alive([alpha, beta])


# -- replacing a blade under its old name ----------------------------------------------------


def test_a_replaced_blade_takes_its_old_name_and_the_old_cert_stays_refused(
    mesh_factory: Mesh,
) -> None:
    alpha = mesh_factory.found("alpha")
    beta, gamma = mesh_factory.join("beta", via=alpha), mesh_factory.join("gamma", via=alpha)
    wait_all_alive([alpha, beta, gamma])
    old_cert = keep_cert(beta, mesh_factory.base / "old-beta")
    old_id = beta.status()["node_id"]
    refused(alpha.cli("token", "create", "--replace", "beta"), "still a member")
    beta.kill()
    alpha.cli("node", "remove", "beta", check=True)
    wait_for("gamma to learn beta's removal", lambda: tls_status(gamma, old_cert) == 403, 30)

    # The blade is replaced: a new disk, the old name.
    shutil.rmtree(beta.data_dir)
    plain = alpha.create_token()
    refused(beta.init(join=plain, check=False), "meshd token create --replace beta")
    replace = alpha.cli("token", "create", "--replace", "beta", check=True).stdout.strip()
    beta.init(join=replace)
    beta.start()
    new_id = beta.status()["node_id"]
    assert new_id != old_id
    wait_all_alive([alpha, beta, gamma])
    for node in (alpha, gamma):
        assert tls_status(node, old_cert) == 403
        assert tls_status(node, beta.node_cert) == 200
    wait_for(
        "gamma's roster to show the new beta",
        lambda: roster_of(gamma)["beta"]["node_id"] == new_id,
    )
    assert roster_of(alpha)["beta"]["removed_at"] is None
    assert roster_of(gamma)["beta"]["removed_at"] is None
