"""SIGKILL a process that is committing to the store; nothing it reported is lost.

The writer (store_writer.py, a real child process) prints each transaction's number
only after COMMIT returns. After the kill the parent reopens the file, which replays
the WAL, and checks that every reported row is there, that each transaction is whole
(its workload and its event, or neither), and that SQLite finds no corruption.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from meshd.adapters.store import Store

WRITER = Path(__file__).with_name("store_writer.py")


@dataclass
class Reader:
    """Collects the numbers the child reports, on a thread so the parent can time a kill."""

    stream: IO[str]
    reported: list[int] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def run(self) -> None:
        for line in self.stream:
            if not line.endswith("\n"):
                break  # cut short by the kill: never a full report
            with self.arrived:
                self.reported.append(int(line))
                self.arrived.notify_all()
        with self.arrived:
            self.arrived.notify_all()

    def wait_for(self, count: int, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.reported) < count:
                left = deadline - time.monotonic()
                if proc.poll() is not None or left <= 0:
                    pytest.fail(f"writer reported {len(self.reported)} of {count} ids")
                self.arrived.wait(min(left, 0.5))


def run_and_kill(db_path: Path, *, after_ids: int, extra_delay: float = 0.0) -> list[int]:
    """Start a writer, SIGKILL it once it reported ``after_ids`` ids (+ a delay)."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(db_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    reader = Reader(proc.stdout)
    thread = threading.Thread(target=reader.run, daemon=True)
    thread.start()
    try:
        reader.wait_for(after_ids, proc)
        time.sleep(extra_delay)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        thread.join(timeout=30)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert alive, f"writer exited on its own: {stderr}"
    assert proc.returncode == -signal.SIGKILL, stderr
    return reader.reported


def check_store(db_path: Path, reported: list[int], context: str) -> None:
    with Store.open(db_path) as store:
        assert store.query("PRAGMA integrity_check") == [("ok",)], context
        workloads = {row[0] for row in store.query("SELECT id FROM workloads")}
        subjects = {row[0] for row in store.query("SELECT subject FROM events")}
    missing = {f"w{i}" for i in reported} - workloads
    assert not missing, f"{context}: reported but lost: {sorted(missing)[:10]}"
    assert workloads == subjects, f"{context}: a transaction was split"
    # At most the one transaction that committed before its number was printed.
    assert len(workloads) <= max(reported) + 1, context


def test_kill_after_300_commits_loses_nothing(tmp_path: Path) -> None:
    db_path = tmp_path / "meshd.db"
    reported = run_and_kill(db_path, after_ids=300)
    assert reported[:300] == list(range(1, 301))
    check_store(db_path, reported, "kill after 300")


def test_kill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    # A failure message names its seed; MESHD_TEST_SEED=<seed> replays the same delays.
    seed = int(os.environ.get("MESHD_TEST_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    db_path = tmp_path / "meshd.db"
    reported: list[int] = []
    for cycle in range(4):
        delay = rng.uniform(0.0, 0.4)
        context = f"seed={seed} cycle={cycle} delay={delay:.3f}s"
        # Restarting on the same file also checks writing resumes after recovery.
        reported += run_and_kill(db_path, after_ids=1, extra_delay=delay)
        check_store(db_path, reported, context)
    assert len(reported) > 4, f"seed={seed}: the writer barely ran"
