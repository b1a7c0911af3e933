"""Moving an original into the completed dir once its upload is verified: where it goes, duplicates, cross-filesystem.

Never overwrites or merges into anything, and leaves the original intact whenever it raises MoveError. Synchronous
on purpose: callers run these functions in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from amgmt.local.archive import manifest_line
from amgmt.text import printable
from amgmt.errors import MoveError, SourceChangedError
from amgmt.local.identity import Identity, Member, describe_change, identity_of, kind_of, members_of, same_identity
from amgmt.config import DUPLICATE_MODES
from amgmt.local.writers import Writer, writers_of

STAMP_FORMAT = "%Y%m%d-%H%M%S"
MAX_NAME_ATTEMPTS = 1000
# Temporaries are named PREFIX + the operation id's first 8 characters + "-" + (a bounded) name + "-" + random.
MOVING_PREFIX = ".amgmt-moving-"  # a copy in progress, inside the destination dir
REMOVING_PREFIX = ".amgmt-removing-"  # an original taken away (renamed beside itself) to be deleted once copied

# link() errors meaning "this filesystem (or policy) gives no hard links", as opposed to "the name is taken".
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS})


def completed_destination(entry: Path, *, local_dir: Path, completed_dir: Path, preserve_structure: bool,
                          duplicate_handling: str, now: datetime) -> Path:
    """Where `entry` would be moved to now: the plain destination, or the first free duplicate name.

    Pure apart from existence checks. Raises MoveError when the plain destination is taken and
    `duplicate_handling` is "error", or when the entry cannot be placed (outside local_dir with preserve_structure).
    """
    plain = plain_destination(entry, local_dir=local_dir, completed_dir=completed_dir,
                               preserve_structure=preserve_structure)
    for candidate in _candidates(entry, plain, completed_dir=completed_dir, duplicate_handling=duplicate_handling,
                                 now=now):
        if not _taken(candidate):
            return candidate
    raise _no_free_name(entry)


def move_to_completed(entry: Path, *, local_dir: Path, completed_dir: Path, preserve_structure: bool,
                      duplicate_handling: str, now: datetime, expected_identity: Identity | None = None,
                      expected_digest: str | None = None, operation_id: str | None = None) -> Path:
    """Move `entry` (file or directory) into the completed dir and return its final path, proving on the way that
    what lands there is what was packed.

    `expected_identity` is the entry's identity when it was packed (amgmt.local.identity) and `expected_digest` its
    source SHA-256 (a directory: of its manifest, as archive.compress_entry defines it); without them the entry's
    identity now is taken as the reference and a copy is not compared with anything. `operation_id` names the
    temporaries (its first 8 characters), so that recovery knows whose they are.

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
    plain = plain_destination(entry, local_dir=local_dir, completed_dir=completed_dir,
                               preserve_structure=preserve_structure)
    if is_dir and _inside(completed_dir, entry):
        raise MoveError(f"cannot move {printable(entry)}: the completed dir {printable(completed_dir)} is inside it")
    expected = _unchanged(entry, expected_identity)

    candidates = _candidates(entry, plain, completed_dir=completed_dir, duplicate_handling=duplicate_handling, now=now)
    for candidate in candidates:
        if _taken(candidate):
            continue
        _make_parent(entry, candidate)
        try:
            (_install_dir if is_dir else _install_file)(entry, candidate)
        except FileExistsError as exc:
            if duplicate_handling == "error":
                message = f"cannot move {printable(entry)}: {printable(candidate)} already exists in the completed dir"
                raise MoveError(message) from exc
            continue  # taken between the check and the move: try the next name
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return _move_across(entry, itertools.chain([candidate], candidates), plain=plain, is_dir=is_dir,
                                    expected=expected, expected_digest=expected_digest, tag=tag,
                                    duplicate_handling=duplicate_handling)
            raise MoveError(f"cannot move {printable(entry)} to {printable(candidate)}: {_reason(exc)}") from exc
        _check_moved(entry, candidate, expected=expected, tag=tag)
        return candidate
    raise _no_free_name(entry)


