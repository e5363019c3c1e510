"""Workloads for real: the auction's winner runs a process workload through its driver.

Three `meshd run` daemons on 127.0.0.1. A `process` workload submitted on one node
runs on the winner; every node's `meshd workloads` shows it running; its service name
resolves while it runs; its console is readable from any node (forwarded to the
owner); stopping the owner's daemon leaves the workload running, and the restarted
daemon reattaches the same pid; stop and start are carried out by the owner from any
node; `meshd workload rm` from any node makes the owner tear it down and every node
forget it; a workload whose command can't run ends `failed` with a sentence, leaving
no process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

try:
    from tests.integration.daemon import DOMAIN, Daemon, Mesh, meshd, wait_for
except ImportError:  # pragma: no cover
    from daemon import DOMAIN, Daemon, Mesh, meshd, wait_for  # type: ignore[no-redef]

CAPACITY = ("--cpus", "4", "--memory", "2GiB", "--disk", "10GiB")
TICKER = "sh -c 'while true; do echo tick-$MESHD_WORKLOAD_NAME; sleep 0.2; done'"


def view(d: Daemon, wid: str) -> dict[str, object]:
    rows = {r["workload"]: r for r in d.api("GET", "/v1/workloads")}
    return rows.get(wid, {})


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
def three(mesh_factory: Mesh) -> list[Daemon]:
    return mesh_factory.start_cluster(["alpha", "beta", "gamma"], *CAPACITY)


def test_a_process_workload_runs_survives_restart_and_is_managed_from_anywhere(
    three: list[Daemon],
) -> None:
    alpha, beta, gamma = three
    out = meshd(
        "submit", "--name", "ticker", "--cpus", "1", "--memory", "64MiB", "--node", "beta",
        "--command", TICKER, "--service", "tick:9000", "--json",
        data_dir=alpha.data_dir, check=True,
    )  # fmt: skip
    decision = json.loads(out.stdout)
    wid = decision["workload"]
    assert decision["owner"] == "beta"
    wait_for(
        "running everywhere", lambda: all(view(d, wid).get("state") == "running" for d in three)
    )
    detail = str(view(beta, wid)["detail"])
    pid = int(detail.rsplit(" ", 1)[1])
    try:
        assert alive(pid)
        # The service is published under the owner while the workload runs.
        res = meshd("resolve", f"@tick@{DOMAIN}", "--json", data_dir=gamma.data_dir, check=True)
        assert [(r["node"], r["port"]) for r in json.loads(res.stdout)] == [("beta", 9000)]
        # Its console, read through another node.
        logs = meshd("workload", "logs", wid, data_dir=gamma.data_dir, check=True)
        assert "tick-ticker" in logs.stdout

        # The owner's daemon goes away: the workload does not.
        assert beta.stop() == 0
        assert alive(pid)
        beta.start(*CAPACITY)
        wait_for("reattached", lambda: view(beta, wid).get("state") == "running")
        assert str(view(beta, wid)["detail"]).endswith(str(pid))  # the same process

        # Stop and start, asked of a node that does not own it.
        stopped = meshd("workload", "stop", wid, "--json", data_dir=alpha.data_dir, check=True)
        assert json.loads(stopped.stdout)["state"] == "stopped"
        wait_for("the process to be gone", lambda: not alive(pid), 5)
        wait_for(
            "stopped everywhere", lambda: all(view(d, wid).get("state") == "stopped" for d in three)
        )
        started = meshd("workload", "start", wid, "--json", data_dir=gamma.data_dir, check=True)
        doc = json.loads(started.stdout)
        assert doc["state"] == "running"
        pid = int(str(doc["detail"]).rsplit(" ", 1)[1])
        assert alive(pid)

        # rm from a node that does not own it: the owner tears it down, nothing is left.
        removed = meshd("workload", "rm", wid, "--json", data_dir=gamma.data_dir, check=True)
        assert json.loads(removed.stdout)["generation"] == 2
        wait_for("the process to be gone after rm", lambda: not alive(pid), 10)
        wait_for("its files to be gone", lambda: not (beta.data_dir / "workloads" / wid).exists())
        wait_for("unlisted everywhere", lambda: all(view(d, wid) == {} for d in three))
        again = meshd("workload", "rm", wid, data_dir=alpha.data_dir)
        assert again.returncode == 1 and "no workload" in again.stderr
    finally:
        if alive(pid):
            os.killpg(pid, 9)


def test_a_command_that_cannot_run_fails_with_a_sentence(three: list[Daemon]) -> None:
    alpha = three[0]
    out = meshd(
        "submit", "--name", "broken", "--cpus", "1", "--memory", "64MiB",
        "--command", "/nonexistent/binary --flag", "--json",
        data_dir=alpha.data_dir, check=True,
    )  # fmt: skip
    wid = json.loads(out.stdout)["workload"]
    wait_for("failed", lambda: view(alpha, wid).get("state") == "failed")
    detail = str(view(alpha, wid)["detail"])
    assert "nonexistent" in detail and "\n" not in detail
    owner = next(d for d in three if d.name == json.loads(out.stdout)["owner"])
    assert not (owner.data_dir / "workloads" / wid).exists()  # nothing left behind


def test_a_dead_owners_workload_shows_unknown_not_running(three: list[Daemon]) -> None:
    alpha, beta, _ = three
    out = meshd(
        "submit", "--name", "orphan", "--cpus", "1", "--memory", "64MiB", "--node", "beta",
        "--command", "sleep 600", "--json", data_dir=alpha.data_dir, check=True,
    )  # fmt: skip
    wid = json.loads(out.stdout)["workload"]
    wait_for("running on beta", lambda: view(alpha, wid).get("state") == "running")
    pid = int(str(view(beta, wid)["detail"]).rsplit(" ", 1)[1])
    try:
        beta.kill()  # its daemon dies; the workload's last word stays "running"
        wait_for("unknown on alpha", lambda: view(alpha, wid).get("state") == "unknown", 20)
        assert "beta" in str(view(alpha, wid)["detail"])
    finally:
        if alive(pid):
            os.killpg(pid, 9)


def test_submit_wait_ids_by_prefix_or_name_and_the_human_table(three: list[Daemon]) -> None:
    alpha, _, gamma = three
    out = meshd(
        "submit", "--name", "waiter", "--cpus", "1", "--memory", "64MiB",
        "--command", "sleep 600", "--wait", "--json", data_dir=alpha.data_dir, check=True,
    )  # fmt: skip
    doc = json.loads(out.stdout)
    wid = doc["workload"]
    pid = 0
    try:
        assert doc["state"] == "running"  # --wait returned only once it ran
        assert "waiter on" in out.stderr and "running after" in out.stderr  # progress line
        pid = int(str(doc["detail"]).rsplit(" ", 1)[1])
        # The same workload by a unique id prefix and by its name, from another node.
        for ref in (wid[:6], "waiter"):
            shown = meshd("workload", "show", ref, "--json", data_dir=gamma.data_dir, check=True)
            assert json.loads(shown.stdout)["workload"] == wid
        table = meshd("workloads", data_dir=gamma.data_dir, check=True).stdout.splitlines()
        assert table[0].split() == ["ID", "NAME", "OWNER", "GEN", "STATE", "ADDRESSES", "REASON"]
        assert any(line.startswith(wid[:8]) and "running" in line for line in table[1:])
        # A name two workloads share is refused with a sentence, not guessed.
        twin = meshd(
            "submit", "--name", "waiter", "--cpus", "1", "--memory", "64MiB",
            "--command", "sleep 600", "--json", data_dir=alpha.data_dir, check=True,
        )  # fmt: skip
        twin_id = json.loads(twin.stdout)["workload"]
        both = meshd("workload", "show", "waiter", data_dir=gamma.data_dir)
        assert both.returncode == 1 and "matches 2 workloads" in both.stderr, both.stderr
        meshd("workload", "rm", twin_id, data_dir=alpha.data_dir, check=True)
        missing = meshd("workload", "show", "nosuch", data_dir=gamma.data_dir)
        assert missing.returncode == 1 and "no workload has the id" in missing.stderr
    finally:
        meshd("workload", "rm", wid, data_dir=alpha.data_dir)
        if pid and alive(pid):
            os.killpg(pid, 9)


def test_submit_wait_reports_a_failure_with_a_sentence(three: list[Daemon]) -> None:
    out = meshd(
        "submit", "--name", "doomed", "--cpus", "1", "--memory", "64MiB",
        "--command", "/nonexistent/binary", "--wait", data_dir=three[0].data_dir,
    )  # fmt: skip
    assert out.returncode == 1
    assert "doomed" in out.stderr and "failed on" in out.stderr and "nonexistent" in out.stderr


def test_a_stopped_workload_lends_its_cpu_and_memory_and_failed_ones_everything(
    mesh_factory: Mesh,
) -> None:
    d = mesh_factory.daemon("solo")
    d.init()
    d.start("--cpus", "2", "--memory", "1GiB", "--disk", "1GiB")

    def submit(
        name: str, command: str = "sleep 600", disk: str = "512MiB"
    ) -> subprocess.CompletedProcess[str]:
        return meshd(
            "submit", "--name", name, "--cpus", "2", "--memory", "512MiB", "--disk", disk,
            "--command", command, "--wait", "--json", data_dir=d.data_dir,
        )  # fmt: skip

    try:
        _lend_and_take_back(d, submit)
    finally:  # workloads outlive their daemon by design: remove them, not just it
        for row in d.api("GET", "/v1/workloads"):
            meshd("workload", "rm", row["workload"], data_dir=d.data_dir)
        wait_for("nothing left", lambda: not (d.data_dir / "workloads").exists()
                 or not any((d.data_dir / "workloads").iterdir()))  # fmt: skip


def _lend_and_take_back(d: Daemon, submit: Any) -> None:
    first = json.loads(submit("first").stdout)["workload"]
    refused = submit("second")
    assert refused.returncode == 1 and "not enough cpu" in refused.stderr
    meshd("workload", "stop", first, data_dir=d.data_dir, check=True)
    second = submit("second")  # the stopped one lends its 2 CPUs
    assert second.returncode == 0, second.stderr
    second_id = json.loads(second.stdout)["workload"]
    again = meshd("workload", "start", first, data_dir=d.data_dir)
    assert again.returncode == 1 and "start it again" in again.stderr, again.stderr
    meshd("workload", "rm", second_id, data_dir=d.data_dir, check=True)
    wait_for(
        "first can start again",
        lambda: meshd("workload", "start", first, data_dir=d.data_dir).returncode == 0,
    )
    # A failed workload lends everything, its disk included.
    meshd("workload", "rm", first, data_dir=d.data_dir, check=True)
    broken = submit("broken", "/nonexistent/binary")
    assert broken.returncode == 1 and "failed on" in broken.stderr
    # All of the disk and CPUs: fits only if the failed one holds nothing.
    wait_for(
        "a disk-hungry one placed beside the failed one",
        lambda: submit("after", "sleep 600", "1GiB").returncode == 0,
    )
