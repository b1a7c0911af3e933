"""A compression worker process (`python -m amgmt.upload.worker`): runs the jobs its parent sends, one at a time.

The wire, both ways, is frames of an 8-byte big-endian length and a pickle: the parent sends `(function, args)`,
the worker answers `(True, result)` or `(False, exception)`. End of its stdin: the worker exits 0. It imports only
what unpickling a job imports (amgmt.local.archive), and ignores SIGINT: a Ctrl-C in a terminal reaches the whole
process group, and the parent, not each worker, decides what an interruption stops (amgmt.upload.compressor)."""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from typing import BinaryIO

HEADER = struct.Struct(">Q")


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def read_frame(stream: BinaryIO) -> bytes | None:
    """One frame's payload; None at a clean end of the stream (before a frame starts)."""
    header = stream.read(HEADER.size)
    if not header:
        return None
    if len(header) < HEADER.size:
        raise EOFError("the stream ended inside a frame header")
    (size,) = HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("the stream ended inside a frame")
    return payload


def _answer(job: bytes) -> bytes:
    try:
        function, args = pickle.loads(job)
        reply: tuple[bool, object] = (True, function(*args))
    except Exception as exc:  # the job's own error goes back to the parent, which raises it there
        reply = (False, exc)
    try:
        return pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # e.g. an exception that does not pickle: its text still does
        return pickle.dumps((False, RuntimeError(f"{type(exc).__name__}: {exc}")), pickle.HIGHEST_PROTOCOL)


def compress_each(jobs: list[tuple[str, str, int, int, bool]]) -> list[tuple[bool, object]]:
    """Many entries' compressions in one job (the small-entry lane): for each (source, archive path, part size,
    level, part MD5s), (True, its ArchiveResult) or (False, the exception it raised); one entry's failure is its
    own."""
    from amgmt.local.archive import compress_entry  # imported by the job, as the pickled function would be

    results: list[tuple[bool, object]] = []
    for source, archive_path, part_size, level, md5 in jobs:
        try:
            results.append((True, compress_entry(source, archive_path, part_size=part_size, level=level, md5=md5)))
        except Exception as exc:
            results.append((False, exc))
    return results


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    while (job := read_frame(requests)) is not None:
        write_frame(replies, _answer(job))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Nothing a job prints may corrupt the wire: fd 1 becomes /dev/null, the wire keeps a duplicate of it.
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