def find_completed(entry: Path, *, local_dir: Path, completed_dir: Path, preserve_structure: bool) -> Path | None:
    """The plain destination of `entry` if it is the very same file (same device and inode): a same-filesystem move
    that was interrupted between its link() and its unlink(). Recovery finishes such moves from their records;
    one found here has no record that proves it, and must not be moved or deleted.

    Same name and size in the completed dir proves nothing (another take, a re-render): that entry is processed
    normally. Anything that cannot be examined counts as "not there". Raises ValueError for an entry outside
    local_dir with preserve_structure.
    """
    try:
        plain = plain_destination(entry, local_dir=local_dir, completed_dir=completed_dir,
                                   preserve_structure=preserve_structure)
    except MoveError as exc:
        raise ValueError(str(exc)) from None
    try:
        ours, theirs = os.lstat(entry), os.lstat(plain)
    except OSError:
        return None
    return plain if (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino) else None


# --- recovery of a move that was interrupted -------------------------------------------------------------------------


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


def recover_move(entry: Path, *, local_dir: Path, completed_dir: Path, preserve_structure: bool,
                 duplicate_handling: str, started: datetime, operation_id: str, expected_identity: Identity | None,
                 expected_digest: str | None, original_size: int, dry_run: bool) -> MoveRecovery:
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
        plain = plain_destination(entry, local_dir=local_dir, completed_dir=completed_dir,
                                   preserve_structure=preserve_structure)
    except MoveError:
        return found
    names = _existing_candidates(entry, plain, completed_dir=completed_dir, duplicate_handling=duplicate_handling,
                                 now=started)

    def proven(path: Path) -> bool:
        return _holds(path, expected_identity, expected_digest, original_size)

    removing = _tagged(entry.parent, REMOVING_PREFIX, tag)
    if removing is not None:
        final = next((name for name in names if proven(name)), None)
        try:
            unchanged = expected_identity is None or same_identity(
                expected_identity, identity_of(removing), ignore_root_ctime=True)
        except OSError:
            unchanged = False
        if final is not None and unchanged:
            found.outcome, found.final = "moved", final
            found.leftovers.append({"path": display_path(removing), "action": "removed (the move was complete)"})
            if not dry_run:
                remove_tree_quietly(removing)
        else:
            back = entry if dry_run or not os.path.lexists(entry) else None
            if not dry_run:
                try:
                    back = put_back(removing, entry, tag=tag)
                except OSError:
                    back = None
            action = f"put back as {display_path(back)}" if back else "left: it could not be put back"
            found.leftovers.append({"path": display_path(removing), "action": action})
            if not unchanged:
                found.outcome = "changed"
                found.message = (f"{printable(entry)} changed after it was packed (seen when recovering the interrupted"
                                 f" move); {action}; the next run uploads it")
    elif os.path.lexists(entry):
        try:
            ours = os.lstat(entry)
        except OSError:
            ours = None
        twin = next((n for n in names if ours is not None and _same_inode(n, ours)), None)
        if twin is not None and ours is not None and not stat.S_ISDIR(ours.st_mode):
            try:
                unchanged = expected_identity is None or same_identity(
                    expected_identity, identity_of(entry), ignore_root_ctime=True)
            except OSError:
                unchanged = False
            if unchanged:
                found.outcome, found.final = "moved", twin
                if not dry_run:
                    os.unlink(entry)
            else:
                found.outcome = "changed"
                found.message = (f"{printable(entry)} changed after it was packed (seen when recovering the interrupted"
                                 f" move); its second name {printable(twin)} in the completed dir was removed; the next"
                                 " run uploads it")
                if not dry_run:
                    os.unlink(twin)
    else:
        final = next((name for name in names if proven(name)), None)
        if final is not None:
            found.outcome, found.final = "moved", final
        elif expected_identity is not None:
            # Moved within the filesystem, then changed before it could be checked: it goes back to be uploaded.
            moved = next((n for n in names if _is(n, expected_identity)), None)
            if moved is not None:
                back = entry
                if not dry_run:
                    back = put_back(moved, entry, tag=tag)
                found.outcome = "changed"
                found.message = (f"{printable(entry)} changed after it was packed (seen when recovering the interrupted"
                                 f" move); moved back from the completed dir as {printable(back)}; the next run uploads"
                                 " it")
    moving = _tagged(plain.parent, MOVING_PREFIX, tag)
    if moving is not None:
        found.leftovers.append({"path": display_path(moving), "action": "removed (an unfinished copy)"})
        if not dry_run:
            remove_tree_quietly(moving)
    return found


