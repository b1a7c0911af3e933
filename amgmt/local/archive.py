"""Tar.gz creation for one entry, run in a worker process: a deterministic archive plus its digests, in one pass.

Must not import anyio, aioboto3, botocore or aiosqlite, and never returns file contents (results cross a pickle).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import queue
import stat
import struct
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from isal import isal_zlib

from amgmt.text import printable
from amgmt.errors import CompressionError
from amgmt.local.identity import Identity, Member
from amgmt.parts import MiB

PARTIAL_SUFFIX = ".partial"
ARCHIVE_MODE = 0o600

# The tar stream is deflated in blocks of this size (see _Deflater). igzip is much faster on big inputs than on
# tarfile's 16 KiB copies (random data: ~1.9 CPU-s/GiB at 16 KiB, ~0.9 at 1 MiB; 2 and 4 MiB measured no better);
# the block is also the read size. A call holds at most _BLOCKS blocks plus about as much compressed output.
_BLOCK_SIZE = 1 * MiB
_BLOCKS = 3  # one being filled, one queued, one being deflated
_QUEUED_OUTPUTS = 1  # deflated blocks waiting for the writer thread
# Deflate and write in two helper threads when a CPU is to spare (see _use_helper_threads); False: never. The bytes
# written are the same either way.
_HELPER_THREADS = True
_SIBLING_IDLE = 10.0  # seconds: a partial archive written to less recently than this is not being compressed
_THREADS_MIN_SIZE = 8 * MiB  # source bytes below which the threads' start and drain cost more than they save
_WINDOW = 32 * 1024  # deflate's history: each block is compressed with the previous block's last 32 KiB as dictionary
_FINAL_BLOCK = isal_zlib.compress(b"", wbits=-isal_zlib.MAX_WBITS)  # an empty last deflate block
_NUL_BLOCK = bytes(tarfile.BLOCKSIZE)
# A block is stored (deflate's uncompressed block type) instead of compressed when samples of it do not shrink:
# video, photos and archives are already compressed, and igzip spends ~1 CPU-s/GiB finding that out. Two samples
# of _SAMPLE bytes (start and middle) cost ~0.1 ms per 1 MiB block; the full attempt ~1 ms.
_SAMPLE = 32 * 1024
_STORE_ABOVE = 0.98  # compressed/original of the samples above which the block is stored
_STORED_MAX = 0xFFFF  # bytes in one stored deflate block
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
    source_identity: Identity  # what the source was made of when packed (amgmt.local.identity), special files included


def compress_entry(source: str, archive_path: str, *, part_size: int, level: int = 1) -> ArchiveResult:
    """Write `source` (a regular file or a directory) as a deterministic tar.gz at `archive_path`.

    The archive holds one top-level member, the basename of `source`; a directory is walked recursively without
    following symlinks. Symlinks are stored as symlinks; FIFOs, sockets and devices are left out and listed in
    `skipped`. The same unchanged source always gives the same bytes: members sorted by their file-system bytes,
    uid/gid 0 with empty names, mtime in whole seconds, PAX format (the tar stream is byte for byte what tarfile
    writes), a gzip header with mtime 0 and no file name. The tar stream is deflated in fixed 1 MiB blocks, each
    ending on a byte boundary (a sync flush) and primed with the 32 KiB before it, so the bytes do not depend on
    threads or timing; they do depend on the isal version (and on `_BLOCK_SIZE`), so a resume after an upgrade must
    compare the part MD5s before reusing parts.
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
    2.55 -> 2.08 s). A byte lost on the way back is caught by the part MD5s (Content-MD5, then the ETag). On any
    failure, KeyboardInterrupt included, the partial file is removed. Raises CompressionError
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
        raise CompressionError(f"cannot archive {printable(source)}: it has no usable base name", path=source)
    try:
        source_stat = os.lstat(source)
    except OSError as exc:
        raise _read_error(exc, source, source) from exc
    is_directory = stat.S_ISDIR(source_stat.st_mode)
    if not (is_directory or stat.S_ISREG(source_stat.st_mode)):
        kind = "a symlink" if stat.S_ISLNK(source_stat.st_mode) else "not a regular file or directory"
        raise CompressionError(f"cannot archive {printable(source)}: it is {kind}", path=source)

    partial = archive_path + PARTIAL_SUFFIX
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)  # left by a killed worker
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, ARCHIVE_MODE)
    except OSError as exc:
        raise _write_error(exc, archive_path, source) from exc

    try:
        # Unbuffered: the deflater hands over blocks of about _BLOCK_SIZE. Closed by sink.finish() or below.
        out = open(fd, "wb", buffering=0)
    except BaseException:
        os.close(fd)
        os.unlink(partial)
        raise
    sink = _DigestingWriter(out, part_size, archive_path, source)
    deflater: _Deflater | None = None
    try:
        deflater = _Deflater(sink, level, use_threads=lambda: _use_helper_threads(partial))
        deflater.start()
        tar = _TarWriter(deflater)
        skipped: list[str] = []
        identity: list[Member] = []
        if is_directory:
            source_sha256, source_size, file_count = _add_tree(tar, source, name, skipped, identity)
        else:
            tar.expect(source_stat.st_size)
            source_sha256, source_size, after = _add_file(tar, name, source, source)
            identity.append(Member.of(b"", after))
            file_count = 1
        tar.close()  # end-of-archive blocks, the last block to the deflater
        deflater.finish()  # every block written, then the deflate tail and gzip trailer
        sink.finish()
        os.replace(partial, archive_path)
    except BaseException as exc:
        sink.discard()
        if deflater is not None:
            deflater.abort()  # its threads end before the file is closed
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
        source_identity=Identity.of_members(identity),
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
    tar: _TarWriter, root: str, name: str, skipped: list[str], identity: list[Member]
) -> tuple[str, int, int]:
    """Archive a directory's members in sorted order; returns (manifest SHA-256, bytes read, regular files).

    `identity` gets every member's identity, special files included (amgmt.local.identity)."""
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
            total += size
            count += 1
            fields = (b"file", str(size).encode("ascii"), digest.encode("ascii"))
        manifest.update(manifest_line(key, *fields))
    return manifest.hexdigest(), total, count


