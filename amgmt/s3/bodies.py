"""Request bodies: the byte budget all uploads of a run share, and reading a part of the staging archive into the
buffer that is sent. Must not send anything: the callers make the requests."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from amgmt import cpu
from amgmt.errors import UploadError

OFF_LOOP_BYTES = 1024 * 1024  # bodies from this size are hashed in a worker thread
_R = TypeVar("_R")


class ByteBudget:
    """The bytes of request bodies all uploads of a run may hold in memory at once (parts and single PUTs alike).

    A body larger than the whole budget waits until nothing else is held, then goes alone.

    With `small_body` and `small_limit`, bodies of at most `small_body` bytes (the single PUTs of the small-entry
    lane) hold from a budget of their own of `small_limit` bytes instead: in the shared one, each would wait behind
    the next part of a large upload (bodies reserve in arrival order), which waits for a whole part's worth to come
    free, so a large upload in flight let through a few small entries per part (measured: none of 200 small
    entries ended while a large one with slow parts was sending).
    """

    def __init__(self, limit: int, *, small_body: int = 0, small_limit: int = 0) -> None:
        if limit <= 0:
            raise ValueError("the budget must be positive")
        self.limit = limit
        self.held = 0
        self.peak = 0
        self._changed = anyio.Condition()
        self._turn = anyio.Lock()
        self._small_body = small_body
        self.small = ByteBudget(small_limit) if small_body > 0 and small_limit > 0 else None

    def hold(self, nbytes: int) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold `nbytes` of the budget (of the small bodies' own, for a small body) while the block runs."""
        if self.small is not None and nbytes <= self._small_body:
            return self.small.hold(nbytes)
        return self._hold(nbytes)

    @contextlib.asynccontextmanager
    async def _hold(self, nbytes: int) -> AsyncIterator[None]:
        need = min(max(nbytes, 1), self.limit)
        # Bodies reserve in arrival order (anyio's Lock is fair): a large one cannot be starved by small ones.
        async with self._turn, self._changed:
            while self.held + need > self.limit:
                await self._changed.wait()
            self.held += need
            self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with self._changed:
                    self.held -= need
                    self._changed.notify_all()


class PartBody(bytearray):
    """A part's bytes as sent: a bytearray to botocore (validated, hashed and re-sent on a retry as it is) whose
    slices are memoryviews. aiohttp slices a body to its Content-Length before writing it, which for a plain
    bytearray copies the whole part on the event loop thread (measured with `amgmt benchmark --repeat 3` on
    radosgw, media set: the main process 4.3 -> 3.2 CPU-s per 1.05 GiB, 135 -> 157 MiB/s)."""

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return memoryview(self)[index]
        return super().__getitem__(index)


@dataclass(frozen=True)
class FileRange:
    """A part of the staging archive sent from the file itself (os.sendfile, see direct.py): no user-space copy.
    The file is open (open_file_range) until its owner closes it."""

    file: io.FileIO
    offset: int
    length: int

    @property
    def path(self) -> str:
        return str(self.file.name)


def open_file_range(path: str, offset: int, length: int) -> FileRange:
    """The byte range of the staging archive, its file open and checked to hold it, its pages asked for ahead
    (POSIX_FADV_WILLNEED: the kernel reads them in while the request starts); UploadError, as read_range, when the
    archive was removed or is shorter. Quick enough for the event loop: an open and an fstat."""
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by the caller, or below)
    except OSError as exc:
        raise UploadError(f"cannot read the staging archive {path}: {exc.strerror or exc}") from exc
    try:
        size = os.fstat(f.fileno()).st_size
        if size < offset + length:
            raise UploadError(f"{path}: staging archive is shorter than recorded ({size} bytes)")
        os.posix_fadvise(f.fileno(), offset, length, os.POSIX_FADV_WILLNEED)
    except BaseException:
        f.close()
        raise
    return FileRange(f, offset, length)


def read_file_range(path: str, offset: int, length: int, body_type: type[PartBody] = PartBody) -> bytearray:
    started = cpu.now()
    try:
        return _read_file_range(path, offset, length, body_type)
    finally:
        cpu.LEDGER.add(cpu.READ_PARTS, started)


def _read_file_range(path: str, offset: int, length: int, body_type: type[PartBody]) -> bytearray:
    buffer = body_type(length)
    view = memoryview(buffer)
    got = 0
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while got < length:  # one read returns at most ~2 GiB on Linux
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    view.release()
    return buffer if got == length else bytearray(memoryview(buffer)[:got])


async def read_range(path: str, offset: int, length: int, body_type: type[PartBody] = PartBody) -> bytearray:
    """A byte range of a file, read in a worker thread straight into the buffer that is sent.

    A bytearray, not bytes: botocore wraps a `bytes` body in a BytesIO, and aiohttp then copies that whole buffer
    (BytesIO.getbuffer unshares it) on the event loop thread; a bytearray goes out as it is. Open, read and close
    happen in one thread call, which anyio waits for even when cancelled, so no file is left open.
    """
    try:
        if body_type is PartBody:
            data = await anyio.to_thread.run_sync(read_file_range, path, offset, length)
        else:  # a body sent under MGMT_BWLIMIT (s3/bandwidth.py)
            data = await anyio.to_thread.run_sync(read_file_range, path, offset, length, body_type)
    except OSError as exc:  # the staging archive was removed or became unreadable under the upload
        raise UploadError(f"cannot read the staging archive {path}: {exc.strerror or exc}") from exc
    if len(data) != length:
        raise UploadError(f"{path}: staging archive is shorter than recorded ({offset + len(data)} bytes)")
    return data


async def off_loop(function: Callable[[bytearray], _R], body: bytearray) -> _R:
    """`function(body)` (a digest) in a worker thread when the body is big enough for it to hold up the event loop
    (hashlib and zlib release the GIL), else right here (a thread round trip costs more than hashing a small
    body). Its CPU time goes to amgmt.cpu's HASH_BODIES."""
    if len(body) < OFF_LOOP_BYTES:
        return _charged(function, body)
    return await anyio.to_thread.run_sync(_charged, function, body)


def _charged(function: Callable[[bytearray], _R], body: bytearray) -> _R:
    started = cpu.now()
    try:
        return function(body)
    finally:
        cpu.LEDGER.add(cpu.HASH_BODIES, started)
