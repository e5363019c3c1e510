"""One "blade" of the guest-networking test: meshd's GuestNetworks in this namespace.

Run as ``ip netns exec NS python guest_blade.py CONFIG.json``: sets up the network and
attaches the workloads the config names (the real shell, the real dnsmasq, nftables
and metadata server; no QEMU: the test's guests are network namespaces whose veth
peers are named like taps), prints ``READY`` and then obeys lines on stdin:
``detach WID``, ``attach WID``, ``hosts`` (prints dnsmasq's hosts file), ``pid`` (its
dnsmasq's), ``remove`` (the network is removed: answers OK once the shell has wound it
down), ``quit``. With ``"eager": true`` it does not set the network up itself: READY
comes once the shell has, as it does with every network it offers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.config import GuestsConfig
from meshd.core import network
from meshd.core.network import Address
from meshd.core.spec import Nic, WorkloadSpec
from meshd.shell.guests import GuestNetworks


class FixedAddress:
    def __init__(self, ip: str) -> None:
        self.ip = ipaddress.ip_address(ip)

    async def node_address(self, network: str) -> Address:
        return self.ip


def spec_of(w: dict[str, object]) -> WorkloadSpec:
    return WorkloadSpec(
        name=str(w["name"]),
        cpus=1,
        memory=64 << 20,
        driver="qemu",
        kernel="/nonexistent",
        user_data=str(w.get("user_data")) if w.get("user_data") else None,
        nics=(Nic(network=str(w["network"]), ip=str(w["ip"])),),
    )


async def main(conf: dict[str, object]) -> None:
    net = network.define(
        str(conf["network"]),
        str(conf["subnet"]),
        gateway=conf.get("gateway"),  # type: ignore[arg-type]
        bridge=str(conf["bridge"]),
        dns=conf.get("dns", ()),  # type: ignore[arg-type]
        version=1,
        by="seed",
    )
    cfg = GuestsConfig(
        create_bridges=bool(conf.get("create", False)),
        uplink=str(conf.get("uplink", "")),
        metadata_port=int(conf.get("metadata_port", 80)),  # type: ignore[call-overload]
        check_interval_s=0.2,
    )
    key = Ed25519PrivateKey.generate()
    guests = GuestNetworks(
        cfg,
        Path(str(conf["workdir"])),
        str(conf["node"]),
        "test.mesh",
        key.sign,
        FixedAddress(str(conf["node_ip"])),
    )
    offered: list[frozenset[str]] = []
    guests.on_offers = offered.append
    nets = {net.name: net}
    guests.use_networks(nets.get, lambda: list(nets.values()))
    await guests.start()
    if conf.get("eager"):
        if not await until(lambda: net.name in guests._segments, 10.0):
            raise SystemExit("the shell did not set the offered network up in 10 s")
    else:
        await guests.prepare(net.name)
    specs = {str(w["id"]): spec_of(w) for w in conf["workloads"]}  # type: ignore[attr-defined]
    for wid in conf.get("attach", ()):  # type: ignore[attr-defined]
        await guests.attach(wid, specs[wid])
    print("READY", json.dumps(sorted(offered[-1]) if offered else []), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        if line[0] == "detach":
            await guests.detach(line[1])
        elif line[0] == "attach":
            await guests.attach(line[1], specs[line[1]])
        elif line[0] == "remove":
            nets[net.name] = dataclasses.replace(net, removed=True, version=net.version + 1)
            gone = await until(lambda: net.name not in guests._segments, 10.0)
            print("OK" if gone else "STILL", flush=True)
            continue
        elif line[0] == "pid":
            seg = guests._segments.get(net.name)
            print(seg.dnsmasq.pid if seg and seg.dnsmasq else 0, flush=True)
            continue
        elif line[0] == "hosts":
            print(
                json.dumps(Path(str(conf["workdir"]), "dhcp", f"{net.bridge}.hosts").read_text()),
                flush=True,
            )
            continue
        print("OK", flush=True)
    for wid in list(specs):
        await guests.detach(wid)
    await guests.stop()


async def until(ok: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not ok():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