def manifest_line(relpath: bytes, kind: bytes, size: bytes, digest: bytes) -> bytes:
    """One line of a directory's manifest (see compress_entry); completed.py recomputes it when copying."""
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
        reader = _DigestingReader(f, path, entry)
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

    def __init__(self, f: io.RawIOBase, path: str, entry: str) -> None:
        self._f = f
        self._path = path
        self._entry = entry
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readinto(self, view: memoryview) -> int:
        """Fill all of `view` (short reads are retried); returns its length."""
        want = len(view)
        got = 0
        while got < want:
            try:
                n = self._f.readinto(view[got:])
            except OSError as exc:
                raise _read_error(exc, self._path, self._entry) from exc
            if not n:
                raise _changed(self._path, self._entry)
            got += n
        self.sha256.update(view)
        self.size += want
        return want


class _TarWriter:
    """Lays out tar members as tarfile.TarFile.addfile and close do, straight into the deflater's blocks."""

    def __init__(self, deflater: _Deflater) -> None:
        self._deflater = deflater
        self._block = deflater.take_block()
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
            take = min(end - pos, _BLOCK_SIZE - self._fill)
            self._view[self._fill : self._fill + take] = data[pos : pos + take]
            pos += take
            self._advance(take)

    def _advance(self, n: int) -> None:
        self._fill += n
        self.offset += n
        if self._fill == _BLOCK_SIZE:
            self._deflater.put_block(self._block, _BLOCK_SIZE)
            self._block = self._deflater.take_block()
            self._view = memoryview(self._block)
            self._fill = 0


