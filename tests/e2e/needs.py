"""Why an e2e module can't run here (root, host tools), for its ``skipif``."""

from __future__ import annotations

import os
import shutil

QEMU = ("qemu-system-x86_64", "qemu-system-x86_64 is not installed (bootstrap/setup.sh --test)")


def skip_reason(root_for: str, *needs: tuple[str, str]) -> str | None:
    """``root_for`` when not root, else the sentence of the first ``(command, sentence)``
    whose command is not on PATH; None when everything is here."""
    if os.geteuid() != 0:
        return root_for
    for command, sentence in needs:
        if not shutil.which(command):
            return sentence
    return None
