"""Where amgmt reads and writes on disk: the four locations resolved to absolute paths, and the rules on how they may
overlap. Pure path logic (it only examines what exists); must not create, move or remove anything."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from amgmt.config.settings import env_key
from amgmt.config.values import Invalid, show_value


def to_path(value: object, *, environ: Mapping[str, str], cwd: Path) -> Path:
    """An absolute, resolved path from a flag or text: `~` expanded (with environ's HOME), relative to cwd."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise Invalid("expected a path")
    text = value.strip()
    if "\x00" in text:
        raise Invalid("expected a path")
    if text == "~" or text.startswith("~/"):
        text = (environ.get("HOME") or os.path.expanduser("~")) + text[1:]
    elif text.startswith("~"):
        expanded = os.path.expanduser(text)
        if expanded == text:
            raise Invalid(f"cannot expand {show_value(text.split('/', 1)[0])}")
        text = expanded
    path = Path(text)
    if not path.is_absolute():
        path = cwd / path
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:
        raise Invalid(f"cannot resolve the path: {exc}") from None


@dataclass(frozen=True)
class Layout:
    """Where amgmt reads and writes on disk: resolved, absolute paths. The metadata dir is the database's parent."""

    local_dir: Path
    completed_dir: Path
    db_path: Path
    staging_dir: Path

    @property
    def metadata_dir(self) -> Path:
        return self.db_path.parent

    @property
    def reserved(self) -> frozenset[Path]:
        """Dirs that `upload all` and `upload NAME` never take as entries (batch._reserved)."""
        return frozenset({self.completed_dir, self.metadata_dir, self.staging_dir})

    def in_entry(self, path: Path) -> bool:
        """True when `path` lies inside the local dir under an entry that amgmt would upload and move: its first
        component below the local dir is not one of the reserved dirs."""
        if self.local_dir not in path.parents:
            return False
        top = self.local_dir / path.relative_to(self.local_dir).parts[0]
        return top not in self.reserved


def within(path: Path, outer: Path) -> bool:
    """`path` is `outer` or lies inside it."""
    return path == outer or outer in path.parents


_LOCAL = env_key("local_dir")
_COMPLETED = env_key("completed_dir")

# How the four locations may overlap. Each rule: (the setting blamed, why it is refused, the test). The first that
# holds wins. What stays allowed, and why it is safe:
# - the completed dir and the staging dir directly in the local dir, or inside one of amgmt's dirs there (the
#   defaults: LOCAL/completed, COMPLETED/.metadata/staging): entries are listed one level deep and amgmt's dirs
#   are never entries; the database inside the local dir only in the completed dir (default COMPLETED/.metadata),
#   where no other settings make it an entry;
# - any of them outside the local dir, side by side or nested in each other in the ways not listed here (the
#   database in the staging dir, say): staging cleanup removes only amgmt's own archives, by name and record;
# - a database in a dir that holds the local dir (`--db ~/amgmt.db` for ~/media): amgmt never lists, moves or
#   removes anything in the metadata dir, and the run lock is on the local dir itself.
LAYOUT_RULES: tuple[tuple[str, str, Callable[[Layout], bool]], ...] = (
    # the completed dir: originals are moved into it, so it must be apart from the entries
    (
        "completed_dir",
        f"must not be the local dir or hold it ({_LOCAL}): originals would be moved onto entries",
        lambda at: within(at.local_dir, at.completed_dir),
    ),
    (
        "completed_dir",
        f"must not be inside an entry of the local dir ({_LOCAL}): that entry would be uploaded "
        "and moved with everything moved into it",
        lambda at: at.in_entry(at.completed_dir),
    ),
    # the database: in an entry (or as one) it would be uploaded and moved away, and its records lost
    (
        "db_path",
        f"must not be directly in the local dir ({_LOCAL}): it would be uploaded and moved as an entry",
        lambda at: at.metadata_dir == at.local_dir,
    ),
    (
        "db_path",
        f"must not be in the local dir ({_LOCAL}) except inside the completed dir ({_COMPLETED}): "
        "elsewhere its dir takes the place of an entry or is uploaded and moved with one",
        lambda at: at.local_dir in at.metadata_dir.parents and not within(at.metadata_dir, at.completed_dir),
    ),
    # the staging dir: its archives must never sit among entries or originals
    (
        "staging_dir",
        f"must not be the local dir or hold it ({_LOCAL}): archives would sit among the entries",
        lambda at: within(at.local_dir, at.staging_dir),
    ),
    (
        "staging_dir",
        f"must not be inside an entry of the local dir ({_LOCAL}): archives would be uploaded and moved with it",
        lambda at: at.in_entry(at.staging_dir),
    ),
    (
        "staging_dir",
        f"must not be the completed dir or hold it ({_COMPLETED}): archives would sit among the moved originals",
        lambda at: within(at.completed_dir, at.staging_dir),
    ),
)


def layout_problem(layout: Layout) -> tuple[str, str] | None:
    """The first rule of LAYOUT_RULES that `layout` breaks, as (setting name, reason); None when it is safe."""
    for name, reason, breaks in LAYOUT_RULES:
        if breaks(layout):
            return name, reason
    return None


def path_kind(path: Path) -> str | None:
    """'dir', 'other' or None (missing); a path that cannot be examined is an Invalid."""
    try:
        if not path.exists():
            return None
        return "dir" if path.is_dir() else "other"
    except OSError as exc:
        raise Invalid(f"cannot examine the path: {exc.strerror or exc}") from None
