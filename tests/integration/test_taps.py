"""meshd.adapters.taps makes a guest's tap with ioctls (root, in a namespace of its own):
the same device ``ip tuntap add mode tap`` makes, on its bridge and up; nothing is left
or taken over when a step fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or not os.path.exists("/dev/net/tun"),
    reason="needs root, iproute2 and /dev/net/tun",
)

SCRIPT = """
import json, sys
from meshd.adapters import taps
from meshd.errors import DriverError
out = {}
for key, tap, bridge in [("made", "tapm0", "br0"), ("again", "tapm0", "br0"),
                         ("no_bridge", "tapm1", "nobr"), ("long", "t" * 16, "br0"),
                         ("not_a_bridge", "tapm2", "tapm0")]:
    try:
        taps.make(tap, bridge)
        out[key] = "ok"
    except DriverError as exc:
        out[key] = str(exc)
print(json.dumps(out))
"""


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"meshd-taps-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "add", "br0", "type", "bridge"],
            check=True,
            capture_output=True,
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def test_a_tap_is_made_on_its_bridge_and_failures_leave_nothing(ns: str) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["made"] == "ok"
    assert out["again"] == "cannot add tap tapm0: an interface of that name exists"
    assert out["no_bridge"] == (
        "cannot attach tapm1 to nobr: nobr is not a bridge in this network namespace"
    )
    assert "must be 1 to 15 bytes" in out["long"]
    assert out["not_a_bridge"] == (
        "cannot attach tapm2 to tapm0: tapm0 is not a bridge in this network namespace"
    )
    details = subprocess.run(
        ["ip", "-n", ns, "-d", "-j", "link", "show"], capture_output=True, text=True, check=True
    )
    links = {link["ifname"]: link for link in json.loads(details.stdout)}
    assert sorted(links) == ["br0", "lo", "tapm0"]  # the failed ones left nothing
    tap = links["tapm0"]
    assert tap["master"] == "br0"
    assert "UP" in tap["flags"]
    info = tap["linkinfo"]["info_data"]
    assert (info["type"], info["pi"], info["persist"]) == ("tap", False, True)