class _Deflater:
    """Turns the tar stream's blocks into one gzip member written to the sink, in order.

    Block i is deflated on its own with the last 32 KiB of block i-1 as preset dictionary and a sync flush at its
    end (as isal's igzip_threaded does); the output depends only on the block contents. Threaded (for a source of
    at least _THREADS_MIN_SIZE, if use_threads() says so at the first full block), the caller fills blocks (reads,
    source SHA-256), a deflate thread compresses them and hashes the output (SHA-256), and a writer thread takes
    the part MD5s and writes the file: on random data the three take about 0.8, 1.7 and 1.7 CPU-s/GiB, and hashlib
    and isal release the GIL. Otherwise all of it runs inline. Blocks come from a fixed pool, which bounds memory
    and makes the caller wait when the threads fall behind. After an error in a thread, the threads drop their work
    until stopped, and the next take_block, put_block or finish raises it.
    """

    def __init__(self, sink: _DigestingWriter, level: int, *, use_threads: Callable[[], bool]) -> None:
        self._sink = sink
        # Output room for one block: deflate stores incompressible data with a few bytes per 64 KiB at levels 1-3;
        # level 0 never stores, and uses at most 15 bits per byte.
        room = 2 * _BLOCK_SIZE + 500 if level == 0 else _BLOCK_SIZE + max(_BLOCK_SIZE // 10, 500)
        # isal's block compressor for igzip_threaded (private, but in every isal from 1.6 on): deflate with a preset
        # dictionary and a sync flush, into a reused buffer, with the CRC32 of the input, outside the GIL.
        self._compressor = isal_zlib._ParallelCompress(buffersize=room, level=level)
        self._level = level
        self._header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + (b"\x04" if level == 0 else b"\x00") + b"\xff"
        self._crc = 0
        self._length = 0
        self._window = b""  # the dictionary for the next block
        self._use_threads: Callable[[], bool] | None = use_threads  # asked at the first full block
        self.expected_size = 0  # source bytes the caller expects to pass; below _THREADS_MIN_SIZE, no threads
        self._workers: list[threading.Thread] = []
        self._error: BaseException | None = None
        self._failed = False
        self._stopped = False
        self._blocks = [_take_spare_block()]  # every block this deflater holds
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._to_deflate: queue.SimpleQueue[tuple[bytearray, int, bytes] | None] = queue.SimpleQueue()
        self._to_write: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUED_OUTPUTS)

    def start(self) -> None:
        self._sink.digest(self._header)
        self._sink.write(self._header)

    def take_block(self) -> bytearray:
        """An unused block for the caller to fill."""
        if not self._workers:
            return self._blocks[0]
        block = self._free.get()
        self._check()
        return block

    def put_block(self, block: bytearray, length: int) -> None:
        """The next `length` bytes of the stream, in `block`, which is the deflater's until take_block returns it."""
        data = memoryview(block)[:length]
        window, self._window = self._window, bytes(data[-_WINDOW:])
        if not self._workers:
            if length == _BLOCK_SIZE and self._use_threads and not self._stopped:  # a short block is the last one
                if self.expected_size >= _THREADS_MIN_SIZE and self._use_threads():
                    self._start_threads()
                self._use_threads = None
            if not self._workers:
                self._sink.write(self._deflate(data, window))
                return
        self._to_deflate.put((block, length, window))
        self._check()

    def finish(self) -> None:
        """Wait for every block, then write the deflate tail and the gzip trailer."""
        self._stop()
        self._check()
        tail = _FINAL_BLOCK + struct.pack("<II", self._crc, self._length & 0xFFFFFFFF)
        self._sink.digest(tail)
        self._sink.write(tail)

    def abort(self) -> None:
        """Drop the work still queued and wait for the threads to end (no more writes to the sink after this)."""
        self._failed = True
        self._stop()

    def _deflate(self, data: memoryview, window: bytes) -> bytes:
        if self._level and _incompressible(data):
            compressed, crc = _stored_blocks(data), isal_zlib.crc32(data)
        else:
            compressed, crc = self._compressor.compress_and_crc(data, window)
        self._crc = isal_zlib.crc32_combine(self._crc, crc, len(data))
        self._length += len(data)
        self._sink.digest(compressed)
        return compressed

    def _start_threads(self) -> None:
        for _ in range(_BLOCKS - 1):
            block = _take_spare_block()
            self._blocks.append(block)
            self._free.put(block)
        for target in (self._deflate_loop, self._write_loop):
            worker = threading.Thread(target=target, name=f"amgmt-{target.__name__[1:-5]}", daemon=True)
            self._workers.append(worker)  # before start(): _stop() joins every thread that started
            worker.start()

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._to_deflate.put(None)  # the deflate thread passes it on to the writer thread
        for worker in self._workers:
            if worker.ident is not None:
                worker.join()
        _return_spare_blocks(self._blocks)  # no thread uses them now
        self._blocks = []

    def _deflate_loop(self) -> None:
        while (item := self._to_deflate.get()) is not None:
            block, length, window = item
            compressed = b""
            if not self._failed:
                try:
                    compressed = self._deflate(memoryview(block)[:length], window)
                except BaseException as exc:
                    self._fail(exc)
            self._free.put(block)
            self._to_write.put(compressed)
        self._to_write.put(None)

    def _write_loop(self) -> None:
        while (compressed := self._to_write.get()) is not None:
            if self._failed:
                continue
            try:
                self._sink.write(compressed)
            except BaseException as exc:
                self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._failed = True

    def _check(self) -> None:
        if self._error is not None:
            raise self._error


