"""Helpers of tests/cli."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SECRET = "amgmt-test-SECRET-7f3a9c51"  # moto accepts any secret; this one is easy to grep for


def snapshot(root: Path) -> dict[str, Any]:
    """Every path under root with its size (None for a directory), to prove a command changed nothing on disk."""
    return {
        str(p.relative_to(root)): None if p.is_dir() and not p.is_symlink() else p.lstat().st_size
        for p in sorted(root.rglob("*"))
    }
