"""Finishing or undoing a move that a killed run left midway (stage 6: the object was already verified).

Proves what it finishes (identity or content digest) and puts back what it cannot prove; never moves anything else.
Synchronous: callers hold the run lock and run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from amgmt.errors import MoveError
from amgmt.local.completed import MOVING_PREFIX, REMOVING_PREFIX, put_back
from amgmt.local.copying import content_digest, remove_tree_quietly, tree_size
from amgmt.local.destinations import CompletedDir, existing_candidates, plain_destination
from amgmt.local.identity import Identity, identity_of, same_identity
from amgmt.text import printable


@dataclass
class MoveRecovery:
    """What recover_move found (and, unless a dry run, did) for one interrupted operation.

    outcome: "moved" (the move is complete: `final` holds what was uploaded), "changed" (the entry is local again,
    and is not what was packed), or "" (nothing proven: the entry is as an interrupted run leaves it, to redo).
    `leftovers`: the temporaries it dealt with, {"path", "action"}."""

    outcome: str = ""
    final: Path | None = None
    message: str = ""
    leftovers: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Operation:
    """The interrupted operation as its record tells it."""

    entry: Path
    started: datetime
    tag: str  # the operation id's first 8 characters: its temporaries carry it
    names: list[Path]  # the completed names it may have used
    expected_identity: Identity | None
    expected_digest: str | None
    original_size: int
    dry_run: bool

    def holds_upload(self, path: Path) -> bool:
        return _holds(path, self.expected_identity, self.expected_digest, self.original_size)

    def unchanged(self, path: Path) -> bool:
        """Whether `path` is still what was packed (a record from before identities: assumed so)."""
        try:
            return self.expected_identity is None or same_identity(
                self.expected_identity, identity_of(path), ignore_root_ctime=True
            )
        except OSError:
            return False


def recover_move(
    entry: Path,
    completed: CompletedDir,
    *,
    started: datetime,
    operation_id: str,
    expected_identity: Identity | None,
    expected_digest: str | None,
    original_size: int,
    dry_run: bool,
) -> MoveRecovery:
    """Finish or undo the move of `entry` by operation `operation_id`, whose run died in stage 6 (the object was
    verified). Synchronous; callers hold the run lock, so no move of this operation is in progress.

    Killed between link() and unlink(): the local name and a completed name are one inode: the local one goes.
    Killed across filesystems after the original was renamed to .amgmt-removing-TAG-*: it is removed once a
    completed copy is proven equal to the upload, put back when it changed or no copy was installed. Incomplete
    copies (.amgmt-moving-TAG-*) are removed. An entry gone from the local dir counts as moved when a completed
    name holds it (same identity, or the same content digest). With `dry_run` nothing is changed; what would be
    done is returned all the same."""
    tag = operation_id[:8]
    found = MoveRecovery()
    try:
        plain = plain_destination(entry, completed)
    except MoveError:
        return found
    operation = _Operation(
        entry,
        started,
        tag,
        existing_candidates(entry, plain, completed, now=started),
        expected_identity,
        expected_digest,
        original_size,
        dry_run,
    )
    removing = _tagged(entry.parent, REMOVING_PREFIX, tag)
    moving = _tagged(plain.parent, MOVING_PREFIX, tag)
    if removing is not None:
        _recover_taken_away(operation, removing, found, copy_installed=moving is None)
    elif os.path.lexists(entry):
        _recover_second_name(operation, found)
    else:
        _recover_gone(operation, found)
    if moving is not None:
        found.leftovers.append({"path": display_path(moving), "action": "removed (an unfinished copy)"})
        if not dry_run:
            remove_tree_quietly(moving)
    return found


def _recover_taken_away(operation: _Operation, removing: Path, found: MoveRecovery, *, copy_installed: bool) -> None:
    """Across filesystems, the original was renamed away: removed if our copy was installed (its temporary name is
    gone) and a completed name holds the upload, else put back."""
    entry = operation.entry
    final = next((name for name in operation.names if operation.holds_upload(name)), None)
    unchanged = operation.unchanged(removing)
    if final is not None and copy_installed:
        # A proven copy is installed only after the original, renamed away, was checked unchanged: the move was
        # complete, whatever is left of the original now (its removal may have been cut short midway, members
        # gone). Putting a remnant back would make it look like a changed entry and let it replace the object.
        found.outcome, found.final = "moved", final
        found.leftovers.append({"path": display_path(removing), "action": "removed (the move was complete)"})
        if not operation.dry_run:
            remove_tree_quietly(removing)
        return
    back = entry if operation.dry_run or not os.path.lexists(entry) else None
    if not operation.dry_run:
        try:
            back = put_back(removing, entry, tag=operation.tag)
        except OSError:
            back = None
    action = f"put back as {display_path(back)}" if back else "left: it could not be put back"
    found.leftovers.append({"path": display_path(removing), "action": action})
    if not unchanged:
        found.outcome = "changed"
        found.message = (
            f"{printable(entry)} changed after it was packed (seen when recovering the interrupted"
            f" move); {action}; the next run uploads it"
        )


def _recover_second_name(operation: _Operation, found: MoveRecovery) -> None:
    """The entry is still local: killed between link() and unlink() if a completed name is the same inode."""
    entry = operation.entry
    try:
        ours = os.lstat(entry)
    except OSError:
        return
    twin = next((n for n in operation.names if _same_inode(n, ours)), None)
    if twin is None and stat.S_ISDIR(ours.st_mode):
        _remove_placeholders(operation, found)
        return
    if twin is None or stat.S_ISDIR(ours.st_mode):
        return
    if operation.unchanged(entry):
        found.outcome, found.final = "moved", twin
        found.leftovers.append(
            {"path": display_path(entry), "action": f"removed: a second name of {display_path(twin)} (link kept)"}
        )
        if not operation.dry_run:
            os.unlink(entry)
        return
    found.outcome = "changed"
    found.message = (
        f"{printable(entry)} changed after it was packed (seen when recovering the interrupted"
        f" move); its second name {printable(twin)} in the completed dir was removed; the next"
        " run uploads it"
    )
    if not operation.dry_run:
        os.unlink(twin)


def _remove_placeholders(operation: _Operation, found: MoveRecovery) -> None:
    """A directory is placed in two steps where renameat2 is missing: an empty directory claims the name, then the
    entry is renamed onto it. Killed in between, the empty claim stays: removed (rmdir refuses anything not empty,
    so no byte can go with it) when it was made after the operation started."""
    for name in operation.names:
        try:
            st = os.lstat(name)
            empty = stat.S_ISDIR(st.st_mode) and not os.listdir(name)
        except OSError:
            continue
        if not empty or st.st_ctime < operation.started.timestamp() - 1:
            continue
        found.leftovers.append({"path": display_path(name), "action": "removed (the empty claim of the move)"})
        if not operation.dry_run:
            with contextlib.suppress(OSError):
                os.rmdir(name)


def _recover_gone(operation: _Operation, found: MoveRecovery) -> None:
    """The entry is gone from the local dir: moved if a completed name holds the upload."""
    final = next((name for name in operation.names if operation.holds_upload(name)), None)
    if final is not None:
        found.outcome, found.final = "moved", final
        return
    expected = operation.expected_identity
    if expected is None:
        return
    # Moved within the filesystem, then changed before it could be checked: it goes back to be uploaded.
    moved = next((n for n in operation.names if _is(n, expected)), None)
    if moved is None:
        return
    entry = back = operation.entry
    if not operation.dry_run:
        back = put_back(moved, entry, tag=operation.tag)
    found.outcome = "changed"
    found.message = (
        f"{printable(entry)} changed after it was packed (seen when recovering the interrupted"
        f" move); moved back from the completed dir as {printable(back)}; the next run uploads"
        " it"
    )


def display_path(path: Path | None) -> str:
    return printable(path) if path is not None else ""


def _tagged(directory: Path, prefix: str, tag: str) -> Path | None:
    start = f"{prefix}{tag}-"
    try:
        with os.scandir(directory) as it:
            return next((Path(e.path) for e in it if e.name.startswith(start)), None)
    except OSError:
        return None


def _same_inode(path: Path, st: os.stat_result) -> bool:
    try:
        theirs = os.lstat(path)
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (st.st_dev, st.st_ino)


def _is(path: Path, expected: Identity) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (expected.dev, expected.ino)


def _holds(path: Path, expected: Identity | None, digest: str | None, size: int) -> bool:
    """Whether `path` holds what was uploaded: the same identity (moved within the filesystem) or, for a copy,
    the same content digest; for a record from before identities, the same total size."""
    try:
        if expected is not None and same_identity(expected, identity_of(path), ignore_root_ctime=True):
            return True
        if digest is not None:
            return content_digest(path) == digest
        return tree_size(path)[0] == size
    except OSError:
        return False
