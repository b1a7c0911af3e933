"""The tar stream of one archive as one gzip member, deflated in fixed blocks that do not depend on threads or timing,
in helper threads when asked to. The one home of isal (igzip).

Knows nothing of tar, files or digests beyond the archive's bytes: the caller hands blocks in and a Sink takes the
output. Must not import anyio, aioboto3, botocore or aiosqlite (it runs in the compression worker processes).
"""

from __future__ import annotations

import queue
import struct
import threading
from collections.abc import Callable
from typing import Any, Protocol

from isal import isal_zlib

from amgmt import cpu
from amgmt.parts import MiB

# The tar stream is deflated in blocks of this size (see Deflater). igzip is much faster on big inputs than on
# tarfile's 16 KiB copies (random data: ~1.9 CPU-s/GiB at 16 KiB, ~0.9 at 1 MiB; 2 and 4 MiB measured no better);
# the block is also the read size. A call holds at most _BLOCKS blocks plus about as much compressed output.
_BLOCK_SIZE = 1 * MiB
_BLOCKS = 3  # one being filled, one queued, one being deflated
_QUEUED_OUTPUTS = 1  # deflated blocks waiting for the writer thread
_THREADS_MIN_SIZE = 8 * MiB  # source bytes below which the threads' start and drain cost more than they save
_WINDOW = 32 * 1024  # deflate's history: each block is compressed with the previous block's last 32 KiB as dictionary
_FINAL_BLOCK = isal_zlib.compress(b"", wbits=-isal_zlib.MAX_WBITS)  # an empty last deflate block
# A block is stored (deflate's uncompressed block type) instead of compressed when samples of it do not shrink:
# video, photos and archives are already compressed, and igzip spends ~1 CPU-s/GiB finding that out. Two samples
# of _SAMPLE bytes (start and middle) cost ~0.1 ms per 1 MiB block; the full attempt ~1 ms.
_SAMPLE = 32 * 1024
_STORE_ABOVE = 0.98  # compressed/original of the samples above which the block is stored
_STORED_MAX = 0xFFFF  # bytes in one stored deflate block
LEVELS = range(isal_zlib.ISAL_BEST_SPEED, isal_zlib.ISAL_BEST_COMPRESSION + 1)  # igzip's levels, 0-3


class Sink(Protocol):
    """Where the gzip member goes: `digest` sees every byte in order on the deflating thread, `write` on the writing
    thread (the same thread when inline)."""

    def digest(self, data: bytes) -> None: ...

    def write(self, data: bytes) -> int: ...


def block_compressor(room: int, level: int) -> Any:
    """isal's block compressor for igzip_threaded (private: `isal_zlib._ParallelCompress`): deflate with a preset
    dictionary and a sync flush, into a reused buffer of `room` bytes, with the CRC32 of the input, outside the GIL.

    The public compressobj(zdict=...) + flush(Z_SYNC_FLUSH) does the same work at about the same cost, but writes
    other bytes for some blocks (it deflates in output chunks), and the archive's bytes must not change (resumed
    uploads compare part MD5s). pyproject.toml pins isal to the versions this was tested with and
    tests/unit/local/test_archive.py checks the class and its signature; a missing or changed class raises RuntimeError
    saying so instead of an AttributeError deep in a worker."""
    compressor = getattr(isal_zlib, "_ParallelCompress", None)
    if compressor is None:
        raise RuntimeError(_unsupported_isal("it has no isal_zlib._ParallelCompress"))
    try:
        return compressor(buffersize=room, level=level)
    except TypeError as exc:
        raise RuntimeError(_unsupported_isal(f"_ParallelCompress(buffersize=, level=) fails: {exc}")) from exc


def _unsupported_isal(problem: str) -> str:
    from importlib.metadata import PackageNotFoundError, version  # only on this error path: not at import time

    try:
        installed = version("isal")
    except PackageNotFoundError:
        installed = "(version unknown)"
    return (
        f"amgmt's archive writer needs the private block compressor of isal, and isal {installed} does not have"
        f" it as expected: {problem}; install the isal version pinned in amgmt's pyproject.toml"
    )


class Deflater:
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

    def __init__(
        self, sink: Sink, level: int, *, use_threads: Callable[[], bool], clock: cpu.StepClock | None = None
    ) -> None:
        self._sink = sink
        self._clock = clock if clock is not None else cpu.StepClock()  # the CPU time of deflating (amgmt.cpu)
        # Output room for one block: deflate stores incompressible data with a few bytes per 64 KiB at levels 1-3;
        # level 0 never stores, and uses at most 15 bits per byte.
        room = 2 * _BLOCK_SIZE + 500 if level == 0 else _BLOCK_SIZE + max(_BLOCK_SIZE // 10, 500)
        self._compressor = block_compressor(room, level)
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
        started = cpu.now()
        if self._level and _incompressible(data):
            compressed, crc = _stored_blocks(data), isal_zlib.crc32(data)
        else:
            compressed, crc = self._compressor.compress_and_crc(data, window)
        self._crc = isal_zlib.crc32_combine(self._crc, crc, len(data))
        self._length += len(data)
        self._clock.add(cpu.DEFLATE, started)
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
