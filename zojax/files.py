"""Files written whole: a run's config, metrics, seed log and summary are replaced, never rewritten in place."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path, text: str) -> None:
    """Replace ``path`` by ``text`` whole: written to a temporary file beside it, synced, then renamed
    over it, so a kill or a full disk leaves either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
