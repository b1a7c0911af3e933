"""Large and small entries of one run share the budgets (issue 12): one large multipart entry whose parts crawl (each
UploadPart held by the fault proxy) and 200 small entries in the lane, in one `upload all`. The small ones finish
while the large one is in flight, and the large one sends parts while the small ones still run: neither side waits
for the other to drain."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import anyio

from amgmt.local.entries import list_entries
from amgmt.models import OperationRecord
from amgmt.parts import MiB
from amgmt.progress import SilentReporter
from amgmt.upload.batch import upload_batch
from faultproxy import Fault, FaultProxy, Injection, ProxyRequest

SMALL = 200
LARGE = "0-film.mov"


async def test_small_entries_finish_while_a_slow_multipart_entry_is_in_flight_and_it_progresses(
    s3_server: Any, make_settings: Any, make_media: Any, local_dir: Path
) -> None:
    make_media({LARGE: 16 * MiB} | {f"IMG_{i:04d}.jpg": 3000 + i for i in range(SMALL)})
    lock = threading.Lock()
    parts: list[float] = []  # when each UploadPart of the large entry reached the server side (proxy)

    def slow(req: ProxyRequest) -> Injection | None:
        if req.operation == "UploadPart":
            with lock:
                parts.append(time.monotonic())
            return Injection(Fault.SLOW)
        return None

    ended: dict[str, float] = {}

    class Clock(SilentReporter):
        def entry_done(self, record: OperationRecord) -> None:
            super().entry_done(record)
            ended[record.target_name] = time.monotonic()

    with FaultProxy(s3_server.endpoint_url, rules=[slow], slow_seconds=2.0) as proxy:
        # One part at a time, each held 2 s: the large entry is in flight for 8 s or more (4 parts of 5 MiB or more).
        settings = make_settings(
            endpoint_url=proxy.url,
            concurrency=4,
            small_entry_size="1MiB",
            part_size="5MiB",
            parts_in_flight=1,
        )
        with anyio.fail_after(120):
            report = await upload_batch(settings, list_entries(settings)[0], reporter=Clock(keep=False))

    assert report.counts() == {"success": SMALL + 1}
    assert len(parts) >= 4 and proxy.counts[Fault.SLOW] == len(parts)
    large_end = ended.pop(LARGE)
    small_ends = sorted(ended.values())
    assert len(small_ends) == SMALL
    # The small entries finish while the large one is in flight (its first part sent, not yet ended) ...
    while_large = [t for t in small_ends if parts[0] < t < large_end]
    # (The lane ends its entries a batch at a time; with the budget shared, not one ended before the large one.)
    assert len(while_large) >= 1, (len(while_large), parts[0], large_end, small_ends[0], small_ends[-1])
    # ... and the large one progresses while small ones still run: parts of it reach the server before the last of
    # them ends (it does not wait for the lane to drain).
    assert sum(1 for t in parts if t < small_ends[-1]) >= 1, (parts, small_ends[-1])
