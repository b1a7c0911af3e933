"""Copying an entry across filesystems while hashing it, and deleting a tree: iteratively (any depth), never
following symlinks, special files recreated and never opened.

Synchronous; knows nothing of the completed dir's names or of records (completed.py and move_recovery.py do).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from pathlib import Path

from amgmt.local.archive import manifest_line
from amgmt.local.identity import Identity, Member, kind_of


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


def check_removable(entry: Path, *, is_dir: bool) -> None:
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


def content_digest(path: Path) -> str:
    """The source SHA-256 archive.compress_entry would compute for `path` (a directory: of its manifest); its bytes
    are read (copied to nowhere)."""
    return copy_entry(path, None)[1]


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


def tree_size(path: Path) -> tuple[int, int, bool]:
    """(bytes, regular files, whether it is a directory) of a file or a directory tree, never following symlinks
    (one lstat for a file); OSError if unreadable."""
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        return (st.st_size, 1, False) if stat.S_ISREG(st.st_mode) else (0, 0, False)
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
    return total, count, True
