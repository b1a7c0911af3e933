"""Tar.gz creation for one entry, run in a worker process: a deterministic archive plus its digests, in one pass.

Lays out the tar stream and takes every digest; deflate.py turns the stream into gzip. Must not import anyio,
aioboto3, botocore or aiosqlite, and never returns file contents (results cross a pickle).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import stat
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from amgmt import cpu
from amgmt.errors import CompressionError
from amgmt.local.archive_file import ArchiveFile, write_error
from amgmt.local.deflate import LEVELS, Deflater
from amgmt.local.identity import Identity, Member
from amgmt.naming import PARTIAL_SUFFIX
from amgmt.text import printable

# Deflate and write in two helper threads when a CPU is to spare (see _use_helper_threads); False: never. The bytes
# written are the same either way.
_HELPER_THREADS = True
_SIBLING_IDLE = 10.0  # seconds: a partial archive written to less recently than this is not being compressed
_NUL_BLOCK = bytes(tarfile.BLOCKSIZE)


# One member of a directory's archive as the store records it: (path, kind, size, mtime). The path is the member name
# as record text (naming.display), starting with the entry's name; kind "file", "dir" or "symlink"; size in bytes (0
# but for a file); mtime in whole seconds, as the tar header holds it. A plain tuple: 100,000 of them cross a pickle
# in 0.1 s (a NamedTuple took 0.45 s).
ArchivedMember = tuple[str, str, int, int]


@dataclass(frozen=True)
class ArchiveResult:
    archive_path: str
    archive_size: int
    archive_sha256: str  # hex SHA-256 of the whole .tar.gz
    part_size: int
    part_md5s: tuple[str, ...]  # hex MD5 of each consecutive part_size slice of the archive (last may be shorter); ()
    # when packed without MD5s (the endpoint proves the bytes by their CRC64NVME: compress_entry's `md5`)
    part_crc64nvmes: tuple[str, ...]  # base64 CRC64NVME of the same slices (the x-amz-checksum-crc64nvme values)
    archive_crc64nvme: str  # base64 CRC64NVME of the whole .tar.gz (S3's FULL_OBJECT checksum of the object)
    source_sha256: str  # regular file: SHA-256 of its bytes; directory: SHA-256 of its manifest
    source_size: int  # bytes of regular files read (a directory: the sum)
    file_count: int  # regular files archived
    is_directory: bool
    skipped: tuple[str, ...]  # relative paths of special files (FIFO, socket, device) left out of the archive
    source_identity: Identity  # what the source was made of when packed (amgmt.local.identity), special files included
    members: tuple[ArchivedMember, ...] = ()  # a directory's members in archive order; () for a file entry
    # CPU seconds of each step of the pass (amgmt.cpu: reads, digests, deflate, writes), for the benchmark's breakdown
    cpu_seconds: Mapping[str, float] = field(default_factory=dict, compare=False)

    @property
    def part_count(self) -> int:
        return len(self.part_crc64nvmes)


def compress_entry(
    source: str, archive_path: str, *, part_size: int, level: int = 1, md5: bool = True
) -> ArchiveResult:
    """Write `source` (a regular file or a directory) as a deterministic tar.gz at `archive_path`.

    The archive holds one top-level member, the basename of `source`; a directory is walked recursively without
    following symlinks. Symlinks are stored as symlinks; FIFOs, sockets and devices are left out and listed in
    `skipped`. The same unchanged source always gives the same bytes: members sorted by their file-system bytes,
    uid/gid 0 with empty names, mtime in whole seconds, PAX format (the tar stream is byte for byte what tarfile
    writes), a gzip header with mtime 0 and no file name. The tar stream is deflated in fixed 1 MiB blocks, each
    ending on a byte boundary (a sync flush) and primed with the 32 KiB before it, so the bytes do not depend on
    threads or timing; they do depend on the isal version (and on deflate._BLOCK_SIZE), so a resume after an upgrade
    must compare the part checksums before reusing parts.
    With `md5` False no part MD5s are computed (part_md5s is ()): the caller knows the endpoint proves an upload's
    bytes by the CRC64NVMEs, which are always computed (~0.1 CPU-s/GiB against MD5's ~1.7).
    Level 0 is fastest for compressible data but inflates incompressible data by about a quarter, beyond
    `parts.archive_size_bound`; levels 1-3 stay within it.

    Digests, and the source's identity (amgmt.local.identity: from the walk's lstat, and for each regular file from the
    fstat after reading it, which must equal the one before, ctime included), are computed while the bytes stream
    through (no second walk or read of the source or of the archive). When a
    CPU is to spare (see _use_helper_threads), deflating and the archive's digests and writes run in two helper
    threads (hashlib and isal release the GIL), the reads and the source digest in the calling thread.
    For a directory, `source_sha256` is the SHA-256 of its manifest: for every archived member, in archive order,
    the line

        relpath NUL kind NUL size NUL digest LF

    where relpath is the member name as file-system bytes (it starts with the entry's basename), kind is
    ``file``, ``dir`` or ``symlink``, size is decimal ASCII (0 for dir and symlink), and digest is the hex SHA-256
    of a file, the link target bytes of a symlink, and empty for a dir. Skipped special files are not in it.

    The archive is written to ``archive_path + ".partial"`` (mode 0600) and renamed into place only once complete;
    it is not fsynced: no run ever reads a staging archive written before a crash (its name holds the operation id,
    a later run compresses again and recovery deletes leftovers), so the archive may live and die in the page cache
    (measured on 1 GiB of video: 4.18 -> 3.83 CPU-s/GiB of the whole machine, kernel writeback included, and
    2.55 -> 2.08 s). A byte lost on the way back is caught by the part checksums the server checks (the
    CRC64NVMEs, or the MD5s as Content-MD5), then by the stored checksum or the ETag. On any
    failure, KeyboardInterrupt included, the partial file is removed. Raises CompressionError
    (path= the entry) when the source is not a regular file or directory, a file cannot be read, vanishes or changes
    while it is read, or the staging directory is full.
    """
    if part_size <= 0:
        raise ValueError(f"part_size must be positive, got {part_size}")
    if level not in LEVELS:
        raise ValueError(f"igzip compression level must be 0-3, got {level}")
    source = source.rstrip(os.sep) or source
    source_stat = _archivable(source)
    archive = ArchiveFile.create(archive_path, part_size=part_size, entry=source, md5=md5)
    deflater: Deflater | None = None
    try:
        deflater = Deflater(
            archive, level, use_threads=lambda: _use_helper_threads(archive.partial), clock=archive.clock
        )
        deflater.start()
        packed = _pack(_TarWriter(deflater, archive.clock), source, source_stat)
        deflater.finish()  # every block written, then the deflate tail and gzip trailer
        archive.finish()  # closed, then renamed into place
    except BaseException as exc:
        archive.discard()
        if deflater is not None:
            deflater.abort()  # its threads end before the file is closed
        archive.remove()
        if isinstance(exc, OSError):  # one our reader and writer did not translate (tarfile itself)
            raise write_error(exc, archive_path, source) from exc
        raise
    return ArchiveResult(
        archive_path=archive_path,
        archive_size=archive.size,
        archive_sha256=archive.sha256.hexdigest(),
        part_size=part_size,
        part_md5s=archive.part_md5s,
        part_crc64nvmes=archive.part_crc64nvmes,
        archive_crc64nvme=archive.crc64nvme,
        source_sha256=packed.source_sha256,
        source_size=packed.source_size,
        file_count=packed.file_count,
        is_directory=packed.is_directory,
        skipped=packed.skipped,
        source_identity=packed.source_identity,
        members=packed.members,
        cpu_seconds=archive.clock.snapshot(),
    )


def _archivable(source: str) -> os.stat_result:
    """The lstat of `source`; CompressionError unless it is a regular file or directory with a usable name."""
    if os.path.basename(source) in ("", ".", ".."):
        raise CompressionError(f"cannot archive {printable(source)}: it has no usable base name", path=source)
    try:
        source_stat = os.lstat(source)
    except OSError as exc:
        raise _read_error(exc, source, source) from exc
    if not (stat.S_ISDIR(source_stat.st_mode) or stat.S_ISREG(source_stat.st_mode)):
        kind = "a symlink" if stat.S_ISLNK(source_stat.st_mode) else "not a regular file or directory"
        raise CompressionError(f"cannot archive {printable(source)}: it is {kind}", path=source)
    return source_stat


@dataclass(frozen=True)
class _Packed:
    """The ArchiveResult fields that describe the source."""

    source_sha256: str
    source_size: int
    file_count: int
    is_directory: bool
    skipped: tuple[str, ...]
    source_identity: Identity
    members: tuple[ArchivedMember, ...]


def _pack(tar: _TarWriter, source: str, source_stat: os.stat_result) -> _Packed:
    """Every member into `tar`, closed; the ArchiveResult fields that describe the source."""
    name = os.path.basename(source)
    is_directory = stat.S_ISDIR(source_stat.st_mode)
    skipped: list[str] = []
    identity: list[Member] = []
    listed: list[ArchivedMember] = []
    if is_directory:
        source_sha256, source_size, file_count = _add_tree(tar, source, name, skipped, identity, listed)
    else:
        tar.expect(source_stat.st_size)
        source_sha256, source_size, after = _add_file(tar, name, source, source)
        identity.append(Member.of(b"", after))
        file_count = 1
    tar.close()  # end-of-archive blocks, the last block to the deflater
    return _Packed(
        source_sha256=source_sha256,
        source_size=source_size,
        file_count=file_count,
        is_directory=is_directory,
        skipped=tuple(sorted(skipped, key=os.fsencode)),
        source_identity=Identity.of_members(identity),
        members=tuple(listed),
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


def part_md5s(path: str, part_size: int, chunk: int = 1 << 20) -> tuple[str, ...]:
    """Hex MD5 of each part_size slice of a file (an archive packed without MD5s that turned out to need them)."""
    md5s: list[str] = []
    digest, room = hashlib.md5(usedforsecurity=False), part_size
    buffer = bytearray(min(chunk, part_size))
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view[: min(len(view), room)]):
            digest.update(view[:n])
            room -= n
            if room == 0:
                md5s.append(digest.hexdigest())
                digest, room = hashlib.md5(usedforsecurity=False), part_size
    if room < part_size or not md5s:
        md5s.append(digest.hexdigest())
    return tuple(md5s)


def _use_helper_threads(partial: str) -> bool:
    """Whether a call may deflate and write in helper threads: when a CPU would otherwise be idle.

    On 2 idle CPUs they give 1.6-1.9x the MiB/s of one thread, but when every CPU is busy anyway they only cost:
    2-7% more CPU-seconds (cache misses, context switches). The pipeline runs one compression per CPU when it has the
    entries, each writing a partial archive into the staging directory: siblings written to within the last
    _SIBLING_IDLE seconds count as busy CPUs.
    """
    cpus = _usable_cpus()
    if not _HELPER_THREADS or cpus < 2:
        return False
    directory, own = os.path.split(partial)
    busy = 1
    now = time.time()
    try:
        with os.scandir(directory or ".") as entries:
            for entry in entries:
                if entry.name.endswith(PARTIAL_SUFFIX) and entry.name != own:
                    with contextlib.suppress(OSError):
                        busy += now - entry.stat(follow_symlinks=False).st_mtime < _SIBLING_IDLE
    except OSError:
        pass
    return busy < cpus


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _add_tree(
    tar: _TarWriter,
    root: str,
    name: str,
    skipped: list[str],
    identity: list[Member],
    listed: list[ArchivedMember] | None = None,
) -> tuple[str, int, int]:
    """Archive a directory's members in sorted order; returns (manifest SHA-256, bytes read, regular files).

    `identity` gets every member's identity, special files included (amgmt.local.identity); `listed` every archived
    member, in archive order."""
    manifest = hashlib.sha256()
    total = 0
    count = 0
    specials: list[tuple[bytes, os.stat_result]] = []
    members = sorted(_walk(root, name, skipped, entry=root, specials=specials), key=lambda m: m[0])
    strip = len(os.fsencode(name)) + 1  # "name/": identity paths are relative to the root
    identity.extend(Member.of(key[strip:], st) for key, st in specials)
    tar.expect(sum(st.st_size for _key, _member, _path, st in members if stat.S_ISREG(st.st_mode)))
    for key, member, path, st in members:
        mode = st.st_mode
        stamped = st  # the stat whose mtime the tar header holds
        if not stat.S_ISREG(mode):
            identity.append(Member.of(key[strip:], st))
        if stat.S_ISDIR(mode):
            tar.add(_tarinfo(member, st, tarfile.DIRTYPE))
            fields = (b"dir", b"0", b"")
        elif stat.S_ISLNK(mode):
            try:
                target = os.readlink(path)
            except OSError as exc:
                raise _read_error(exc, path, root) from exc
            info = _tarinfo(member, st, tarfile.SYMTYPE)
            info.linkname = target
            tar.add(info)
            fields = (b"symlink", b"0", os.fsencode(target))
        else:
            digest, size, after = _add_file(tar, member, path, root)
            identity.append(Member.of(key[strip:], after))
            stamped = after
            total += size
            count += 1
            fields = (b"file", str(size).encode("ascii"), digest.encode("ascii"))
        manifest.update(manifest_line(key, *fields))
        if listed is not None:
            text = key.decode("utf-8", "backslashreplace")  # as naming.display
            listed.append((text, fields[0].decode(), int(fields[1]), int(stamped.st_mtime)))
    return manifest.hexdigest(), total, count


def manifest_line(relpath: bytes, kind: bytes, size: bytes, digest: bytes) -> bytes:
    """One line of a directory's manifest (see compress_entry); copying.py recomputes it when copying."""
    return b"\0".join((relpath, kind, size, digest)) + b"\n"


def _walk(
    root: str,
    name: str,
    skipped: list[str],
    *,
    entry: str,
    specials: list[tuple[bytes, os.stat_result]] | None = None,
) -> list[tuple[bytes, str, str, os.stat_result]]:
    """(sort key, member name, path, lstat) of the root and everything below it; special files go to `skipped`
    (their names) and `specials` (sort key, lstat)."""
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
                if specials is not None:
                    specials.append((os.fsencode(member), st))
                continue
            members.append((os.fsencode(member), member, path, st))
    return members


def _add_file(tar: _TarWriter, member: str, path: str, entry: str) -> tuple[str, int, os.stat_result]:
    """Stream one regular file into the archive; returns (hex SHA-256, size, its fstat after the read). Fails if it
    changes meanwhile (size, mtime or ctime)."""
    try:
        # O_NOFOLLOW and O_NONBLOCK: a path swapped for a symlink or a FIFO since the walk must neither be followed
        # nor block the worker; the fstat below then reports it as changed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _changed(path, entry) from exc
        raise _read_error(exc, path, entry) from exc
    with open(fd, "rb", buffering=0) as f:
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise _changed(path, entry)
            os.set_blocking(fd, True)
        except OSError as exc:
            raise _read_error(exc, path, entry) from exc
        info = _tarinfo(member, before, tarfile.REGTYPE)
        info.size = before.st_size
        reader = _DigestingReader(f, path, entry, tar.clock)
        tar.add(info, reader)  # reads straight into the deflater's blocks
        try:
            grew = f.read(1)
            after = os.fstat(fd)
        except OSError as exc:
            raise _read_error(exc, path, entry) from exc
    if (
        grew
        or reader.size != before.st_size
        or (after.st_size, after.st_mtime_ns, after.st_ctime_ns)
        != (before.st_size, before.st_mtime_ns, before.st_ctime_ns)
    ):
        raise _changed(path, entry)
    return reader.sha256.hexdigest(), reader.size, after


def _tarinfo(member: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(member)
    info.type = kind
    info.mode = st.st_mode & 0o7777
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _DigestingReader:
    """Reads a file into the archive's blocks: hashes and counts what it reads; an early end means the file shrank."""

    def __init__(self, f: io.RawIOBase, path: str, entry: str, clock: cpu.StepClock) -> None:
        self._f = f
        self._path = path
        self._entry = entry
        self._clock = clock
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readinto(self, view: memoryview) -> int:
        """Fill all of `view` (short reads are retried); returns its length."""
        want = len(view)
        got = 0
        at = cpu.now()
        while got < want:
            try:
                n = self._f.readinto(view[got:])
            except OSError as exc:
                raise _read_error(exc, self._path, self._entry) from exc
            if not n:
                raise _changed(self._path, self._entry)
            got += n
        at = self._clock.add(cpu.READ_SOURCE, at)
        self.sha256.update(view)
        self._clock.add(cpu.SHA256_SOURCE, at)
        self.size += want
        return want


class _TarWriter:
    """Lays out tar members as tarfile.TarFile.addfile and close do, straight into the deflater's blocks."""

    def __init__(self, deflater: Deflater, clock: cpu.StepClock) -> None:
        self._deflater = deflater
        self.clock = clock
        self._block = deflater.take_block()
        self._block_size = len(self._block)  # every block of one deflater has the same size
        self._view = memoryview(self._block)
        self._fill = 0  # bytes of the current block in use
        self.offset = 0  # bytes of tar stream so far

    def add(self, info: tarfile.TarInfo, reader: _DigestingReader | None = None) -> None:
        """A member's header, then (for a regular file) info.size bytes from `reader`, padded to 512 bytes."""
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if reader is None:
            return
        remaining = info.size
        while remaining:
            room = self._view[self._fill : self._fill + remaining]  # never empty: a full block is passed on
            n = reader.readinto(room)
            remaining -= n
            self._advance(n)
        if tail := info.size % tarfile.BLOCKSIZE:
            self._write(_NUL_BLOCK[tail:])

    def expect(self, size: int) -> None:
        """Tell the deflater how many file bytes are coming (whether its threads would pay off)."""
        self._deflater.expected_size = size

    def close(self) -> None:
        """The two end-of-archive blocks, zeros up to a whole 10 KiB record, and the last block to the deflater."""
        self._write(_NUL_BLOCK * 2)
        if tail := self.offset % tarfile.RECORDSIZE:
            self._write(bytes(tarfile.RECORDSIZE - tail))
        if self._fill:
            self._deflater.put_block(self._block, self._fill)
        self._fill = 0

    def _write(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            take = min(end - pos, self._block_size - self._fill)
            self._view[self._fill : self._fill + take] = data[pos : pos + take]
            pos += take
            self._advance(take)

    def _advance(self, n: int) -> None:
        self._fill += n
        self.offset += n
        if self._fill == self._block_size:
            self._deflater.put_block(self._block, self._block_size)
            self._block = self._deflater.take_block()
            self._view = memoryview(self._block)
            self._fill = 0


def _read_error(exc: OSError, path: str, entry: str) -> CompressionError:
    if isinstance(exc, FileNotFoundError):
        return CompressionError(f"{printable(path)} vanished before it could be compressed", path=entry)
    return CompressionError(f"cannot read {printable(path)}: {exc.strerror or exc}", path=entry)


def _changed(path: str, entry: str) -> CompressionError:
    return CompressionError(f"{printable(path)} changed while being compressed", path=entry)
