"""/metrics carries capacity, allocation, workload states and fences (issue 14), and the
whole exposition passes ``promtool check metrics`` (Debian's prometheus package)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

try:
    from tests.integration.daemon import Mesh, wait_for
except ImportError:  # tests/integration is not a package, so pytest put it on sys.path
    from daemon import Mesh, wait_for  # type: ignore[no-redef,import-not-found]

GiB = 1024**3


def _sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(f"{name}{{{want}}}" if want else name) + r" (\S+)$"
    for line in text.splitlines():
        m = re.match(pattern, line)
        if m:
            return float(m.group(1))
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_metrics_show_capacity_allocation_and_workload_states(mesh_factory: Mesh) -> None:
    d = mesh_factory.daemon("alpha")
    d.init()
    d.start("--cpus", "4", "--memory", "8GiB", "--disk", "20GiB")
    out = d.cli(
        "submit", "--name", "sleeper", "--cpus", "1.5", "--memory", "1GiB",
        "--command", "sleep 600", "--json", check=True,
    )  # fmt: skip
    wid = json.loads(out.stdout)["workload"]
    try:
        wait_for(
            "the sleeper running",
            lambda: (
                _sample(d.api("GET", "/metrics"), "meshd_local_workloads", state="running") == 1.0
            ),
        )
        text = str(d.api("GET", "/metrics"))
        assert _sample(text, "meshd_capacity", resource="cpus") == 4.0
        assert _sample(text, "meshd_capacity", resource="memory_bytes") == 8 * GiB
        assert _sample(text, "meshd_allocated", resource="cpus") == 1.5
        assert _sample(text, "meshd_allocated", resource="memory_bytes") == 1 * GiB
        assert _sample(text, "meshd_workloads", state="running") == 1.0
        assert _sample(text, "meshd_fence_episodes", state="fenced") == 0.0
        if shutil.which("promtool") is None:
            pytest.skip("promtool is not installed (Debian's prometheus package)")
        checked = subprocess.run(
            ["promtool", "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        d.cli("workload", "rm", wid)
