"""What every shell of a node shares: its config, identity, store, clock and metrics.

The node (``meshd.shell.node``, the composition root) builds one :class:`NodeContext` and
hands it to each shell with the ports that shell needs, so no shell imports the node
or reaches through it to a sibling: siblings talk through :class:`~meshd.shell.bus.Bus`
events.

The clock and the random generators are ports like the others: the daemon passes the
wall clock and unseeded generators; the simulator passes virtual time and generators
seeded from the run's seed, so a run replays exactly (``tests/sim/shells.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from meshd.adapters.store.db import Store
from meshd.config import Config
from meshd.identity.files import NodeIdentity
from meshd.identity.revocation import RevocationList
from meshd.metrics import Registry
from meshd.shell.bus import Bus


@dataclass(frozen=True)
class NodeContext:
    cfg: Config
    ident: NodeIdentity
    store: Store
    clock: Callable[[], float]  # wall-clock seconds (shared across nodes' records)
    metrics: Registry
    revocations: RevocationList
    bus: Bus
    request_stop: Callable[[], None]  # ask the node to stop (a broken invariant)
    # A new generator for each use (round ids, sampling, peer choice); never for secrets.
    new_random: Callable[[], random.Random] = random.Random
