"""MGMT_BWLIMIT: one token bucket for the whole run, taken from as request bodies are handed to the socket, 64 KiB at
a time, by every part and single PUT of both transports alike (the body type below is written by aiohttp through
its own payload, whoever made the request: botocore or direct.py), and as response bodies of ranged GETs are read
(downloads), 64 KiB at a time too: a read held back leaves the bytes in the socket, and TCP slows the sender. Must not
decide what is sent or read; nothing is throttled without a limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
from aiohttp import payload as aiohttp_payload

from amgmt.s3 import bodies
from amgmt.s3.bodies import PartBody

CHUNK = 64 * 1024  # bytes handed to the socket per take: the limit's grain
BURST_SECONDS = 0.1  # the bucket holds at most this long a run of the rate (and at least one chunk)


class TokenBucket:
    """The arithmetic of a token bucket of `rate` bytes per second holding at most `burst` bytes, as a schedule:
    `reserve(n)` takes n bytes now and says how long to wait before sending them. Over any window of T seconds at
    most `burst + rate * T` bytes are let through. Pure: the clock is given (a fake one in the unit test)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._full_at = clock()  # when the bucket is full again (all bytes taken so far paid for)

    def reserve(self, nbytes: int) -> float:
        """Take `nbytes`; the seconds to wait before they may go (0 while the bucket holds them)."""
        now = self._clock()
        self._full_at = max(self._full_at, now) + nbytes / self.rate
        return max(0.0, self._full_at - self.burst / self.rate - now)


class Bandwidth:
    """The run's limit: `take(n)` returns when n more bytes may be sent. Tasks share it on one event loop."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.bucket = TokenBucket(rate, max(CHUNK, rate * BURST_SECONDS))
        _register_payload()

    async def take(self, nbytes: int) -> None:
        delay = self.bucket.reserve(nbytes)
        if delay > 0:
            await anyio.sleep(delay)

    async def read(self, body: Any, length: int) -> bytes:
        """Up to `length` bytes of a response `body` (aiobotocore's StreamingBody), at most CHUNK at a time, each
        paid for before the next is read (the bytes a read returned, which may be fewer than asked for); fewer when
        the body ends early, one more when it goes on (the caller checks the length)."""
        data = bytearray()
        while len(data) < length:
            chunk = await body.read(min(CHUNK, length - len(data)))
            if not chunk:
                break
            data += chunk
            await self.take(len(chunk))
        if len(data) == length:
            data += await body.read(1)  # nothing more at the body's end, as its length said
        return bytes(data)


class ThrottledBody(PartBody):
    """A request body sent under the run's `bandwidth` (set by `read_range`): a bytearray to botocore (validated,
    hashed, re-sent on a retry as any body), written by aiohttp through `_ThrottledPayload`."""

    bandwidth: Bandwidth


class _ThrottledPayload(aiohttp_payload.BytesPayload):
    """aiohttp's bytes payload of a ThrottledBody, written CHUNK bytes at a time, each after the bucket let it."""

    def __init__(self, value: ThrottledBody, *args: Any, **kwargs: Any) -> None:
        super().__init__(value, *args, **kwargs)
        self._bandwidth = value.bandwidth

    async def write(self, writer: Any) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        value = memoryview(self._value)
        if content_length is not None:
            value = value[:content_length]
        for start in range(0, len(value), CHUNK):
            chunk = value[start : start + CHUNK]
            await self._bandwidth.take(len(chunk))
            await writer.write(chunk)


async def read_body(path: str, offset: int, length: int, bandwidth: Bandwidth | None) -> bytearray:
    """`bodies.read_range`, the body sent under `bandwidth` when the run has a limit."""
    if bandwidth is None:
        return await bodies.read_range(path, offset, length)
    body = await bodies.read_range(path, offset, length, ThrottledBody)
    if isinstance(body, ThrottledBody):
        body.bandwidth = bandwidth
    return body


_registered = False


def _register_payload() -> None:
    """aiohttp's payload of a ThrottledBody (by its exact type: no other body is looked at differently); once."""
    global _registered
    if not _registered:
        aiohttp_payload.PAYLOAD_REGISTRY.register(_ThrottledPayload, ThrottledBody)
        _registered = True
