"""The token bucket of MGMT_BWLIMIT, by its arithmetic with a fake clock, and the body payload that takes from it
chunk by chunk (no server: a writer that records what it is handed, and when)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import payload as aiohttp_payload

from amgmt.s3.bandwidth import CHUNK, Bandwidth, ThrottledBody, TokenBucket, read_body
from amgmt.s3.bodies import PartBody


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_lets_its_burst_through_then_paces_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1000, burst=100, clock=clock)

    assert bucket.reserve(100) == 0  # the burst, at once
    assert bucket.reserve(50) == pytest.approx(0.05)  # then 50 bytes cost 50 ms
    assert bucket.reserve(50) == pytest.approx(0.10)  # queued behind the first 50
    clock.now += 0.10
    assert bucket.reserve(100) == pytest.approx(0.10)


def test_idle_time_refills_only_up_to_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1000, burst=100, clock=clock)
    bucket.reserve(100)
    clock.now += 60  # a minute of nothing to send
    assert bucket.reserve(100) == 0
    assert bucket.reserve(1000) == pytest.approx(1.0)  # no credit beyond the burst


def test_over_any_window_at_most_burst_plus_rate_times_window_goes() -> None:
    """Senders that send as soon as they may: whatever they ask for, the bytes let through within any 10 s are at
    most burst + 10 s of the rate (the limit holds within 1% over 10 s with amgmt's burst of 0.1 s)."""
    clock = FakeClock()
    rate, burst = 20 * 1024 * 1024, 2 * 1024 * 1024
    bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
    sent: list[tuple[float, int]] = []
    start = clock.now
    while clock.now - start < 30:
        delay = bucket.reserve(CHUNK)
        clock.now += delay
        sent.append((clock.now, CHUNK))
    for t0, _ in sent[:: len(sent) // 50]:
        in_window = sum(n for t, n in sent if t0 <= t < t0 + 10)
        assert in_window <= burst + rate * 10 + CHUNK
        if t0 + 10 <= sent[-1][0]:
            assert in_window >= rate * 10 * 0.99


def test_no_limit_needs_positive_numbers() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)


class RecordingBandwidth(Bandwidth):
    def __init__(self, log: list[tuple[str, int]]) -> None:
        super().__init__(1024 * 1024)
        self.log = log

    async def take(self, nbytes: int) -> None:
        self.log.append(("take", nbytes))


class RecordingWriter:
    def __init__(self, log: list[tuple[str, int]]) -> None:
        self.log = log

    async def write(self, data: memoryview) -> None:
        self.log.append(("write", len(data)))


async def test_a_throttled_body_is_handed_to_the_socket_chunk_by_chunk_each_after_its_take(tmp_path: Path) -> None:
    path = tmp_path / "archive"
    path.write_bytes(bytes(range(256)) * 4096 + b"tail")  # 1 MiB and 4 bytes
    log: list[tuple[str, int]] = []
    size = 1024 * 1024 + 4

    body = await read_body(str(path), 0, size, RecordingBandwidth(log))
    plain = await read_body(str(path), 0, size, None)

    assert type(body) is ThrottledBody and type(plain) is PartBody and body == plain
    assert type(aiohttp_payload.PAYLOAD_REGISTRY.get(plain)) is aiohttp_payload.BytesPayload, "unlimited: as before"
    payload = aiohttp_payload.PAYLOAD_REGISTRY.get(body)
    assert payload.size == size
    await payload.write_with_length(RecordingWriter(log), None)  # type: ignore[arg-type]

    assert log == [("take", CHUNK), ("write", CHUNK)] * 16 + [("take", 4), ("write", 4)]
    log.clear()
    await payload.write_with_length(RecordingWriter(log), CHUNK + 1)  # type: ignore[arg-type]
    assert log == [("take", CHUNK), ("write", CHUNK), ("take", 1), ("write", 1)]


class RecordingBody:
    """A response body as aiobotocore's StreamingBody reads it (`read(amt)`), recording each read."""

    def __init__(self, data: bytes, log: list[tuple[str, int]]) -> None:
        self.data = data
        self.log = log

    async def read(self, amt: int) -> bytes:
        chunk, self.data = self.data[:amt], self.data[amt:]
        self.log.append(("read", amt))
        return chunk


async def test_a_downloaded_range_is_read_chunk_by_chunk_each_paid_for_before_the_next() -> None:
    log: list[tuple[str, int]] = []
    data = bytes(range(256)) * 1024 + b"xy"  # 4 chunks and 2 bytes

    got = await RecordingBandwidth(log).read(RecordingBody(data, log), len(data))

    assert got == data
    assert log == [("read", CHUNK), ("take", CHUNK)] * 4 + [("read", 2), ("take", 2), ("read", 1)]


async def test_a_short_read_pays_for_the_bytes_it_returned() -> None:
    log: list[tuple[str, int]] = []

    class Trickle(RecordingBody):
        async def read(self, amt: int) -> bytes:
            return await super().read(min(amt, 1000))

    got = await RecordingBandwidth(log).read(Trickle(b"q" * 2500, log), 2500)

    assert got == b"q" * 2500
    assert [n for op, n in log if op == "take"] == [1000, 1000, 500]


@pytest.mark.parametrize("extra", [b"", b"more than the range"])
async def test_a_body_shorter_or_longer_than_its_range_is_not_taken_for_it(extra: bytes) -> None:
    log: list[tuple[str, int]] = []
    data = b"z" * 1000
    short = await RecordingBandwidth(log).read(RecordingBody(data[:600], log), len(data))
    long = await RecordingBandwidth(log).read(RecordingBody(data + extra, log), len(data))

    assert short == data[:600]  # the caller sees 600 != 1000: a body cut short, sent again
    assert len(long) == len(data) + min(len(extra), 1)  # one byte more says "longer than the range"
