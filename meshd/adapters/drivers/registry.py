"""Which drivers this node has, and finding one by name.

Theory of operation
-------------------
``process`` works on every Linux host, so it is always there. ``qemu`` and
``firecracker`` live in their own modules, imported lazily: a node whose install lacks
one (or whose module is not written yet) still runs, and says which drivers it has
when a workload asks for a missing one. A driver whose constructor refuses the host
with a :class:`DriverError` (no binary, say) is left out the same way, with a log line
saying why. ``fake`` is never offered here: the simulator and tests build it directly.
Each driver gets its own section of the node's config (``[drivers.qemu]`` and so on),
turned into the keyword arguments its constructor takes.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from pathlib import Path
from typing import Any

from meshd.adapters.drivers.base import Driver, OnChange
from meshd.adapters.drivers.process import ProcessDriver
from meshd.config import DriversConfig
from meshd.errors import DriverError

logger = logging.getLogger(__name__)

# name -> (module, class); imported only when make_drivers runs.
OPTIONAL = {
    "qemu": ("meshd.adapters.drivers.qemu", "QemuDriver"),
    "firecracker": ("meshd.adapters.drivers.firecracker", "FirecrackerDriver"),
}


def driver_options(name: str, cfg: DriversConfig) -> dict[str, Any]:
    """The keyword arguments of driver ``name``'s constructor, from its config section."""
    if name == "process":
        return dataclasses.asdict(cfg.process)
    if name == "qemu":
        from meshd.adapters.drivers.qemu_args import QemuTuning  # noqa: PLC0415 - see OPTIONAL

        q = dataclasses.asdict(cfg.qemu)
        binary, bridge = q.pop("binary"), q.pop("bridge")
        return {"tuning": QemuTuning(**q), "binary": binary, "bridge": bridge}
    if name == "firecracker":
        from meshd.adapters.drivers.firecracker_host import FirecrackerOptions  # noqa: PLC0415

        return {"options": FirecrackerOptions(**dataclasses.asdict(cfg.firecracker))}
    return {}  # a driver without a section of its own takes no knobs


def make_drivers(
    root: Path, on_change: OnChange, cfg: DriversConfig | None = None
) -> dict[str, Driver]:
    """Every driver this node can offer, by name, sharing ``root`` and ``on_change``."""
    cfg = cfg or DriversConfig()
    drivers: dict[str, Driver] = {
        "process": ProcessDriver(root, on_change, **driver_options("process", cfg))
    }
    for name, (module_name, class_name) in OPTIONAL.items():
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except ImportError as exc:
            missing_self = isinstance(exc, ModuleNotFoundError) and exc.name == module_name
            log = logger.debug if missing_self else logger.warning
            log("driver unavailable name=%s reason=%s", name, exc)
            continue
        except AttributeError:
            logger.warning(
                "driver unavailable name=%s reason=%s lacks %s", name, module_name, class_name
            )
            continue
        try:
            driver = cls(root, on_change, **driver_options(name, cfg))
        except DriverError as exc:
            logger.info("driver unavailable name=%s reason=%s", name, exc)
            continue
        if not isinstance(driver, Driver):
            raise TypeError(f"{module_name}.{class_name} is not a Driver")
        drivers[name] = driver
    return drivers


def driver_for(drivers: dict[str, Driver], name: str) -> Driver:
    """The driver called ``name``, or a DriverError naming the ones this node has."""
    try:
        return drivers[name]
    except KeyError:
        have = ", ".join(drivers) or "none"
        raise DriverError(f"unknown driver {name!r}; this node has: {have}") from None
