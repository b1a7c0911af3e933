"""Bytes of one object onto disk: concurrent ranged GETs written at their offsets, digests fed in order as they land,
and the verified file moved to its name. Decides nothing about what the bytes must be (verify.py) or where from.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Protocol

import aiofiles
import anyio
import anyio.to_thread
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from amgmt.errors import ConfigError, EntryError, first_error
from amgmt.naming import display
from amgmt.objects.verify import StreamDigests
from amgmt.parts import MiB, part_ranges
from amgmt.s3 import ByteBudget, ObjectHead, S3Bucket

MAX_RANGE_SIZE = 64 * MiB  # a larger MGMT_PART_SIZE is fine for uploads, but one GET's buffer stays this small
HASH_CHUNK = 1 * MiB


class DownloadReporter(Protocol):
    """Hooks the download calls as it goes; the CLI draws them, tests count them."""

    def restore_waiting(self, head: ObjectHead, waited: float, next_check: float) -> None: ...
    def transfer_started(self, total: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def transfer_done(self) -> None: ...


class QuietReporter:
    """Counts what a download reported, shows nothing."""

    def __init__(self) -> None:
        self.restore_polls = 0
        self.total = 0
        self.done = 0

    def restore_waiting(self, head: ObjectHead, waited: float, next_check: float) -> None:
        self.restore_polls += 1

    def transfer_started(self, total: int) -> None:
        self.total = total

    def advance(self, nbytes: int) -> None:
        self.done += nbytes

    def transfer_done(self) -> None:
        pass


def _create(path: str, flags: int) -> int:
    """The opener of the download file: created or truncated, mode 0o644 whatever the caller's umask allows."""
    return os.open(path, flags | os.O_CLOEXEC, 0o644)


async def _close(handle: AsyncBufferedIOBase) -> None:
    """Close, shielded: a cancelled aiofiles call does not stop its thread, and a buffered file's close waits for
    a write still under way on it, so no byte lands in the file after the transfer has returned or raised."""
    with anyio.CancelScope(shield=True):
        await handle.close()


async def _write_at(handle: AsyncBufferedIOBase, data: bytes | bytearray, offset: int, path: Path) -> None:
    """Write `data` at `offset` through this worker's own handle (its position is no other worker's), flushed so
    that the bytes are in the file, readable through any descriptor, when it returns."""
    try:
        await handle.seek(offset)
        await handle.write(data)
        await handle.flush()
    except OSError as exc:
        raise EntryError(
            f"cannot write {display(path)}: {exc.strerror or exc}", path=display(path), stage="download"
        ) from exc


def _hash_range(fd: int, offset: int, length: int, digests: StreamDigests, path: Path) -> None:
    end = offset + length
    try:
        while offset < end:
            chunk = os.pread(fd, min(HASH_CHUNK, end - offset), offset)
            if not chunk:
                raise EntryError(f"{display(path)} is shorter than what was written to it", stage="download")
            digests.update(chunk)
            offset += len(chunk)
    except OSError as exc:
        raise EntryError(f"cannot read back {display(path)}: {exc.strerror or exc}", stage="download") from exc


async def get_range_retrying(s3: S3Bucket, key: str, offset: int, length: int, *, etag: str | None) -> bytes:
    """One range; S3Bucket.get_range sends it again (the one RetryPolicy) while the failure is transient, a body
    cut short while it is read included."""
    return await s3.get_range(key, offset, length, if_match=etag)


async def fetch_to_file(
    s3: S3Bucket,
    key: str,
    path: Path,
    *,
    size: int,
    etag: str | None,
    digests: StreamDigests,
    range_size: int,
    workers: int,
    budget: ByteBudget,
    reporter: DownloadReporter,
) -> None:
    """Write the object into `path` with concurrent ranged GETs, each range at its offset, and feed `digests` in
    order as the ranges land (read back from the page cache, so hashing overlaps the transfer).

    Memory is bounded by `budget` (each range holds its size while its bytes are in memory), not by the object.
    `etag` makes every GET conditional, so a replaced object fails instead of mixing versions. The file is fsynced
    before return; on failure it is left for the caller to remove.
    """
    ranges = part_ranges(size, range_size) if size else []
    written = [anyio.Event() for _ in ranges]
    pending = iter(ranges)

    try:
        out = await aiofiles.open(path, "w+b", opener=_create)
    except OSError as exc:
        raise EntryError(f"cannot create {display(path)}: {exc.strerror or exc}", stage="download") from exc

    async def fetch_ranges() -> None:
        # Each worker takes the next range when it is free: N workers, not one task per range of a huge object.
        try:
            handle = await aiofiles.open(path, "r+b")
        except OSError as exc:
            raise EntryError(f"cannot write {display(path)}: {exc.strerror or exc}", stage="download") from exc
        try:
            for number, offset, length in pending:
                async with budget.hold(length):
                    data = await get_range_retrying(s3, key, offset, length, etag=etag)
                    await _write_at(handle, data, offset, path)
                    del data
                written[number - 1].set()
                reporter.advance(length)
        finally:
            await _close(handle)

    async def hash_in_order() -> None:
        # Reading back and hashing stay one thread call per range: the hashing must not run on the event loop.
        for (_, offset, length), done in zip(ranges, written, strict=True):
            await done.wait()
            await anyio.to_thread.run_sync(_hash_range, out.fileno(), offset, length, digests, path)

    try:
        reporter.transfer_started(size)
        try:
            await out.truncate(size)
        except OSError as exc:
            raise EntryError(f"cannot size {display(path)}: {exc.strerror or exc}", stage="download") from exc
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(min(workers, len(ranges))):
                    tg.start_soon(fetch_ranges)
                tg.start_soon(hash_in_order)
        except BaseExceptionGroup as group:
            raise first_error(group)  # noqa: B904 -- with its own cause (the S3 error), not `from None`, which would clear it
        try:
            await anyio.to_thread.run_sync(os.fsync, out.fileno())
        except OSError as exc:
            raise EntryError(f"cannot write {display(path)}: {exc.strerror or exc}", stage="download") from exc
        reporter.transfer_done()
    finally:
        await _close(out)


def place_file(partial: Path, final: Path, *, force: bool) -> None:
    """Move the verified download to its name; without `force` an existing file is never replaced, even one that
    appeared during the download (a hard link fails if the name exists, a rename would not)."""
    try:
        if force:
            os.replace(partial, final)
            return
        try:
            os.link(partial, final)
        except FileExistsError:
            raise ConfigError(
                f"{display(final)} exists (created during the download); use --force to replace it"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
            if os.path.lexists(final):  # a file system without hard links: check, then rename
                raise ConfigError(f"{display(final)} exists; use --force to replace it") from None
            os.rename(partial, final)
            return
        os.unlink(partial)
    except OSError as exc:
        raise EntryError(
            f"cannot move the download to {display(final)}: {exc.strerror or exc}", stage="download"
        ) from exc


def unlink_if_present(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