def display_path(path: Path | None) -> str:
    return printable(path) if path is not None else ""


def _existing_candidates(entry: Path, plain: Path, *, completed_dir: Path, duplicate_handling: str,
                         now: datetime) -> list[Path]:
    """The destination names an operation started at `now` may have used: the first free one was taken, so every
    name up to it exists."""
    names: list[Path] = []
    try:
        for candidate in _candidates(entry, plain, completed_dir=completed_dir,
                                     duplicate_handling=duplicate_handling, now=now):
            if not os.path.lexists(candidate):
                break
            names.append(candidate)
    except (MoveError, ValueError):
        pass
    return names


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


def content_digest(path: Path) -> str:
    """The source SHA-256 archive.compress_entry would compute for `path` (a directory: of its manifest); its bytes
    are read (copied to nowhere)."""
    return copy_entry(path, None)[1]


# --- naming --------------------------------------------------------------------------------------------------------


def plain_destination(entry: Path, *, local_dir: Path, completed_dir: Path, preserve_structure: bool) -> Path:
    if preserve_structure:
        try:
            relative = entry.relative_to(local_dir)
        except ValueError:
            raise MoveError(f"cannot move {printable(entry)}: it is not inside the local dir {printable(local_dir)}") from None
        if not relative.parts:
            raise MoveError(f"cannot move {printable(entry)}: it is the local dir itself")
        return completed_dir / relative
    if not entry.name:
        raise MoveError(f"cannot move {printable(entry)}: it has no name")
    return completed_dir / entry.name


def _candidates(entry: Path, plain: Path, *, completed_dir: Path, duplicate_handling: str,
                now: datetime) -> Iterator[Path]:
    """The plain destination, then the duplicate names in order (a bounded number of them)."""
    if duplicate_handling not in DUPLICATE_MODES:
        raise ValueError(f"unknown duplicate handling {duplicate_handling!r}")
    yield plain
    if duplicate_handling == "error":
        raise MoveError(f"cannot move {printable(entry)}: {printable(plain)} already exists in the completed dir")
    stamp = now.strftime(STAMP_FORMAT)
    relative = plain.relative_to(completed_dir)
    for attempt in range(MAX_NAME_ATTEMPTS):
        tag = stamp if attempt == 0 else f"{stamp}-{attempt}"
        if duplicate_handling == "timestamp":
            yield plain.with_name(_fit_name(f"{tag}_", plain.name))
        else:
            yield completed_dir / tag / relative


def _taken(path: Path) -> bool:
    # lexists: a dangling symlink still occupies the name. A path that cannot be examined is left to the move to
    # report (it fails there with the real reason) rather than skipped as taken.
    return os.path.lexists(path)


def _no_free_name(entry: Path) -> MoveError:
    return MoveError(f"cannot move {printable(entry)}: no free name in the completed dir after {MAX_NAME_ATTEMPTS} tries")


NAME_MAX = 255  # bytes in one path component, on every filesystem amgmt expects


def _fit_name(prefix: str, name: str, *, reserve: int = 0) -> str:
    """`prefix + name`, the name shortened (keeping its extension) to fit NAME_MAX bytes less `reserve`."""
    room = NAME_MAX - reserve - len(os.fsencode(prefix))
    raw = os.fsencode(name)
    if len(raw) <= room:
        return prefix + name
    stem, dot, ext = raw.rpartition(b".")
    tail = (dot + ext) if dot and len(ext) <= 16 else b""
    head = (stem if tail else raw)[: room - len(tail)]
    # Do not cut a UTF-8 sequence in half.
    while head and (head[-1] & 0xC0) == 0x80:
        head = head[:-1]
    if head and head[-1] >= 0xC0:
        head = head[:-1]
    return prefix + os.fsdecode(head + tail)


