"""Putting a file or directory at a name that must not exist yet, within one filesystem: one atomic
renameat2(RENAME_NOREPLACE) where Linux has it, else two steps (link + unlink, or claim the name + rename) that
never replace anything either. FileExistsError when the name is taken; EXDEV (another filesystem) is the caller's."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
from collections.abc import Callable
from pathlib import Path

from amgmt.local.copying import remove_tree_quietly

# link() errors meaning "this filesystem (or policy) gives no hard links", as opposed to "the name is taken".
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS})


def place(source: Path, destination: Path) -> None:
    """Rename `source` (file or directory) within one filesystem, never replacing: FileExistsError if taken."""
    if rename_noreplace(source, destination):
        return
    if stat.S_ISDIR(os.lstat(source).st_mode):
        _install_dir(source, destination)
    else:
        _install_file(source, destination)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1  # linux/fs.h
_NO_RENAMEAT2 = frozenset({errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function: Callable[..., int] = libc.renameat2  # glibc 2.28 and later
    except (OSError, AttributeError):
        return None
    return function


def rename_noreplace(source: Path, destination: Path) -> bool:
    """One atomic rename that refuses an existing name (Linux renameat2 RENAME_NOREPLACE): no window in which
    `source` could be replaced between placing it and removing its old name, no placeholder left by a crash.
    False where the system or the filesystem cannot do it (then the caller places it in two steps);
    FileExistsError when the name is taken; another OSError (EXDEV: another filesystem) otherwise."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_RENAMEAT2:
        return False
    raise OSError(code, os.strerror(code), os.fsdecode(source), None, os.fsdecode(destination))


def _install_file(source: Path, destination: Path) -> None:
    """Rename a non-directory within one filesystem in two steps, failing with FileExistsError instead of replacing.

    link() + unlink() refuses an existing name atomically (POSIX rename() would silently replace a file). If the
    source name was replaced between the two (a program saving by rename), the new file stays where it is."""
    try:
        os.link(source, destination, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise  # EEXIST (name taken), EXDEV (other filesystem), or a real failure
        _claim_then_rename(source, destination, claim=_claim_file)
        return
    try:
        placed, now = os.lstat(destination), os.lstat(source)
        if (placed.st_dev, placed.st_ino) == (now.st_dev, now.st_ino):
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
        remove_tree_quietly(destination)
        raise


def _claim_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
