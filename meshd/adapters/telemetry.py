"""What this host offers: capacity measured with psutil, or declared in the config."""

from __future__ import annotations

import ipaddress
import os
import platform
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from meshd.config import Config
from meshd.core.auction.capabilities import Capabilities


@dataclass(frozen=True)
class Capacity:
    cpus: float
    memory: int
    disk: int
    declared: bool

    def as_json(self) -> dict[str, float | int | bool]:
        return {
            "cpus": self.cpus,
            "memory": self.memory,
            "disk": self.disk,
            "declared": self.declared,
        }


def capacity(cfg: Config) -> Capacity:
    """Declared values win; what isn't declared is measured from the host."""
    declared = cfg.cpus is not None and cfg.memory is not None and cfg.disk is not None
    cpus = cfg.cpus if cfg.cpus is not None else float(os.cpu_count() or 1)
    memory = cfg.memory if cfg.memory is not None else psutil.virtual_memory().total
    disk = cfg.disk if cfg.disk is not None else _disk_free(cfg.data_dir)
    return Capacity(cpus=cpus, memory=memory, disk=disk, declared=declared)


def _disk_free(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return psutil.disk_usage(str(path)).free


@dataclass(frozen=True)
class Sample:
    """What the bidder scores from: this host's load and what is free right now."""

    load_per_core: float
    mem_available: int
    disk_free: int


def sample(data_dir: Path) -> Sample:
    """A live reading: 1-minute load per core, available memory, free disk under data_dir."""
    cores = os.cpu_count() or 1
    return Sample(
        load_per_core=os.getloadavg()[0] / cores,
        mem_available=psutil.virtual_memory().available,
        disk_free=_disk_free(data_dir),
    )


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def capabilities(cfg: Config, driver_offers: Iterable[frozenset[str]]) -> Capabilities:
    """What this node offers in its bids: what its drivers can really run here (checked
    once at start-up), its CPU architecture, and the labels its operator set."""
    offers = {f"arch:{platform.machine()}"}
    for offer in driver_offers:
        offers |= offer
    labels = cfg.label_map()
    # The operator's word that this node attaches a mesh network (its bridge is wired
    # by hand): a label ``network:NAME=...`` offers ``network:NAME`` like a probe would.
    offers |= {key for key in labels if key.startswith("network:") and len(key) > 8}
    return Capabilities(frozenset(offers), labels)


def node_addresses(listen: str | None) -> list[str]:
    """The IP addresses a node's certificate names: the listen address when it is a
    specific IP, else (a wildcard, a name, or none) every address of this host's
    interfaces except loopback and link-local ones, at most ``MAX_SAN_ADDRESSES``."""
    from meshd.identity.pki import MAX_SAN_ADDRESSES  # noqa: PLC0415 - only init needs it
    from meshd.units import parse_hostport  # noqa: PLC0415

    if listen:
        host, _ = parse_hostport(listen, "listen")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None and not ip.is_unspecified:
            return [str(ip)]
    found: list[str] = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                ip = ipaddress.ip_address(a.address.split("%", 1)[0])
            except ValueError:
                continue
            if ip.is_loopback or ip.is_link_local or ip.is_multicast or str(ip) in found:
                continue
            found.append(str(ip))
    return found[:MAX_SAN_ADDRESSES]
