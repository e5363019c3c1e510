"""What every shell of a node shares: its config, identity, store, clock and metrics.

The node (``meshd.shell.node``, the composition root) builds one :class:`NodeContext` and
hands it to each shell with the ports that shell needs, so no shell imports the node
or reaches through it to a sibling: siblings talk through :class:`~meshd.shell.bus.Bus`
events.
"""

from __future__ import annotations

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
