"""Where compression runs: amgmt's own worker processes (amgmt.upload.worker), or a thread for a small file.

The pool is a scope (`async with CompressionPool(limiter) as compress`): workers are started on demand, kept warm
between entries, and at the scope's end closed (end of their stdin, then waited for) or, when the scope is
cancelled, killed and waited for. A worker is signalled only through a pidfd opened when it started, never through
`Popen.send_signal`, whose poll would reap a worker that already exited ahead of asyncio's child watcher (which then
logs "Unknown child process pid N"); only the child watcher ever reaps a worker."""

from __future__ import annotations

import functools
import os
import pickle
import signal
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import ByteSendStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream

from amgmt import cpu
from amgmt.errors import CompressionError
from amgmt.local.archive import ArchiveResult, compress_entry
from amgmt.naming import display
from amgmt.upload.worker import HEADER, compress_each

# (source, archive path, part size, compression level, part MD5s wanted) -> the archive's digests
Compressor = Callable[[str, str, int, int, bool], Awaitable[ArchiveResult]]
SMALL_FILE = 1024 * 1024  # packed in a thread of the main process, not in a worker process
CLOSE_GRACE = 5.0  # seconds a closed worker has to exit on its own before it is killed


def _is_small_file(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False  # let the worker report it
    return stat.S_ISREG(st.st_mode) and st.st_size <= SMALL_FILE


class _Worker:
    def __init__(self, process: Process) -> None:
        self.process = process
        self.requests: ByteSendStream = process.stdin  # type: ignore[assignment]
        self.replies = BufferedByteReceiveStream(process.stdout)  # type: ignore[arg-type]
        try:
            self.pidfd: int | None = os.pidfd_open(process.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3, or it already exited (and was reaped)
            self.pidfd = None

    async def call(self, function: Callable[..., Any], *args: object) -> tuple[bool, Any]:
        """(True, the function's result) or (False, the exception it raised in the worker)."""
        job = pickle.dumps((function, args), pickle.HIGHEST_PROTOCOL)
        await self.requests.send(HEADER.pack(len(job)) + job)
        (size,) = HEADER.unpack(await self.replies.receive_exactly(HEADER.size))
        reply: tuple[bool, Any] = pickle.loads(await self.replies.receive_exactly(size))
        return reply

    def kill(self) -> None:
        if self.process.returncode is not None:
            return
        if self.pidfd is None:
            self.process.kill()
            return
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it exited on its own; the child watcher reaps it

    async def close(self, *, kill: bool) -> None:
        """Ends the worker and waits until the child watcher has reaped it."""
        with anyio.CancelScope(shield=True):
            if kill:
                self.kill()
            try:
                await self.requests.aclose()  # end of its stdin: an idle worker exits
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            with anyio.move_on_after(CLOSE_GRACE):
                await self.process.wait()
            if self.process.returncode is None:
                self.kill()
                await self.process.wait()
            await self.process.aclose()
            if self.pidfd is not None:
                os.close(self.pidfd)
                self.pidfd = None


class CompressionPool:
    """A Compressor: compression in worker processes of amgmt's own (kept warm between entries), at most
    `limiter` at a time; a small file is packed in a thread instead (a round trip to a worker costs more)."""

    def __init__(self, limiter: anyio.CapacityLimiter) -> None:
        self.limiter = limiter
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._closed = False

    async def __aenter__(self) -> CompressionPool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose(kill=exc_type is not None)

    async def aclose(self, *, kill: bool = False) -> None:
        self._closed = True
        workers, self._idle = self._idle + list(self._busy), []
        self._busy.clear()
        for worker in workers:
            await worker.close(kill=kill)

    async def __call__(
        self, source: str, archive_path: str, part_size: int, level: int, md5: bool = True
    ) -> ArchiveResult:
        job = functools.partial(compress_entry, part_size=part_size, level=level, md5=md5)
        if _is_small_file(source):
            result: ArchiveResult = await anyio.to_thread.run_sync(job, source, archive_path, limiter=self.limiter)
            cpu.LEDGER.charge(cpu.PACKED_IN_THREADS, sum(result.cpu_seconds.values()))
        else:
            result = await self.run(job, source, archive_path, describe=f"packing {display(source)}")
        cpu.LEDGER.merge(result.cpu_seconds)  # the pass's steps, for the benchmark's breakdown
        return result

    async def compress_many(self, jobs: list[tuple[str, str, int, int, bool]]) -> list[ArchiveResult | BaseException]:
        """Many small entries packed in one job of one worker (one round trip for all of them, off the main
        process's CPU): for each job (source, archive path, part size, level, part MD5s), its result or its own
        exception."""
        replies: list[tuple[bool, Any]] = await self.run(compress_each, jobs, describe=f"packing {len(jobs)} entries")
        for ok, value in replies:
            if ok:
                cpu.LEDGER.merge(value.cpu_seconds)  # the pass's steps, for the benchmark's breakdown
        return [value for _, value in replies]

    async def run(self, function: Callable[..., Any], *args: object, describe: str) -> Any:
        """function(*args) in a worker (a picklable function of a module the worker can import); its exception
        is raised here. A worker that dies mid-job is a CompressionError; a cancelled job's worker is killed."""
        async with self.limiter:
            worker = self._idle.pop() if self._idle else await self._start()
            self._busy.add(worker)
            try:
                ok, value = await worker.call(function, *args)
            except BaseException as exc:  # cancelled mid-job, or the worker died: it is not reused
                self._busy.discard(worker)
                await worker.close(kill=True)
                if isinstance(exc, (anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead)):
                    raise CompressionError(f"the compression worker died while {describe}") from exc
                raise
            self._busy.discard(worker)
            if self._closed:
                await worker.close(kill=False)
            else:
                self._idle.append(worker)
        if not ok:
            raise value
        return value

    async def _start(self) -> _Worker:
        if self._closed:
            raise RuntimeError("the compression pool is closed")
        process = await anyio.open_process(
            [sys.executable, "-m", "amgmt.upload.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
        )
        return _Worker(process)