def _hidden_name(prefix: str, name: str) -> str:
    # Bounded so that the temporary name stays under NAME_MAX (255) even for a long original name.
    suffix = f"-{secrets.token_hex(4)}"
    return _fit_name(prefix, name[:100], reserve=len(suffix)) + suffix


# --- moving --------------------------------------------------------------------------------------------------------


def _make_parent(entry: Path, destination: Path) -> None:
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MoveError(
            f"cannot move {printable(entry)}: cannot create {printable(destination.parent)}: {_reason(exc)}"
        ) from exc


def _install(source: Path, destination: Path) -> None:
    """Rename `source` (file or directory) within one filesystem, never replacing: FileExistsError if taken."""
    if stat.S_ISDIR(os.lstat(source).st_mode):
        _install_dir(source, destination)
    else:
        _install_file(source, destination)


def _install_file(source: Path, destination: Path) -> None:
    """Rename a non-directory within one filesystem, failing with FileExistsError instead of replacing.

    link() + unlink() refuses an existing name atomically (POSIX rename() would silently replace a file).
    """
    try:
        os.link(source, destination, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise  # EEXIST (name taken), EXDEV (other filesystem), or a real failure
        _claim_then_rename(source, destination, claim=_claim_file)
        return
    try:
        os.unlink(source)
    except OSError:
        _unlink_quietly(destination)
        raise


def _install_dir(source: Path, destination: Path) -> None:
    """Rename a directory within one filesystem without replacing anything (rename() replaces an empty dir)."""
    _claim_then_rename(source, destination, claim=os.mkdir)


def _claim_then_rename(source: Path, destination: Path, *, claim: Callable[[Path], object]) -> None:
    # Creating the name first fails atomically if it exists; rename() then replaces only our own empty placeholder.
    claim(destination)
    try:
        os.rename(source, destination)
    except OSError:
        _remove_quietly(destination)
        raise


def _claim_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


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


def _check_moved(entry: Path, moved: Path, *, expected: Identity, tag: str) -> None:
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
        # Scanned after the move: a writer can no longer open the files by their old names.
        writers = writers_of((m.dev, m.ino) for m in members if m.kind == "file")
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
        who = ", ".join(f"pid {w.pid} ({printable(w.command)})" for w in writers[:3])
        raise SourceChangedError(
            f"{printable(entry)} is still open for writing by {who}; moved back{where}; the next run takes it once"
            " it is closed",
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
    names = [original] + [original.parent / _changed_name(original.name, tag, n) for n in range(MAX_NAME_ATTEMPTS)]
    for name in names:
        try:
            _install(moved, name)
        except FileExistsError:
            continue
        return name
    raise FileExistsError(errno.EEXIST, "no free name to put it back under", str(original))


def _changed_name(name: str, tag: str, attempt: int) -> str:
    suffix = f".amgmt-changed-{tag}" + (f"-{attempt}" if attempt else "")
    raw = os.fsencode(name)[: NAME_MAX - len(suffix)]
    while raw and (raw[-1] & 0xC0) == 0x80:
        raw = raw[:-1]
    if raw and raw[-1] >= 0xC0:
        raw = raw[:-1]
    return os.fsdecode(raw) + suffix


# --- across filesystems ---------------------------------------------------------------------------------------------


def _move_across(entry: Path, candidates: Iterator[Path], *, plain: Path, is_dir: bool, expected: Identity,
                 expected_digest: str | None, tag: str, duplicate_handling: str) -> Path:
    """Copy, prove, take the original away, install the copy, remove the original (see move_to_completed)."""
    try:
        _check_removable(entry, is_dir=is_dir)
    except OSError as exc:
        raise MoveError(f"cannot move {printable(entry)}: {_reason(exc)}") from exc
    _make_parent(entry, plain)
    temporary = plain.parent / _hidden_name(f"{MOVING_PREFIX}{tag}-", plain.name)
    removing: Path | None = None
    try:
        try:
            copied, digest = copy_entry(entry, temporary)
        except OSError as exc:
            raise MoveError(f"cannot move {printable(entry)} to {printable(plain.parent)}: {_reason(exc)}") from exc
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
        # One atomic rename takes the original away whole: nothing can be added under its name any more, and a
        # crash from here on leaves a name recovery knows (the operation's tag).
        removing = entry.parent / _hidden_name(f"{REMOVING_PREFIX}{tag}-", entry.name)
        try:
            os.rename(entry, removing)
        except OSError as exc:
            removing = None
            raise MoveError(f"cannot move {printable(entry)}: cannot rename it away: {_reason(exc)}") from exc
        _check_moved(entry, removing, expected=expected, tag=tag)
        final = _install_copy(entry, temporary, candidates, duplicate_handling=duplicate_handling)
    except BaseException:
        if removing is not None and os.path.lexists(removing):
            with contextlib.suppress(OSError):
                put_back(removing, entry, tag=tag)
        remove_tree_quietly(temporary)
        raise
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


def _install_copy(entry: Path, temporary: Path, candidates: Iterator[Path], *, duplicate_handling: str) -> Path:
    for candidate in candidates:
        if _taken(candidate):
            continue
        _make_parent(entry, candidate)
        try:
            _install(temporary, candidate)
        except FileExistsError as exc:
            if duplicate_handling == "error":
                message = f"cannot move {printable(entry)}: {printable(candidate)} already exists in the completed dir"
                raise MoveError(message) from exc
            continue
        except OSError as exc:
            raise MoveError(f"cannot move {printable(entry)} to {printable(candidate)}: {_reason(exc)}") from exc
        return candidate
    raise _no_free_name(entry)


def copy_entry(entry: Path, target: Path | None) -> tuple[Identity, str]:
    """Copy a file or directory tree to `target` (which must not exist; None: only hash it), iteratively, never
    following symlinks.

    Returns the source's identity as it was copied (each regular file's from its fstat after the read) and the
    content digest as archive.compress_entry defines source_sha256 (a file: SHA-256 of its bytes; a directory: of
    its manifest). Symlinks are copied as symlinks; FIFOs, sockets and devices are recreated (mknod), never opened.
    Modes and modification times are kept. OSError on any failure (the caller removes the partial copy).
    """
    root_st = os.lstat(entry)
    if stat.S_ISREG(root_st.st_mode):
        digest, _size, after = _copy_file(str(entry), None if target is None else str(target))
        return Identity.of_members([Member.of(b"", after)]), digest
    if not stat.S_ISDIR(root_st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file or directory", str(entry))
    name = os.fsencode(entry.name)
    members = [Member.of(b"", root_st)]
    lines = [(name, manifest_line(name, b"dir", b"0", b""))]
    directories: list[tuple[str, os.stat_result]] = []
    if target is not None:
        os.mkdir(target, 0o700)
        directories.append((str(target), root_st))
    pending: list[tuple[str, str | None, bytes]] = [(str(entry), None if target is None else str(target), b"")]
    while pending:
        source_dir, target_dir, prefix = pending.pop()
        with os.scandir(source_dir) as it:
            found = [(e.name, e.path, e.stat(follow_symlinks=False)) for e in it]
        for child_name, path, st in found:
            relpath = prefix + os.fsencode(child_name)
            key = name + b"/" + relpath
            copy = None if target_dir is None else os.path.join(target_dir, child_name)
            kind = kind_of(st.st_mode)
            if kind == "dir":
                if copy is not None:
                    os.mkdir(copy, 0o700)
                    directories.append((copy, st))
                pending.append((path, copy, relpath + b"/"))
                lines.append((key, manifest_line(key, b"dir", b"0", b"")))
            elif kind == "file":
                digest, size, st = _copy_file(path, copy)
                lines.append((key, manifest_line(key, b"file", str(size).encode("ascii"), digest.encode("ascii"))))
            elif kind == "symlink":
                link = os.readlink(path)
                if copy is not None:
                    os.symlink(link, copy)
                    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
                lines.append((key, manifest_line(key, b"symlink", b"0", os.fsencode(link))))
            elif copy is not None:  # FIFO, socket, device: recreated as such; reading one would block or never end
                os.mknod(copy, st.st_mode, st.st_rdev)
            members.append(Member.of(relpath, st))
    manifest = hashlib.sha256()
    for _key, line in sorted(lines):
        manifest.update(line)
    for path, st in reversed(directories):  # deepest first: setting times is the last change to each
        os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return Identity.of_members(members), manifest.hexdigest()


_COPY_CHUNK = 1 << 20


def _copy_file(source: str, target: str | None) -> tuple[str, int, os.stat_result]:
    """Copy one regular file, hashing what is written; (hex SHA-256, bytes, the source's fstat after the read).

    A source that is not a regular file any more (swapped since it was listed) is not read: its stat says so."""
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return "", 0, before
        os.set_blocking(fd, True)
        digest = hashlib.sha256()
        size = 0
        out = None if target is None else os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            buffer = bytearray(_COPY_CHUNK)
            view = memoryview(buffer)
            while n := os.readv(fd, [buffer]):
                digest.update(view[:n])
                written = 0 if out is not None else n
                while written < n:
                    written += os.write(out, view[written:n])  # type: ignore[arg-type]
                size += n
            if out is not None:
                os.fchmod(out, stat.S_IMODE(before.st_mode))
                os.utime(out, ns=(before.st_atime_ns, before.st_mtime_ns))
        finally:
            if out is not None:
                os.close(out)
        return digest.hexdigest(), size, os.fstat(fd)
    finally:
        os.close(fd)


def _check_removable(entry: Path, *, is_dir: bool) -> None:
    """Refuse before copying when the original could not be deleted afterwards (a copy that cannot finish the move)."""
    directories = [entry.parent]
    if is_dir:
        pending = [entry]
        while pending:
            directory = pending.pop()
            directories.append(directory)
            with os.scandir(directory) as it:
                pending.extend(Path(e.path) for e in it if e.is_dir(follow_symlinks=False))
    for directory in directories:
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "the original could not be removed after copying", str(directory))


def _remove_original(entry: Path, *, is_dir: bool) -> None:
    """Delete the original, already renamed away and proven copied; OSError at the first failure."""
    remove_tree(entry)


def remove_tree(path: Path) -> None:
    """Delete a file or a directory tree, iteratively (any depth), never following symlinks; OSError if it fails."""
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        os.unlink(path)
        return
    pending = [str(path)]
    emptied: list[str] = []
    while pending:
        directory = pending.pop()
        emptied.append(directory)
        with os.scandir(directory) as it:
            children = list(it)
        for child in children:
            if child.is_dir(follow_symlinks=False):
                pending.append(child.path)
            else:
                os.unlink(child.path)
    for directory in reversed(emptied):
        os.rmdir(directory)


def remove_tree_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        remove_tree(path)


def _remove_quietly(path: Path) -> None:
    remove_tree_quietly(path)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --- helpers -------------------------------------------------------------------------------------------------------


def _inside(path: Path, ancestor: Path) -> bool:
    real_path = Path(os.path.realpath(path))
    real_ancestor = Path(os.path.realpath(ancestor.parent)) / ancestor.name
    return real_path == real_ancestor or real_path.is_relative_to(real_ancestor)


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, regular files) of a file or a directory tree, never following symlinks; OSError if unreadable."""
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        return (st.st_size, 1) if stat.S_ISREG(st.st_mode) else (0, 0)
    total = count = 0
    stack = [path]
    while stack:
        with os.scandir(stack.pop()) as it:
            for item in it:
                if item.is_dir(follow_symlinks=False):
                    stack.append(Path(item.path))
                elif item.is_file(follow_symlinks=False):
                    total += item.stat(follow_symlinks=False).st_size
                    count += 1
    return total, count


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


