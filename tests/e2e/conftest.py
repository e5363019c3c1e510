"""Shared end-to-end fixtures: the cached test guest."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def guest() -> dict[str, str]:
    """Paths of the cached guest (kernel, initramfs, base disk); built on first use."""
    proc = subprocess.run(
        ["bash", str(REPO / "bootstrap/guest-image.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"bootstrap/guest-image.sh could not build the guest: {proc.stderr[-300:]}")
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
