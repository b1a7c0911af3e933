"""The staging archive file as it is written: its SHA-256, part MD5s and part CRC64NVMEs taken as the bytes pass, a
partial name until it is complete, CompressionError for a full or failing staging dir.

Runs in the compression worker processes (imports no anyio, S3 or store); reads nothing back.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os

from amgmt import checksums, cpu
from amgmt.errors import CompressionError
from amgmt.naming import PARTIAL_SUFFIX
from amgmt.text import printable

ARCHIVE_MODE = 0o600
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class ArchiveFile:
    """The staging archive of `entry` being written: hashes it and splits MD5s and CRC64NVMEs at part boundaries
    as bytes pass, and writes it to ARCHIVE.partial, renamed into place by finish().

    The CRC64NVME of each part is what its upload sends for the server to check (x-amz-checksum-crc64nvme); the
    whole archive's is combined from them (checksums.combine), so each byte goes through the CRC once. The part
    MD5s only with `md5` (the endpoint needs Content-MD5 and the ETag: see upload/pipeline.py); without it
    part_md5s is empty. `clock` gets the CPU time of each digest and of the writes (amgmt.cpu)."""

    def __init__(self, out: io.RawIOBase, part_size: int, archive_path: str, entry: str, *, md5: bool = True) -> None:
        self._file = out
        self._out: io.RawIOBase | None = out
        self._archive_path = archive_path
        self.partial = archive_path + PARTIAL_SUFFIX
        self._entry = entry
        self._part_size = part_size
        self._room = part_size  # bytes left in the current part
        self._with_md5 = md5
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._md5s: list[str] = []
        self._crc = checksums.RunningCrc(checksums.CRC64NVME)
        self._crcs: list[str] = []
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.clock = cpu.StepClock()

    @classmethod
    def create(cls, archive_path: str, *, part_size: int, entry: str, md5: bool = True) -> ArchiveFile:
        """A new, empty partial archive (mode 0600; one left by a killed worker is replaced), unbuffered: the
        deflater hands over blocks of about a block's size."""
        partial = archive_path + PARTIAL_SUFFIX
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)  # left by a killed worker
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, ARCHIVE_MODE)
        except OSError as exc:
            raise write_error(exc, archive_path, entry) from exc
        try:
            out = open(fd, "wb", buffering=0)
        except BaseException:
            os.close(fd)
            os.unlink(partial)
            raise
        return cls(out, part_size, archive_path, entry, md5=md5)

    def digest(self, data: bytes) -> None:
        """Add to the archive's SHA-256: every byte, in order (apart from write: on another thread)."""
        started = cpu.now()
        self.sha256.update(data)
        self.clock.add(cpu.SHA256_ARCHIVE, started)

    def write(self, data: bytes) -> int:
        """Add to the part MD5s and CRC64NVMEs and write to the file."""
        n = len(data)
        clock = self.clock
        at = cpu.now()
        if n <= self._room:  # the usual case: the chunk stays inside the current part
            if self._with_md5:
                self._md5.update(data)
                at = clock.add(cpu.MD5, at)
            self._crc.update(data)
            at = clock.add(cpu.CRC64NVME, at)
            self._room -= n
        else:
            at = self._split(data, at)
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
                raise write_error(exc, self._archive_path, self._entry) from exc
            finally:
                clock.add(cpu.WRITE_STAGING, at)
        return n

    def _split(self, data: bytes, at: float) -> float:
        view = memoryview(data)
        pos, end = 0, len(view)
        clock = self.clock
        while pos < end:
            if self._room == 0:  # close a full part only when more bytes arrive: no empty trailing part
                if self._with_md5:
                    self._md5s.append(self._md5.hexdigest())
                    self._md5 = hashlib.md5(usedforsecurity=False)
                self._crcs.append(self._crc.encoded)
                self._crc = checksums.RunningCrc(checksums.CRC64NVME)
                self._room = self._part_size
            take = min(self._room, end - pos)
            if self._with_md5:
                self._md5.update(view[pos : pos + take])
                at = clock.add(cpu.MD5, at)
            self._crc.update(view[pos : pos + take])
            at = clock.add(cpu.CRC64NVME, at)
            self._room -= take
            pos += take
        return at

    @property
    def part_md5s(self) -> tuple[str, ...]:
        """The hex MD5 of each part, or () when made without MD5s."""
        if not self._with_md5:
            return ()
        if self._room < self._part_size or not self._md5s:
            return (*self._md5s, self._md5.hexdigest())
        return tuple(self._md5s)

    @property
    def part_crc64nvmes(self) -> tuple[str, ...]:
        """The header value of each part's CRC64NVME (the same parts as part_md5s)."""
        if self._room < self._part_size or not self._crcs:
            return (*self._crcs, self._crc.encoded)
        return tuple(self._crcs)

    @property
    def crc64nvme(self) -> str:
        """The whole archive's CRC64NVME (header value), combined from its parts'."""
        parts = self.part_crc64nvmes
        sizes = [self._part_size] * (len(parts) - 1) + [self.size - self._part_size * (len(parts) - 1)]
        return checksums.combine(checksums.CRC64NVME, parts, sizes)

    def finish(self) -> None:
        """Close the file and give it its final name."""
        out = self._out
        assert out is not None
        try:
            out.close()  # where a file system reports a full disk only now (NFS), it is still caught
            os.replace(self.partial, self._archive_path)
        except OSError as exc:
            raise write_error(exc, self._archive_path, self._entry) from exc

    def discard(self) -> None:
        """Drop all later writes (the file stays open until close_quietly)."""
        self._out = None

    def remove(self) -> None:
        """Close and delete the partial file, after a failure."""
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.partial)


def write_error(exc: OSError, archive_path: str, entry: str) -> CompressionError:
    staging = os.path.dirname(os.path.abspath(archive_path))
    if exc.errno in _NO_SPACE:
        return CompressionError(f"no space left on device in staging dir {printable(staging)}", path=entry)
    return CompressionError(f"cannot write {printable(archive_path)}: {exc.strerror or exc}", path=entry)
