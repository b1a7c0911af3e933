"""Moving an original into the completed dir once its upload is verified: where it goes, duplicates, cross-filesystem.

Never overwrites or merges into anything, and leaves the original intact whenever it raises MoveError. Synchronous
on purpose: callers run these functions in a worker thread.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from amgmt.errors import MoveError
from amgmt.settings import DUPLICATE_MODES

STAMP_FORMAT = "%Y%m%d-%H%M%S"
MAX_NAME_ATTEMPTS = 1000
MOVING_PREFIX = ".amgmt-moving-"  # a copy in progress, inside the destination dir
REMOVING_PREFIX = ".amgmt-removing-"  # a copied original being deleted, beside the original

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
                      duplicate_handling: str, now: datetime) -> Path:
    """Move `entry` (file or directory) into the completed dir and return its final path.

    Parent directories are created. A name taken meanwhile (by anyone) moves on to the next duplicate name; nothing
    existing is ever replaced. Across filesystems the entry is copied into a hidden sibling of the destination, renamed
    into place, and only then is the original removed. Any failure raises MoveError with the original intact.
    """
    try:
        is_dir = stat.S_ISDIR(os.lstat(entry).st_mode)
    except OSError as exc:
        raise MoveError(f"cannot move {_show(entry)}: {_reason(exc)}") from exc
    plain = plain_destination(entry, local_dir=local_dir, completed_dir=completed_dir,
                               preserve_structure=preserve_structure)
    if is_dir and _inside(completed_dir, entry):
        raise MoveError(f"cannot move {_show(entry)}: the completed dir {_show(completed_dir)} is inside it")

    for candidate in _candidates(entry, plain, completed_dir=completed_dir, duplicate_handling=duplicate_handling,
                                 now=now):
        if _taken(candidate):
            continue
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MoveError(
                f"cannot move {_show(entry)}: cannot create {_show(candidate.parent)}: {_reason(exc)}"
            ) from exc
        try:
            _place(entry, candidate, is_dir=is_dir)
        except FileExistsError as exc:
            if duplicate_handling == "error":
                message = f"cannot move {_show(entry)}: {_show(candidate)} already exists in the completed dir"
                raise MoveError(message) from exc
            continue  # taken between the check and the move: try the next name
        except OSError as exc:
            raise MoveError(f"cannot move {_show(entry)} to {_show(candidate)}: {_reason(exc)}") from exc
        return candidate
    raise _no_free_name(entry)


def find_completed(entry: Path, *, local_dir: Path, completed_dir: Path, preserve_structure: bool) -> Path | None:
    """The plain destination of `entry` if it already holds the same entry: same kind and same total size
    (and, for a file, the same modification time, which a move keeps).

    A directory's size is the sum of its regular files, walked without following symlinks. Anything that cannot be
    examined counts as "not there". Raises ValueError for an entry outside local_dir with preserve_structure.
    """
    try:
        plain = plain_destination(entry, local_dir=local_dir, completed_dir=completed_dir,
                                   preserve_structure=preserve_structure)
    except MoveError as exc:
        raise ValueError(str(exc)) from None
    try:
        ours, theirs = os.lstat(entry), os.lstat(plain)
        if stat.S_IFMT(ours.st_mode) != stat.S_IFMT(theirs.st_mode):
            return None
        if stat.S_ISDIR(ours.st_mode):
            same = tree_size(entry) == tree_size(plain)
        else:
            # A move keeps the mtime: same size and same mtime (to the second) is the same file, moved earlier.
            same = ours.st_size == theirs.st_size and int(ours.st_mtime) == int(theirs.st_mtime)
    except OSError:
        return None
    return plain if same else None


# --- naming --------------------------------------------------------------------------------------------------------


def plain_destination(entry: Path, *, local_dir: Path, completed_dir: Path, preserve_structure: bool) -> Path:
    if preserve_structure:
        try:
            relative = entry.relative_to(local_dir)
        except ValueError:
            raise MoveError(f"cannot move {_show(entry)}: it is not inside the local dir {_show(local_dir)}") from None
        if not relative.parts:
            raise MoveError(f"cannot move {_show(entry)}: it is the local dir itself")
        return completed_dir / relative
    if not entry.name:
        raise MoveError(f"cannot move {_show(entry)}: it has no name")
    return completed_dir / entry.name


def _candidates(entry: Path, plain: Path, *, completed_dir: Path, duplicate_handling: str,
                now: datetime) -> Iterator[Path]:
    """The plain destination, then the duplicate names in order (a bounded number of them)."""
    if duplicate_handling not in DUPLICATE_MODES:
        raise ValueError(f"unknown duplicate handling {duplicate_handling!r}")
    yield plain
    if duplicate_handling == "error":
        raise MoveError(f"cannot move {_show(entry)}: {_show(plain)} already exists in the completed dir")
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
    return MoveError(f"cannot move {_show(entry)}: no free name in the completed dir after {MAX_NAME_ATTEMPTS} tries")


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


def _place(entry: Path, destination: Path, *, is_dir: bool) -> None:
    """Give `entry` the name `destination`; FileExistsError if the name is taken, OSError otherwise."""
    try:
        if is_dir:
            _install_dir(entry, destination)
        else:
            _install_file(entry, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_across(entry, destination, is_dir=is_dir)


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


def _copy_across(entry: Path, destination: Path, *, is_dir: bool) -> None:
    """Move `entry` to another filesystem: copy beside the destination, rename into place, then remove the original."""
    _check_removable(entry, is_dir=is_dir)
    temporary = destination.parent / _hidden_name(MOVING_PREFIX, destination.name)
    try:
        if is_dir:
            shutil.copytree(entry, temporary, symlinks=True, copy_function=shutil.copy2)
            _install_dir(temporary, destination)
        else:
            shutil.copy2(entry, temporary, follow_symlinks=False)
            _install_file(temporary, destination)
    except BaseException:
        _remove_quietly(temporary)
        raise
    try:
        _remove_original(entry, is_dir=is_dir)
    except BaseException:
        _remove_quietly(destination)
        raise


def _check_removable(entry: Path, *, is_dir: bool) -> None:
    """Refuse before copying when the original could not be deleted afterwards (a copy that cannot finish the move)."""
    directories = [entry.parent]
    if is_dir:
        for root, _dirs, _files in os.walk(entry, onerror=_raise):
            directories.append(Path(root))
    for directory in directories:
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "the original could not be removed after copying", str(directory))


def _raise(exc: OSError) -> None:
    raise exc


def _remove_original(entry: Path, *, is_dir: bool) -> None:
    if not is_dir:
        os.unlink(entry)
        return
    # One atomic rename takes the original away whole; a deletion failing halfway must not leave it half gone.
    doomed = entry.parent / _hidden_name(REMOVING_PREFIX, entry.name)
    os.rename(entry, doomed)
    # The move is complete and the copy verified in place: a leftover here only costs space, never data.
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_quietly(path: Path) -> None:
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


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
    return _show(text)


def _show(value: object) -> str:
    """One line: newlines and other control characters in names are escaped."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    return text if text.isprintable() else repr(text)[1:-1]