def _incompressible(data: memoryview) -> bool:
    """Whether deflate would not shrink this block, judged from two samples (start and middle); only on content."""
    if len(data) < 4 * _SAMPLE:
        return False
    middle = len(data) // 2
    for sample in (data[:_SAMPLE], data[middle : middle + _SAMPLE]):
        if len(isal_zlib.compress(sample, level=1, wbits=-isal_zlib.MAX_WBITS)) < _STORE_ABOVE * _SAMPLE:
            return False
    return True


def _stored_blocks(data: memoryview) -> bytes:
    """`data` as non-final stored deflate blocks (RFC 1951 3.2.4), starting on a byte boundary as every block here
    does (each compressed block ends with a sync flush): per 65,535 bytes, a header byte (BFINAL 0, BTYPE 00,
    padding), LEN and its one's complement NLEN, then the bytes as they are."""
    pieces: list[bytes | memoryview] = []
    for start in range(0, len(data), _STORED_MAX):
        chunk = data[start : start + _STORED_MAX]
        pieces.append(struct.pack("<BHH", 0, len(chunk), len(chunk) ^ 0xFFFF))
        pieces.append(chunk)
    return b"".join(pieces)


# Blocks kept between calls (a worker process compresses one entry after another): a fresh 1 MiB block costs
# ~0.5 ms of page faults, more than compressing a small file.
_spare_blocks: list[bytearray] = []
_spare_lock = threading.Lock()


def _take_spare_block() -> bytearray:
    with _spare_lock:
        if _spare_blocks and len(_spare_blocks[-1]) == _BLOCK_SIZE:
            return _spare_blocks.pop()
    return bytearray(_BLOCK_SIZE)


def _return_spare_blocks(blocks: list[bytearray]) -> None:
    with _spare_lock:
        room = _BLOCKS - len(_spare_blocks)
        _spare_blocks.extend(block for block in blocks[:room] if len(block) == _BLOCK_SIZE)


class _DigestingWriter:
    """Where the archive goes: hashes it and splits MD5s at part boundaries as bytes pass, and writes it."""

    def __init__(self, out: io.RawIOBase, part_size: int, archive_path: str, entry: str) -> None:
        self._out: io.RawIOBase | None = out
        self._archive_path = archive_path
        self._entry = entry
        self._part_size = part_size
        self._room = part_size  # bytes left in the current part
        self._md5 = hashlib.md5()
        self._md5s: list[str] = []
        self.sha256 = hashlib.sha256()
        self.size = 0

    def digest(self, data: bytes) -> None:
        """Add to the archive's SHA-256: every byte, in order (apart from write: on another thread)."""
        self.sha256.update(data)

    def write(self, data: bytes) -> int:
        """Add to the part MD5s and write to the file."""
        n = len(data)
        if n <= self._room:  # the usual case: the chunk stays inside the current part
            self._md5.update(data)
            self._room -= n
        else:
            self._split(data)
        self.size += n
        out = self._out
        if out is not None:
            try:
                view = memoryview(data)
                written = 0
                while written < n:  # a raw file may take less than all
                    step = out.write(view[written:])
                    if not step:
                        raise OSError(errno.EIO, "the archive file took no bytes")
                    written += step
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

    @property
    def part_md5s(self) -> tuple[str, ...]:
        if self._room < self._part_size or not self._md5s:
            return (*self._md5s, self._md5.hexdigest())
        return tuple(self._md5s)

    def finish(self) -> None:
        out = self._out
        assert out is not None
        try:
            out.close()  # where a file system reports a full disk only now (NFS), it is still caught
        except OSError as exc:
            raise _write_error(exc, self._archive_path, self._entry) from exc

    def discard(self) -> None:
        """Drop all later writes."""
        self._out = None


def _read_error(exc: OSError, path: str, entry: str) -> CompressionError:
    if isinstance(exc, FileNotFoundError):
        return CompressionError(f"{printable(path)} vanished before it could be compressed", path=entry)
    return CompressionError(f"cannot read {printable(path)}: {exc.strerror or exc}", path=entry)


def _changed(path: str, entry: str) -> CompressionError:
    return CompressionError(f"{printable(path)} changed while being compressed", path=entry)


def _write_error(exc: OSError, archive_path: str, entry: str) -> CompressionError:
    staging = os.path.dirname(os.path.abspath(archive_path))
    if exc.errno in _NO_SPACE:
        return CompressionError(f"no space left on device in staging dir {printable(staging)}", path=entry)
    return CompressionError(f"cannot write {printable(archive_path)}: {exc.strerror or exc}", path=entry)
