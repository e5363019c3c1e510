"""A workload's NICs on the host: stable MAC addresses and tap names (DESIGN §8a).

Both are derived from the workload id and the NIC's index alone, never stored: the
node that re-places a fenced node's workload computes the same MAC (so the guest keeps
its DHCP lease and its neighbours' ARP entries) and the node that restarts finds its
taps by name again.

* **MAC**: ``52:54:00`` would be QEMU's default prefix, shared by every hand-made VM on
  a segment; meshd uses ``0e`` followed by 40 bits of SHA-256 over (id, index). The
  first octet ``0x0e`` has the locally-administered bit set and the multicast bit clear,
  so it never collides with a vendor's address. Two NICs collide with probability about
  n²/2⁴¹ (for 10,000 NICs in one mesh: 5·10⁻⁵); the address allocator also refuses a
  MAC already held in the view (:func:`mac_for` is what it compares).
* **Tap**: ``mt`` + 10 hex digits of SHA-256 over the id + the index: 13 or 14 bytes,
  inside IFNAMSIZ (15). The ``mt`` prefix is what the host's guard rules match to tell
  this node's guests' ports from its uplinks.

Pure: no IO.
"""

from __future__ import annotations

import functools
import hashlib

MAX_NICS = 8  # NICs per workload: a virtio-net device each; beyond this, submit refuses
TAP_PREFIX = "mt"


@functools.lru_cache(maxsize=8192)  # every node indexes every placement's NICs
def mac_for(workload_id: str, index: int) -> str:
    """The stable, locally administered unicast MAC of NIC ``index`` of a workload."""
    h = hashlib.sha256(f"meshd-mac:{workload_id}:{index}".encode()).digest()
    return "0e:" + h[:5].hex(":")


def tap_name(workload_id: str, index: int) -> str:
    """The stable tap interface name of NIC ``index`` of a workload (≤ 15 bytes)."""
    if not 0 <= index < MAX_NICS:
        raise ValueError(f"NIC index {index} is out of range 0..{MAX_NICS - 1}")
    return f"{TAP_PREFIX}{hashlib.sha256(workload_id.encode()).hexdigest()[:10]}{index}"
