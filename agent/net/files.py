"""Small file helpers for the net package's state files."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, text: str, mode: int = 0o644) -> bool:
    """Replace `path` with `text` via rename; False (and no write) when it already holds exactly that."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)
    return True


def reachable_by_others(path: Path) -> bool:
    """True if an unprivileged user could open `path` (every directory above it is o+x)."""
    return all(directory.stat().st_mode & 0o001 for directory in [path.parent, *path.parent.parents])
