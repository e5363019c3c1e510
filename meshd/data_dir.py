"""Where a node keeps its files when no ``--data-dir`` says otherwise.

Its own module, outside ``meshd.config``, so a CLI command that only talks to a
running daemon finds the socket without building the config's dataclasses.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_DIR = Path("/var/lib/meshd")
DATA_DIR_ENV = "MESHD_DATA_DIR"


def default_data_dir() -> Path:
    """``$MESHD_DATA_DIR`` if set, else ``/var/lib/meshd``."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else DEFAULT_DATA_DIR
