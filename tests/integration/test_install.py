"""bootstrap/install.sh, as an operator runs it on a blade (issue 14, the install kit).

Runs the real script as root into a scratch root (every directory it writes is given
by flag), from a wheel built offline from this tree, and checks what a blade gets:
``meshd`` on PATH running the installed copy (not this checkout), a 0700 data dir, the
hardened unit pointing at both, rated by ``systemd-analyze security`` (offline), the
sysctl file and the example configs, which meshd itself accepts. A second run upgrades
in place and keeps the data dir's contents.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# `systemd-analyze security` scores 0 (locked down) to 10 (unsafe); before the
# hardening the unit scored 9.6. What meshd must keep (root, CAP_NET_ADMIN, /dev/kvm,
# the host's network) holds it above ~3; 5.0 is where systemd stops calling it "OK".
MAX_EXPOSURE = 5.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh installs as root")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Build from a copy: an in-tree build would leave build/ and *.egg-info behind.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "meshd", src / "meshd", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("meshd-*.whl")
    return whl


def _install(root: Path, wheel: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "bash",
            str(ROOT / "bootstrap/install.sh"),
            "--no-apt",
            "--no-deps",
            "--wheel",
            str(wheel),
            "--prefix",
            str(root / "opt/meshd"),
            "--bin-dir",
            str(root / "bin"),
            "--data-dir",
            str(root / "var/lib/meshd"),
            "--unit-dir",
            str(root / "systemd"),
            "--sysctl-dir",
            str(root / "sysctl.d"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _installed_env() -> dict[str, str]:
    # --no-deps: the installed venv has meshd alone; its dependencies come from the
    # test's interpreter, appended after the venv's own site-packages.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())
    env.pop("MESHD_DATA_DIR", None)
    return env


def test_install_puts_meshd_on_path_with_a_private_data_dir_and_a_hardened_unit(
    tmp_path: Path, wheel: Path
) -> None:
    root = tmp_path / "root"
    done = _install(root, wheel)
    assert done.returncode == 0, done.stderr
    assert "meshd 0.1.0" in done.stdout and "systemctl enable --now meshd" in done.stdout

    link = root / "bin/meshd"
    assert link.is_symlink() and link.resolve() == (root / "opt/meshd/venv/bin/meshd").resolve()
    data = root / "var/lib/meshd"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700

    # The installed copy runs, from anywhere, and is not this checkout.
    env = _installed_env()
    where = subprocess.run(
        [str(root / "opt/meshd/venv/bin/python"), "-c", "import meshd; print(meshd.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(root / "opt/meshd/venv")), where
    init = subprocess.run(
        [
            str(link),
            "init",
            "--data-dir",
            str(data),
            "--name",
            "blade01",
            "--domain",
            "lab.test",
            "--listen",
            "127.0.0.1:0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert init.returncode == 0, init.stderr

    unit = (root / "systemd/meshd.service").read_text()
    assert f"ExecStart={link} run" in unit
    assert f"MESHD_DATA_DIR={data}" in unit and f"ReadWritePaths={data}" in unit
    assert "KillMode=process" in unit  # a restart of meshd must spare its VMs
    if shutil.which("systemd-analyze"):
        rated = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", str(root / "systemd/meshd.service")],
            capture_output=True,
            text=True,
            check=False,
        )
        m = re.search(r"Overall exposure level for meshd.service: ([0-9.]+)", rated.stdout)
        assert m, rated.stdout + rated.stderr
        assert float(m.group(1)) <= MAX_EXPOSURE, rated.stdout

    sysctl = (root / "sysctl.d/60-meshd.conf").read_text()
    assert "net.bridge.bridge-nf-call-iptables = 0" in sysctl
    for name in ("founding", "joining", "witness"):
        example = root / f"opt/meshd/examples/{name}.toml"
        shown = subprocess.run(
            [str(link), "config", "show", "--data-dir", str(data), "--config", str(example)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr

    # Upgrade in place: the identity stays.
    again = _install(root, wheel)
    assert again.returncode == 0, again.stderr
    assert (data / "meshd.db").exists() or any(data.iterdir())


def test_install_refuses_a_relative_directory_with_a_sentence(tmp_path: Path, wheel: Path) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "bootstrap/install.sh"), "--no-apt", "--prefix", "opt/meshd"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "opt/meshd is not an absolute path" in done.stderr
    assert not (tmp_path / "opt").exists()
