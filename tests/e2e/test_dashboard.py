"""`meshd ui`: the live dashboard in headless Chromium (issue 14, item 5).

A daemon runs a workload; `meshd ui` serves the page; Chromium (driven over DevTools)
shows the members, the capacity and allocation, the workload with its state, the
auction with its bids. An event made after the page loaded (a network created) appears
on it without a reload, pushed by the event stream. A screenshot of the page is kept
under the test's temporary directory (and in $MESHD_ARTIFACTS when set).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.browser import CHROMIUM, chromium
from tests.integration.daemon import MESHD, Mesh

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
    ),
    pytest.mark.timeout(120),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_ui(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [*MESHD, "ui", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "http://127.0.0.1:" in line, line + (proc.stderr.read() if proc.stderr else "")
    return proc, f"http://127.0.0.1:{port}/"


def test_the_dashboard_shows_the_mesh_and_updates_live(mesh_factory: Mesh, tmp_path: Path) -> None:
    d = mesh_factory.daemon("alpha")
    d.init()
    d.start("--cpus", "4", "--memory", "4GiB", "--disk", "10GiB")
    out = d.cli(
        "submit", "--name", "ticker", "--cpus", "1.5", "--memory", "1GiB",
        "--command", "sleep 600", "--wait", "--json", check=True,
    )  # fmt: skip
    wid = json.loads(out.stdout)["workload"]
    ui, url = start_ui(d.data_dir)
    shot = tmp_path / "dashboard.png"
    try:

        async def drive() -> float:
            async with chromium(url) as b:
                await b.wait_for("document.getElementById('status').textContent === 'live'")
                members = await b.wait_for(
                    "document.querySelector('#members tbody').textContent.includes('alpha') && "
                    "document.querySelector('#members tbody').textContent"
                )
                assert "alive" in members
                rows = await b.wait_for(
                    "document.querySelector('#workloads tbody').textContent.includes('running')"
                    " && document.querySelector('#workloads tbody').textContent"
                )
                assert "ticker" in rows and wid[:8] in rows
                assert "1.5" in await b.evaluate("document.querySelector('#capacity').textContent")
                auctions = await b.wait_for(
                    "document.querySelector('#auctions tbody').textContent.includes('alpha=') &&"
                    " document.querySelector('#auctions tbody').textContent"
                )
                assert wid in auctions  # the round, its winner, and every bid (node=score)
                members = await b.evaluate("document.querySelector('#members tbody').textContent")
                assert "1.5 cpus, 1 GiB" in members  # allocation per node, from the view
                # A change after the page loaded arrives without a reload.
                made = time.time()
                d.cli("network", "create", "lan", "--subnet", "10.40.0.0/24", check=True)
                await b.wait_for(
                    "document.querySelector('#networks tbody').textContent.includes('10.40.0.0/24')"
                )
                shown = time.time() - made
                last = await b.evaluate("document.body.dataset.lastEvent")
                assert "network.created" in last
                await b.screenshot(shot)
                return shown

        shown = asyncio.run(drive())
        assert shown < 5.0  # pushed, not found by a slow poll
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("MESHD_ARTIFACTS"):
            shutil.copy(shot, Path(os.environ["MESHD_ARTIFACTS"]) / shot.name)
    finally:
        ui.terminate()
        ui.wait(timeout=10)
        d.cli("workload", "rm", wid)


def test_ui_refuses_without_a_daemon(tmp_path: Path) -> None:
    out = subprocess.run(
        [*MESHD, "ui", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 1 and "not running" in out.stderr
