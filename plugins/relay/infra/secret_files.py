"""The local stack's secret files (Airflow's passwords and JWT secret, Ray's token)."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text``, readable by its owner only from its first byte (mode
    600 at creation, not chmod after: no moment where another user may read it). False when
    it existed already (it is left as it is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True
