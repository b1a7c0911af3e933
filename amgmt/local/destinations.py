"""Where an original goes in the completed dir (CompletedDir): the plain destination and the duplicate names.

Pure apart from existence checks; never creates, moves or deletes anything (completed.py does).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from amgmt.config import DUPLICATE_MODES
from amgmt.errors import MoveError
from amgmt.text import printable

if TYPE_CHECKING:
    from amgmt.config import Settings

STAMP_FORMAT = "%Y%m%d-%H%M%S"
MAX_NAME_ATTEMPTS = 1000
NAME_MAX = 255  # bytes in one path component, on every filesystem amgmt expects


@dataclass(frozen=True)
class CompletedDir:
    """The completed dir and the rules that place an entry of the local dir in it.

    `preserve_structure`: an entry keeps its path below local_dir (else only its name); `duplicate_handling`: what
    a taken name gives, "timestamp" (STAMP_ name), "subdirectory" (STAMP/ name) or "error"."""

    local_dir: Path
    path: Path
    preserve_structure: bool
    duplicate_handling: str

    @classmethod
    def from_settings(cls, settings: Settings) -> CompletedDir:
        return cls(
            local_dir=settings.local_dir,
            path=settings.completed_dir,
            preserve_structure=settings.preserve_structure,
            duplicate_handling=settings.duplicate_handling,
        )


def plain_destination(entry: Path, completed: CompletedDir) -> Path:
    """Where `entry` goes when the name is free; MoveError when it cannot be placed at all."""
    if completed.preserve_structure:
        try:
            relative = entry.relative_to(completed.local_dir)
        except ValueError:
            raise MoveError(
                f"cannot move {printable(entry)}: it is not inside the local dir {printable(completed.local_dir)}"
            ) from None
        if not relative.parts:
            raise MoveError(f"cannot move {printable(entry)}: it is the local dir itself")
        return completed.path / relative
    if not entry.name:
        raise MoveError(f"cannot move {printable(entry)}: it has no name")
    return completed.path / entry.name


def candidates(entry: Path, plain: Path, completed: CompletedDir, *, now: datetime) -> Iterator[Path]:
    """The plain destination, then the duplicate names in order (a bounded number of them)."""
    duplicate_handling = completed.duplicate_handling
    if duplicate_handling not in DUPLICATE_MODES:
        raise ValueError(f"unknown duplicate handling {duplicate_handling!r}")
    yield plain
    if duplicate_handling == "error":
        raise MoveError(f"cannot move {printable(entry)}: {printable(plain)} already exists in the completed dir")
    stamp = now.strftime(STAMP_FORMAT)
    relative = plain.relative_to(completed.path)
    for attempt in range(MAX_NAME_ATTEMPTS):
        tag = stamp if attempt == 0 else f"{stamp}-{attempt}"
        if duplicate_handling == "timestamp":
            yield plain.with_name(fit_name(f"{tag}_", plain.name))
        else:
            yield completed.path / tag / relative


def existing_candidates(entry: Path, plain: Path, completed: CompletedDir, *, now: datetime) -> list[Path]:
    """The destination names an operation started at `now` may have used: the first free one was taken, so every
    name up to it exists."""
    names: list[Path] = []
    try:
        for candidate in candidates(entry, plain, completed, now=now):
            if not os.path.lexists(candidate):
                break
            names.append(candidate)
    except (MoveError, ValueError):
        pass
    return names


def taken(path: Path) -> bool:
    # lexists: a dangling symlink still occupies the name. A path that cannot be examined is left to the move to
    # report (it fails there with the real reason) rather than skipped as taken.
    return os.path.lexists(path)


def no_free_name(entry: Path) -> MoveError:
    return MoveError(
        f"cannot move {printable(entry)}: no free name in the completed dir after {MAX_NAME_ATTEMPTS} tries"
    )


def fit_name(prefix: str, name: str, *, reserve: int = 0) -> str:
    """`prefix + name`, the name shortened (keeping its extension) to fit NAME_MAX bytes less `reserve`."""
    room = NAME_MAX - reserve - len(os.fsencode(prefix))
    raw = os.fsencode(name)
    if len(raw) <= room:
        return prefix + name
    stem, dot, ext = raw.rpartition(b".")
    tail = (dot + ext) if dot and len(ext) <= 16 else b""
    head = _whole_utf8((stem if tail else raw)[: room - len(tail)])
    return prefix + os.fsdecode(head + tail)


def hidden_name(prefix: str, name: str) -> str:
    # Bounded so that the temporary name stays under NAME_MAX (255) even for a long original name.
    suffix = f"-{secrets.token_hex(4)}"
    return fit_name(prefix, name[:100], reserve=len(suffix)) + suffix


def changed_name(name: str, tag: str, attempt: int) -> str:
    """NAME.amgmt-changed-TAG[-N]: the visible name an entry put back beside its taken name gets."""
    suffix = f".amgmt-changed-{tag}" + (f"-{attempt}" if attempt else "")
    return os.fsdecode(_whole_utf8(os.fsencode(name)[: NAME_MAX - len(suffix)])) + suffix


def _whole_utf8(raw: bytes) -> bytes:
    """`raw` cut short at the end, without half a UTF-8 sequence."""
    while raw and (raw[-1] & 0xC0) == 0x80:
        raw = raw[:-1]
    if raw and raw[-1] >= 0xC0:
        raw = raw[:-1]
    return raw
