"""Moving an original into the completed dir once its upload is verified, proving before and after the move that
what lands there is what was packed; within one filesystem by renaming, across filesystems by a hashed copy.

Never overwrites or merges into anything, and leaves the original intact whenever it raises MoveError. Synchronous
on purpose: callers run these functions in a worker thread. Names come from destinations.py, copies from copying.py.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from amgmt.errors import MoveError, SourceChangedError
from amgmt.local.copying import check_removable, copy_entry, remove_tree, remove_tree_quietly
from amgmt.local.destinations import (
    MAX_NAME_ATTEMPTS,
    CompletedDir,
    candidates,
    changed_name,
    hidden_name,
    no_free_name,
    plain_destination,
    taken,
)
from amgmt.local.identity import Identity, describe_change, identity_of, members_of, same_identity
from amgmt.local.placing import place
from amgmt.local.writers import Writer, WritersOf, holders, writers_of
from amgmt.text import printable

# Temporaries are named PREFIX + the operation id's first 8 characters + "-" + (a bounded) name + "-" + random.
MOVING_PREFIX = ".amgmt-moving-"  # a copy in progress, inside the destination dir
REMOVING_PREFIX = ".amgmt-removing-"  # an original taken away (renamed beside itself) to be deleted once copied


def completed_destination(entry: Path, completed: CompletedDir, *, now: datetime) -> Path:
    """Where `entry` would be moved to now: the plain destination, or the first free duplicate name.

    Pure apart from existence checks. Raises MoveError when the plain destination is taken and duplicate handling
    is "error", or when the entry cannot be placed (outside local_dir with preserve_structure).
    """
    plain = plain_destination(entry, completed)
    for candidate in candidates(entry, plain, completed, now=now):
        if not taken(candidate):
            return candidate
    raise no_free_name(entry)


def move_to_completed(
    entry: Path,
    completed: CompletedDir,
    *,
    now: datetime,
    expected_identity: Identity | None = None,
    expected_digest: str | None = None,
    operation_id: str | None = None,
    find_writers: WritersOf = writers_of,
) -> Path:
    """Move `entry` (file or directory) into the completed dir and return its final path, proving on the way that
    what lands there is what was packed.

    `expected_identity` is the entry's identity when it was packed (amgmt.local.identity) and `expected_digest` its
    source SHA-256 (a directory: of its manifest, as archive.compress_entry defines it); without them the entry's
    identity now is taken as the reference and a copy is not compared with anything. `operation_id` names the
    temporaries (its first 8 characters), so that recovery knows whose they are. `find_writers` looks for processes
    still holding the moved entry (writers.SharedScan lets concurrent moves share one scan).

    Before moving, the entry must still have the expected identity; within one filesystem it is renamed (link +
    unlink for a file, a claimed empty directory for a directory) and its identity checked again, the root's ctime
    left out; a difference puts it back. Across filesystems it is copied beside the destination while every file
    is hashed, the copy's digest must equal `expected_digest` and the source's identity as copied the expected
    one; the original is then renamed away beside itself (`.amgmt-removing-...`), checked once more, the copy
    installed, and only then the original removed. Parent directories are created. A name taken meanwhile (by
    anyone) moves on to the next duplicate name; nothing existing is ever replaced.

    Raises SourceChangedError when the entry changed or vanished (it stays, or is put back, in the local dir, under
    its own name or, if that was taken meanwhile, NAME.amgmt-changed-OP8), MoveError for any other failure with
    the original intact.
    """
    tag = (operation_id or secrets.token_hex(4))[:8]
    try:
        is_dir = stat.S_ISDIR(os.lstat(entry).st_mode)
    except FileNotFoundError as exc:
        if expected_identity is not None:
            raise _vanished(entry) from exc
        raise MoveError(f"cannot move {printable(entry)}: {_reason(exc)}") from exc
    except OSError as exc:
        raise MoveError(f"cannot move {printable(entry)}: {_reason(exc)}") from exc
    plain = plain_destination(entry, completed)
    if is_dir and _inside(completed.path, entry):
        raise MoveError(f"cannot move {printable(entry)}: the completed dir {printable(completed.path)} is inside it")
    expected = _unchanged(entry, expected_identity)

    names = candidates(entry, plain, completed, now=now)
    try:
        placed = _place_at_free_name(entry, entry, names, duplicate_handling=completed.duplicate_handling)
    except _OtherFilesystem as other:
        return _move_across(
            entry,
            itertools.chain([other.candidate], names),
            plain=plain,
            is_dir=is_dir,
            expected=expected,
            expected_digest=expected_digest,
            tag=tag,
            duplicate_handling=completed.duplicate_handling,
            find_writers=find_writers,
        )
    _check_moved(entry, placed, expected=expected, tag=tag, find_writers=find_writers)
    return placed


class _OtherFilesystem(Exception):
    """The first free name is on another filesystem than the source (EXDEV): the move becomes a copy."""

    def __init__(self, candidate: Path) -> None:
        super().__init__(str(candidate))
        self.candidate = candidate


def _place_at_free_name(entry: Path, source: Path, names: Iterator[Path], *, duplicate_handling: str) -> Path:
    """Places `source` (the entry, or its proven copy) at the first of `names` that is free, and returns it. A name
    taken meanwhile (by anyone) moves on to the next one, unless duplicates are an error; nothing is replaced."""
    for candidate in names:
        if taken(candidate):
            continue
        _make_parent(entry, candidate)
        try:
            place(source, candidate)
        except FileExistsError as exc:
            if duplicate_handling == "error":
                raise _exists(entry, candidate) from exc
            continue  # taken between the check and the move: try the next name
        except OSError as exc:
            if exc.errno == errno.EXDEV and source == entry:
                raise _OtherFilesystem(candidate) from exc
            raise MoveError(f"cannot move {printable(entry)} to {printable(candidate)}: {_reason(exc)}") from exc
        return candidate
    raise no_free_name(entry)


def find_completed(entry: Path, completed: CompletedDir) -> Path | None:
    """The plain destination of `entry` if it is the very same file (same device and inode): a same-filesystem move
    that was interrupted between its link() and its unlink(). Recovery finishes such moves from their records;
    one found here has no record that proves it, and must not be moved or deleted.

    Same name and size in the completed dir proves nothing (another take, a re-render): that entry is processed
    normally. Anything that cannot be examined counts as "not there". Raises ValueError for an entry outside
    local_dir with preserve_structure.
    """
    try:
        plain = plain_destination(entry, completed)
    except MoveError as exc:
        raise ValueError(str(exc)) from None
    try:
        ours, theirs = os.lstat(entry), os.lstat(plain)
    except OSError:
        return None
    return plain if (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino) else None


# --- moving --------------------------------------------------------------------------------------------------------


def _make_parent(entry: Path, destination: Path) -> None:
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MoveError(
            f"cannot move {printable(entry)}: cannot create {printable(destination.parent)}: {_reason(exc)}"
        ) from exc


# --- proving that what moves is what was packed -------------------------------------------------------------------


def _unchanged(entry: Path, expected: Identity | None) -> Identity:
    """The entry's identity now, which must be `expected` (if given): SourceChangedError if not, MoveError if it
    cannot be examined."""
    try:
        now = identity_of(entry)
    except FileNotFoundError as exc:
        if expected is None:
            raise MoveError(f"cannot move {printable(entry)}: {_reason(exc)}") from exc
        raise _vanished(entry) from exc
    except OSError as exc:
        raise MoveError(f"cannot move {printable(entry)}: cannot examine it: {_reason(exc)}") from exc
    if expected is not None and not same_identity(expected, now):
        raise SourceChangedError(
            f"{printable(entry)} changed after it was packed ({describe_change(expected, now)}); not moved;"
            " the next run uploads it",
            path=str(entry),
        )
    return now


def _vanished(entry: Path) -> SourceChangedError:
    return SourceChangedError(
        f"{printable(entry)} was deleted from the local dir after it was packed; the object holds it as packed;"
        " nothing moved",
        path=str(entry),
    )


def _check_moved(entry: Path, moved: Path, *, expected: Identity, tag: str, find_writers: WritersOf) -> None:
    """After a same-filesystem move: `moved` must still be `expected` (its root's ctime aside, which the move
    changed), and no process may hold one of its files open for writing (its next write would land in the
    completed dir, unseen by this check); otherwise it goes back to the local dir and SourceChangedError says
    where and why."""
    try:
        members = members_of(moved)
        now: Identity | None = Identity.of_members(members)
    except OSError:
        members, now = [], None
    writers: list[Writer] = []
    if now is not None and same_identity(expected, now, ignore_root_ctime=True):
        # Asked after the move: a writer can no longer open the files by their old names.
        root = os.fsencode(moved)
        writers = holders(
            [(os.path.join(root, m.relpath) if m.relpath else root, m.dev, m.ino) for m in members if m.kind == "file"],
            [(m.dev, m.ino) for m in members if m.kind == "dir"],
            find_writers,
        )
        if not writers:
            return
    try:
        back = put_back(moved, entry, tag=tag)
    except OSError as exc:
        raise MoveError(
            f"{printable(entry)} changed while it was moved, and it could not be put back from {printable(moved)}:"
            f" {_reason(exc)}"
        ) from exc
    where = "" if back == entry else f" as {printable(back)} (its name was taken meanwhile)"
    if writers:
        who = ", ".join(f"pid {w.pid} ({printable(w.command)})" if w.pid else "a process" for w in writers[:3])
        raise SourceChangedError(
            f"{printable(entry)} is still held by {who} (a file open for writing, or a working directory in it);"
            f" moved back{where}; the next run takes it once it is released",
            path=str(entry),
        )
    raise SourceChangedError(
        f"{printable(entry)} changed while it was moved ({describe_change(expected, now)}); moved back{where};"
        " the next run uploads it",
        path=str(entry),
    )


def put_back(moved: Path, original: Path, *, tag: str) -> Path:
    """Give `moved` its original name again, or, when that name was taken meanwhile, a visible free name beside it
    (NAME.amgmt-changed-TAG[-N]), never replacing anything. Returns the name used; OSError if none could be."""
    names = [original] + [original.parent / changed_name(original.name, tag, n) for n in range(MAX_NAME_ATTEMPTS)]
    for name in names:
        try:
            place(moved, name)
        except FileExistsError:
            continue
        return name
    raise FileExistsError(errno.EEXIST, "no free name to put it back under", str(original))


# --- across filesystems ---------------------------------------------------------------------------------------------


def _move_across(
    entry: Path,
    names: Iterator[Path],
    *,
    plain: Path,
    is_dir: bool,
    expected: Identity,
    expected_digest: str | None,
    tag: str,
    duplicate_handling: str,
    find_writers: WritersOf,
) -> Path:
    """Copy, prove, take the original away, install the copy, remove the original (see move_to_completed)."""
    try:
        check_removable(entry, is_dir=is_dir)
    except OSError as exc:
        raise MoveError(f"cannot move {printable(entry)}: {_reason(exc)}") from exc
    _make_parent(entry, plain)
    temporary = plain.parent / hidden_name(f"{MOVING_PREFIX}{tag}-", plain.name)
    removing: Path | None = None
    try:
        _copy_proven(entry, temporary, expected=expected, expected_digest=expected_digest)
        # One atomic rename takes the original away whole: nothing can be added under its name any more, and a
        # crash from here on leaves a name recovery knows (the operation's tag).
        removing = entry.parent / hidden_name(f"{REMOVING_PREFIX}{tag}-", entry.name)
        try:
            os.rename(entry, removing)
        except OSError as exc:
            removing = None
            raise MoveError(f"cannot move {printable(entry)}: cannot rename it away: {_reason(exc)}") from exc
        _check_moved(entry, removing, expected=expected, tag=tag, find_writers=find_writers)
        final = _place_at_free_name(entry, temporary, names, duplicate_handling=duplicate_handling)
    except BaseException:
        if removing is not None and os.path.lexists(removing):
            with contextlib.suppress(OSError):
                put_back(removing, entry, tag=tag)
        remove_tree_quietly(temporary)
        raise
    return _finish_across(entry, removing, final, is_dir=is_dir, expected=expected, tag=tag)


def _copy_proven(entry: Path, temporary: Path, *, expected: Identity, expected_digest: str | None) -> None:
    """Copy `entry` to `temporary`: SourceChangedError unless what was copied is what was packed."""
    try:
        copied, digest = copy_entry(entry, temporary)
    except OSError as exc:
        raise MoveError(f"cannot move {printable(entry)} to {printable(temporary.parent)}: {_reason(exc)}") from exc
    if not same_identity(expected, copied):
        raise SourceChangedError(
            f"{printable(entry)} changed after it was packed ({describe_change(expected, copied)}); seen while"
            " copying it to the completed dir's filesystem; nothing moved or removed; the next run uploads it",
            path=str(entry),
        )
    if expected_digest is not None and digest != expected_digest:
        raise SourceChangedError(
            f"{printable(entry)} changed after it was packed (its content differs from the uploaded one, seen"
            " while copying it); nothing moved or removed; the next run uploads it",
            path=str(entry),
        )


def _finish_across(entry: Path, removing: Path, final: Path, *, is_dir: bool, expected: Identity, tag: str) -> Path:
    """Remove the original once the proven copy is installed; if it cannot be, and is still whole, undo the move."""
    try:
        _remove_original(removing, is_dir=is_dir)
    except OSError as exc:
        try:
            untouched = same_identity(expected, identity_of(removing), ignore_root_ctime=True)
        except OSError:
            untouched = False
        if not untouched:
            # Part of it is gone, and the proven copy is in place: the move stands; recovery removes the rest.
            return final
        try:
            put_back(removing, entry, tag=tag)
        except OSError:
            return final  # the copy is proven and installed; the original stays as a leftover for recovery
        remove_tree_quietly(final)
        raise MoveError(f"cannot move {printable(entry)}: the original could not be removed: {_reason(exc)}") from exc
    return final


def _remove_original(entry: Path, *, is_dir: bool) -> None:
    """Delete the original, already renamed away and proven copied; OSError at the first failure."""
    remove_tree(entry)


# --- helpers -------------------------------------------------------------------------------------------------------


def _exists(entry: Path, candidate: Path) -> MoveError:
    return MoveError(f"cannot move {printable(entry)}: {printable(candidate)} already exists in the completed dir")


def _inside(path: Path, ancestor: Path) -> bool:
    real_path = Path(os.path.realpath(path))
    real_ancestor = Path(os.path.realpath(ancestor.parent)) / ancestor.name
    return real_path == real_ancestor or real_path.is_relative_to(real_ancestor)


def _reason(exc: OSError) -> str:
    if isinstance(exc, shutil.Error):
        # copytree gathers (src, dst, why) for every failure; the first one explains enough.
        failures = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        text = str(failures[0][2]) if failures and len(failures[0]) == 3 else str(exc)
    elif exc.strerror:
        text = exc.strerror
        if exc.filename is not None and exc.filename2 is None:
            text = f"{text}: {os.fsdecode(exc.filename)}"
    else:
        text = str(exc)
    return printable(text)
