"""Tar.gz creation for one entry, run in a worker process: a deterministic archive plus its digests, in one pass.

Must not import anyio, aioboto3, botocore or aiosqlite, and never returns file contents (results cross a pickle).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from typing import BinaryIO

from isal import igzip, isal_zlib

from amgmt.errors import CompressionError
from amgmt.parts import MiB

PARTIAL_SUFFIX = ".partial"
ARCHIVE_MODE = 0o600

# igzip at level >= 1 hands its output over in chunks of hundreds of KiB; level 0 in ~16 KiB ones. A buffer of this
# size keeps the number of write syscalls low either way.
_OUTPUT_BUFFER = 1 * MiB
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class ArchiveResult:
    archive_path: str
    archive_size: int
    archive_sha256: str  # hex SHA-256 of the whole .tar.gz
    part_size: int
    part_md5s: tuple[str, ...]  # hex MD5 of each consecutive part_size slice of the archive (last may be shorter)
    source_sha256: str  # regular file: SHA-256 of its bytes; directory: SHA-256 of its manifest
    source_size: int  # bytes of regular files read (a directory: the sum)
    file_count: int  # regular files archived
    is_directory: bool
    skipped: tuple[str, ...]  # relative paths of special files (FIFO, socket, device) left out of the archive


def compress_entry(source: str, archive_path: str, *, part_size: int, level: int = 1) -> ArchiveResult:
    """Write `source` (a regular file or a directory) as a deterministic tar.gz at `archive_path`.

    The archive holds one top-level member, the basename of `source`; a directory is walked recursively without
    following symlinks. Symlinks are stored as symlinks; FIFOs, sockets and devices are left out and listed in
    `skipped`. The same unchanged source always gives the same bytes: members sorted by their file-system bytes,
    uid/gid 0 with empty names, mtime in whole seconds, PAX format, a gzip header with mtime 0 and no file name.
    That holds for one Python and isal version: igzip's deflate output depends on how its input is chunked (tarfile's
    16 KiB copies) and on its version, so a resume after an upgrade must compare the part MD5s before reusing parts.
    Level 0 is fastest for compressible data but inflates incompressible data by about a quarter, beyond
    `parts.archive_size_bound`; levels 1-3 stay within it.

    Digests are computed while the bytes stream through (no second read of the source or of the archive).
    For a directory, `source_sha256` is the SHA-256 of its manifest: for every archived member, in archive order,
    the line

        relpath NUL kind NUL size NUL digest LF

    where relpath is the member name as file-system bytes (it starts with the entry's basename), kind is
    ``file``, ``dir`` or ``symlink``, size is decimal ASCII (0 for dir and symlink), and digest is the hex SHA-256
    of a file, the link target bytes of a symlink, and empty for a dir. Skipped special files are not in it.

    The archive is written to ``archive_path + ".partial"`` (mode 0600) and renamed into place only once complete
    and fsynced; on any failure, KeyboardInterrupt included, the partial file is removed. Raises CompressionError
    (path= the entry) when the source is not a regular file or directory, a file cannot be read, vanishes or changes
    while it is read, or the staging directory is full.
    """
    if part_size <= 0:
        raise ValueError(f"part_size must be positive, got {part_size}")
    if not isal_zlib.ISAL_BEST_SPEED <= level <= isal_zlib.ISAL_BEST_COMPRESSION:
        raise ValueError(f"igzip compression level must be 0-3, got {level}")

    source = source.rstrip(os.sep) or source
    name = os.path.basename(source)
    if name in ("", ".", ".."):
        raise CompressionError(f"cannot archive {_show(source)}: it has no usable base name", path=source)
    try:
        source_stat = os.lstat(source)
    except OSError as exc:
        raise _read_error(exc, source, source) from exc
    is_directory = stat.S_ISDIR(source_stat.st_mode)
    if not (is_directory or stat.S_ISREG(source_stat.st_mode)):
        kind = "a symlink" if stat.S_ISLNK(source_stat.st_mode) else "not a regular file or directory"
        raise CompressionError(f"cannot archive {_show(source)}: it is {kind}", path=source)

    partial = archive_path + PARTIAL_SUFFIX
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)  # left by a killed worker
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, ARCHIVE_MODE)
    except OSError as exc:
        raise _write_error(exc, archive_path, source) from exc

    try:
        out = open(fd, "wb", buffering=_OUTPUT_BUFFER)  # closed by sink.finish() or the failure path below
    except BaseException:
        os.close(fd)
        os.unlink(partial)
        raise
    sink = _DigestingWriter(out, part_size, archive_path, source)
    gz: igzip.IGzipFile | None = None
    try:
        gz = igzip.IGzipFile(filename="", mode="wb", compresslevel=level, fileobj=sink, mtime=0)
        tar = tarfile.TarFile(
            fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
        )
        skipped: list[str] = []
        if is_directory:
            source_sha256, source_size, file_count = _add_tree(tar, source, name, skipped)
        else:
            source_sha256, source_size = _add_file(tar, name, source, source)
            file_count = 1
        tar.close()  # end-of-archive blocks; leaves gz open
        gz.close()  # deflate tail and gzip trailer
        sink.finish()
        os.replace(partial, archive_path)
    except BaseException as exc:
        sink.discard()
        with contextlib.suppress(Exception):
            if gz is not None:
                gz.close()  # its trailer now goes nowhere; keeps IOBase.__del__ from writing later
        with contextlib.suppress(OSError):
            out.close()
        with contextlib.suppress(OSError):
            os.unlink(partial)
        if isinstance(exc, OSError):  # one our reader and writer did not translate (the rename, tarfile itself)
            raise _write_error(exc, archive_path, source) from exc
        raise

    return ArchiveResult(
        archive_path=archive_path,
        archive_size=sink.size,
        archive_sha256=sink.sha256.hexdigest(),
        part_size=part_size,
        part_md5s=sink.part_md5s,
        source_sha256=source_sha256,
        source_size=source_size,
        file_count=file_count,
        is_directory=is_directory,
        skipped=tuple(sorted(skipped, key=os.fsencode)),
    )


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (read-back checks of staged archives)."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _add_tree(tar: tarfile.TarFile, root: str, name: str, skipped: list[str]) -> tuple[str, int, int]:
    """Archive a directory's members in sorted order; returns (manifest SHA-256, bytes read, regular files)."""
    manifest = hashlib.sha256()
    total = 0
    count = 0
    for key, member, path, st in sorted(_walk(root, name, skipped, entry=root), key=lambda m: m[0]):
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            tar.addfile(_tarinfo(member, st, tarfile.DIRTYPE))
            fields = (b"dir", b"0", b"")
        elif stat.S_ISLNK(mode):
            try:
                target = os.readlink(path)
            except OSError as exc:
                raise _read_error(exc, path, root) from exc
            info = _tarinfo(member, st, tarfile.SYMTYPE)
            info.linkname = target
            tar.addfile(info)
            fields = (b"symlink", b"0", os.fsencode(target))
        else:
            digest, size = _add_file(tar, member, path, root)
            total += size
            count += 1
            fields = (b"file", str(size).encode("ascii"), digest.encode("ascii"))
        manifest.update(b"\0".join((key, *fields)) + b"\n")
    return manifest.hexdigest(), total, count


def _walk(
    root: str, name: str, skipped: list[str], *, entry: str
) -> list[tuple[bytes, str, str, os.stat_result]]:
    """(sort key, member name, path, lstat) of the root and everything below it; special files go to `skipped`."""
    try:
        members = [(os.fsencode(name), name, root, os.lstat(root))]
    except OSError as exc:
        raise _read_error(exc, root, entry) from exc
    pending = [(root, name)]
    while pending:
        directory, prefix = pending.pop()
        try:
            with os.scandir(directory) as it:
                found = [(e.path, f"{prefix}/{e.name}", e.stat(follow_symlinks=False)) for e in it]
        except OSError as exc:
            raise _read_error(exc, getattr(exc, "filename", None) or directory, entry) from exc
        for path, member, st in found:
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                pending.append((path, member))
            elif not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                skipped.append(member)
                continue
            members.append((os.fsencode(member), member, path, st))
    return members


def _add_file(tar: tarfile.TarFile, member: str, path: str, entry: str) -> tuple[str, int]:
    """Stream one regular file into the archive; returns (hex SHA-256, size). Fails if it changes meanwhile."""
    try:
        # O_NOFOLLOW and O_NONBLOCK: a path swapped for a symlink or a FIFO since the walk must neither be followed
        # nor block the worker; the fstat below then reports it as changed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _changed(path, entry) from exc
        raise _read_error(exc, path, entry) from exc
    with open(fd, "rb") as f:
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise _changed(path, entry)
            os.set_blocking(fd, True)
        except OSError as exc:
            raise _read_error(exc, path, entry) from exc
        info = _tarinfo(member, before, tarfile.REGTYPE)
        info.size = before.st_size
        reader = _DigestingReader(f, path, entry)
        tar.addfile(info, reader)  # tarfile's default 16 KiB copy buffer: larger ones measured slower with igzip
        try:
            grew = f.read(1)
            after = os.fstat(fd)
        except OSError as exc:
            raise _read_error(exc, path, entry) from exc
    if (
        grew
        or reader.size != before.st_size
        or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns)
    ):
        raise _changed(path, entry)
    return reader.sha256.hexdigest(), reader.size


