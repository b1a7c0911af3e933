"""Where compression runs: anyio's worker processes, or a thread for a small file. Nothing else."""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Awaitable, Callable

import anyio
import anyio.to_process
import anyio.to_thread

from amgmt.local.archive import ArchiveResult, compress_entry

# (source, archive path, part size, compression level) -> the archive's digests
Compressor = Callable[[str, str, int, int], Awaitable[ArchiveResult]]
SMALL_FILE = 1024 * 1024  # packed in a thread of the main process, not in a worker process


def _is_small_file(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False  # let the worker report it
    return stat.S_ISREG(st.st_mode) and st.st_size <= SMALL_FILE


def process_pool_compressor(limiter: anyio.CapacityLimiter) -> Compressor:
    """Compression in anyio's worker processes (kept warm between entries), at most `limiter` at a time.

    A worker imports what unpickling the job needs (amgmt.local.archive, which stays free of anyio and boto), plus
    the file of the parent's `__main__` module unless it has none: the CLI removes it
    (amgmt.cli._spare_workers_the_cli)."""

    async def compress(source: str, archive_path: str, part_size: int, level: int) -> ArchiveResult:
        job = functools.partial(compress_entry, part_size=part_size, level=level)
        if _is_small_file(source):
            # A round trip to a worker process costs more than packing a small file: do it in a thread.
            return await anyio.to_thread.run_sync(job, source, archive_path, limiter=limiter)
        return await anyio.to_process.run_sync(job, source, archive_path, cancellable=True, limiter=limiter)

    return compress
