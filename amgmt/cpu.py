"""CPU seconds per step of the byte path (reading the source, each digest, deflate, writing and reading the staging
archive), measured as the CPU time of the thread doing the step: what `amgmt benchmark` and benchmarks/peers.py
report per GiB. Pure (no I/O); one clock read per step (~1 us per 1 MiB block), so it stays on in every run.

A packing pass keeps its own `StepClock` (the worker process's threads add to it) and returns its totals with the
archive; the main process adds those and its own steps (part reads, digests computed while sending) to `LEDGER`,
which the benchmark reads before and after a run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

# The steps, as the benchmark names them.
READ_SOURCE = "read source"
SHA256_SOURCE = "sha256 source"
DEFLATE = "deflate"  # igzip, or the stored blocks' copy for incompressible data, and the gzip CRC-32
CRC64NVME = "crc64nvme"
MD5 = "md5"  # the part MD5s (Content-MD5 and the predicted ETag)
SHA256_ARCHIVE = "sha256 archive"
WRITE_STAGING = "write staging"
READ_PARTS = "read parts"  # the staging archive read into request bodies (main process, worker threads)
HASH_BODIES = "hash bodies"  # a digest computed while sending (a checksum not known from the packing pass)
PACKED_IN_THREADS = "packed in threads"  # the pack steps of small files packed in threads of the main process
PACK_STEPS = (READ_SOURCE, SHA256_SOURCE, DEFLATE, CRC64NVME, MD5, SHA256_ARCHIVE, WRITE_STAGING)
SEND_STEPS = (READ_PARTS, HASH_BODIES)

now = time.thread_time


class StepClock:
    """CPU seconds per step, added to from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}

    def add(self, step: str, since: float) -> float:
        """Charge `step` with this thread's CPU time since `since` (a `now()`); returns the new `now()`."""
        at = now()
        with self._lock:
            self._seconds[step] = self._seconds.get(step, 0.0) + (at - since)
        return at

    def charge(self, step: str, seconds: float) -> None:
        with self._lock:
            self._seconds[step] = self._seconds.get(step, 0.0) + seconds

    def merge(self, seconds: Mapping[str, float]) -> None:
        with self._lock:
            for step, value in seconds.items():
                self._seconds[step] = self._seconds.get(step, 0.0) + value

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seconds)


def since(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """What each step took between two snapshots."""
    return {step: value - before.get(step, 0.0) for step, value in after.items() if value - before.get(step, 0.0)}


LEDGER = StepClock()  # this process's steps: its own, and those the packing passes it waited for reported
