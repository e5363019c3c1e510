"""The main job's lab (``bash bootstrap/demo.sh`` as root, bootstrap/lab.py), end to end.

It comes up with every step it promises narrated (three blades, the BMCs, a network, two
guests with DHCP leases and metadata, a name resolved through ``meshd resolve`` and
``dig``, a cut blade fenced and its guest back on a survivor at the same address),
writes its timings as JSON lines, stays up (namespaces, daemons, QEMU guests) after
demo.sh returns, and ``demo.sh down`` removes every namespace, process and file it made.

The lab's directory and namespace prefix are this test's own (``/tmp/h14t<pid>``,
``h14t<pid>-``); ``down`` runs in ``finally``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.blades import ns_pids
from tests.e2e.needs import QEMU, skip_reason

REPO = Path(__file__).resolve().parents[2]

reason = skip_reason("the lab needs root (namespaces, bridges, QEMU)", QEMU)
pytestmark = [
    pytest.mark.skipif(reason is not None, reason=reason or ""),
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

STEPS = ["install", "guest_image", "namespaces", "bmcs", "mesh", "fencing", "network",
         "guest_a", "guest_b", "resolve", "fence", "replace", "total"]  # fmt: skip


def namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [ln.split()[0] for ln in out.stdout.splitlines() if ln.startswith(prefix)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_lab_comes_up_fences_a_blade_and_goes_down_without_a_trace() -> None:
    pid = os.getpid()
    lab_dir, prefix = Path(f"/tmp/h14t{pid}"), f"h14t{pid}-"
    env = dict(os.environ, MESHD_LAB_DIR=str(lab_dir), MESHD_LAB_PREFIX=prefix)
    demo = ["bash", str(REPO / "bootstrap/demo.sh")]
    try:
        up = subprocess.run(demo, env=env, capture_output=True, text=True, timeout=400, check=False)
        out = up.stdout
        assert up.returncode == 0, out[-3000:] + up.stderr[-2000:]
        for seen in ("MESHD-LEASE ip=", "MESHD-META instance-id=", "MESHD-PING", "web ",
                     "fenced", "off verified by", "answers", "bootstrap/demo.sh down"):  # fmt: skip
            assert seen in out, f"{seen!r} not in the lab's output:\n{out[-3000:]}"
        rows = [json.loads(ln) for ln in (lab_dir / "timings.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == STEPS
        assert all(r["s"] >= 0 for r in rows)
        # Still up after demo.sh returned: the holder, the namespaces, the guests.
        holder = int((lab_dir / "lab.pid").read_text())
        assert alive(holder)
        spaces = namespaces(prefix)
        assert sorted(spaces) == sorted(
            prefix + s for s in ("sw", "bmc", "probe", "b1", "b2", "b3")
        )
        pids = [p for ns in spaces for p in ns_pids(ns)]
        qemus = [p for p in pids if b"qemu" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(qemus) == 2, f"two guests running in the lab, found {qemus}"
    finally:
        down = subprocess.run(
            [*demo, "down"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    assert down.returncode == 0, down.stderr
    assert namespaces(prefix) == []
    assert not lab_dir.exists()
    assert not alive(holder)
    assert [p for p in pids if alive(p)] == []
