"""`meshd workload logs ID --follow` streams until interrupted, past any request deadline.

A process workload prints a line every 0.2 s; the daemon's request timeout is 2 s. The
follow keeps printing new lines for twice that long, and Ctrl-C (SIGINT) ends it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

try:
    from tests.integration.daemon import MESHD, Mesh, wait_for
except ImportError:  # tests/integration is not a package, so pytest put it on sys.path
    from daemon import MESHD, Mesh, wait_for  # type: ignore[no-redef,import-not-found]

TICKER = "sh -c 'i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done'"
REQUEST_TIMEOUT_S = 2.0


def test_logs_follow_streams_until_interrupted(mesh_factory: Mesh) -> None:
    d = mesh_factory.daemon("alpha")
    d.init()
    d.start(
        "--cpus", "2", "--memory", "1GiB", "--disk", "1GiB",
        "--set", f"api.request_timeout_s={REQUEST_TIMEOUT_S}",
    )  # fmt: skip
    out = d.cli(
        "submit", "--name", "ticker", "--cpus", "1", "--memory", "64MiB",
        "--command", TICKER, "--json", check=True,
    )  # fmt: skip
    wid = json.loads(out.stdout)["workload"]
    follow: subprocess.Popen[str] | None = None
    try:
        wait_for(
            "the ticker running",
            lambda: any(
                r["workload"] == wid and r["state"] == "running"
                for r in d.api("GET", "/v1/workloads")
            ),
        )
        follow = subprocess.Popen(
            [*MESHD, "workload", "logs", wid, "--follow", "--data-dir", str(d.data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(follow.stdout or []), daemon=True)
        reader.start()
        time.sleep(1.0)
        early = len(lines)
        time.sleep(2 * REQUEST_TIMEOUT_S)
        assert follow.poll() is None, f"the follow ended by itself: {follow.stderr.read()}"
        assert len(lines) > early + 5, (early, lines[-3:])
        assert all(line.startswith("tick-") for line in lines if line.strip())
        os.kill(follow.pid, signal.SIGINT)
        assert follow.wait(timeout=5) == 130
        time.sleep(0.5)
        # The interrupted client went away mid-stream: normal, so no error in the log.
        log = d.log_path.read_text()
        assert "Traceback" not in log and "level=error" not in log, log[-2000:]
    finally:
        if follow is not None and follow.poll() is None:
            follow.kill()
            follow.wait()
        d.cli("workload", "rm", wid)
