"""`meshd events --follow`: a stream of the node's event log, not a poll (issue 14).

A follower started before anything happens prints the node's past events, then each new
one as it is written: an event made after it started reaches it well inside one of the
stream's idle checks (5 s), so it was pushed, not found by polling. Ctrl-C ends it
cleanly, and the daemon's log has no error for the client that hung up.
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


def test_events_follow_streams_new_events_as_they_happen(mesh_factory: Mesh) -> None:
    d = mesh_factory.found("alpha")
    follow = subprocess.Popen(
        [*MESHD, "events", "--follow", "--json", "--data-dir", str(d.data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[tuple[float, dict[str, object]]] = []

    def read() -> None:
        for line in follow.stdout or []:
            lines.append((time.monotonic(), json.loads(line)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for("the past events", lambda: any(e["kind"] == "node.started" for _, e in lines))
        time.sleep(1.0)  # past the first read: what comes next must be pushed
        made = time.monotonic()
        d.cli("network", "create", "lan", "--subnet", "10.40.0.0/24", check=True)
        wait_for(
            "the new event",
            lambda: any(e["kind"] == "network.created" for _, e in lines),
            timeout=4.0,
        )
        at = next(t for t, e in lines if e["kind"] == "network.created")
        assert at - made < 3.0
        ids = [int(str(e["id"])) for _, e in lines]
        assert ids == sorted(ids) and len(ids) == len(set(ids))  # in order, once each
        os.kill(follow.pid, signal.SIGINT)
        assert follow.wait(timeout=5) == 130
        assert "Traceback" not in (follow.stderr.read() if follow.stderr else "")
        time.sleep(0.3)
        log = d.log_path.read_text()
        assert "Traceback" not in log and "level=error" not in log, log[-2000:]
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()


def test_events_lists_the_log_for_people(mesh_factory: Mesh) -> None:
    d = mesh_factory.found("alpha")
    out = d.cli("events", "--limit", "5", check=True).stdout.splitlines()
    assert out and any("node.started" in line and "alpha" in line for line in out)
    assert all("Z (" in line for line in out)  # dates, not epoch seconds