def _tarinfo(member: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(member)
    info.type = kind
    info.mode = st.st_mode & 0o7777
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _DigestingReader:
    """The file object tarfile copies from: hashes and counts what it reads; a short read means the file shrank."""

    def __init__(self, f: BinaryIO, path: str, entry: str) -> None:
        self._f = f
        self._path = path
        self._entry = entry
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._f.read(size)
        except OSError as exc:
            raise _read_error(exc, self._path, self._entry) from exc
        if 0 <= size and len(data) < size:
            raise _changed(self._path, self._entry)
        self.sha256.update(data)
        self.size += len(data)
        return data


class _DigestingWriter:
    """The file object gzip writes to: hashes the archive and splits MD5s at part boundaries as bytes pass."""

    def __init__(self, out: io.BufferedWriter, part_size: int, archive_path: str, entry: str) -> None:
        self._out: io.BufferedWriter | None = out
        self._archive_path = archive_path
        self._entry = entry
        self._part_size = part_size
        self._room = part_size  # bytes left in the current part
        self._md5 = hashlib.md5()
        self._md5s: list[str] = []
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        n = len(data)
        if n <= self._room:  # the usual case: the chunk stays inside the current part
            self._md5.update(data)
            self._room -= n
        else:
            self._split(data)
        self.sha256.update(data)
        self.size += n
        if self._out is not None:
            try:
                self._out.write(data)
            except OSError as exc:
                raise _write_error(exc, self._archive_path, self._entry) from exc
        return n

    def _split(self, data: bytes) -> None:
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._room == 0:  # close a full part only when more bytes arrive: no empty trailing part
                self._md5s.append(self._md5.hexdigest())
                self._md5 = hashlib.md5()
                self._room = self._part_size
            take = min(self._room, end - pos)
            self._md5.update(view[pos : pos + take])
            self._room -= take
            pos += take

    def flush(self) -> None:
        pass  # the file is flushed and fsynced once, by finish()

    @property
    def part_md5s(self) -> tuple[str, ...]:
        if self._room < self._part_size or not self._md5s:
            return (*self._md5s, self._md5.hexdigest())
        return tuple(self._md5s)

    def finish(self) -> None:
        out = self._out
        assert out is not None
        try:
            out.flush()
            os.fsync(out.fileno())  # a resumed run may reuse the renamed archive after a crash
            out.close()
        except OSError as exc:
            raise _write_error(exc, self._archive_path, self._entry) from exc

    def discard(self) -> None:
        """Drop all later writes (the failure path closes gzip, whose trailer must not hit a full disk again)."""
        self._out = None


def _show(path: str) -> str:
    """A path as one line of printable text: itself when printable, else its repr (escapes, surrogates)."""
    text = os.fsdecode(path)
    return text if text.isprintable() else repr(text)


def _read_error(exc: OSError, path: str, entry: str) -> CompressionError:
    if isinstance(exc, FileNotFoundError):
        return CompressionError(f"{_show(path)} vanished before it could be compressed", path=entry)
    return CompressionError(f"cannot read {_show(path)}: {exc.strerror or exc}", path=entry)


def _changed(path: str, entry: str) -> CompressionError:
    return CompressionError(f"{_show(path)} changed while being compressed", path=entry)


def _write_error(exc: OSError, archive_path: str, entry: str) -> CompressionError:
    staging = os.path.dirname(os.path.abspath(archive_path))
    if exc.errno in _NO_SPACE:
        return CompressionError(f"no space left on device in staging dir {_show(staging)}", path=entry)
    return CompressionError(f"cannot write {_show(archive_path)}: {exc.strerror or exc}", path=entry)
