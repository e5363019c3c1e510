"""What this host offers: capacity measured with psutil, or declared in the config."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from meshd.config import Config


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


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss
