"""The progress reporter counts only bytes really processed: a failed or interrupted entry does not fill the bar,
and a run refused by the lock draws no bar at all."""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from amgmt.local.archive import ArchiveResult, compress_entry
from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.errors import BusyError
from amgmt.cli.progress_bar import TqdmReporter
from amgmt.progress import SilentReporter
from amgmt.local.runlock import RunLock


async def _thread_compress(source: str, archive_path: str, part_size: int, level: int) -> ArchiveResult:
    job = functools.partial(compress_entry, part_size=part_size, level=level)
    return await anyio.to_thread.run_sync(job, source, archive_path)


async def test_a_failed_entry_does_not_fill_the_bar(make_settings, make_media, s3_client: Any, bucket: str) -> None:
    make_media({"a.mp4": 3000, "b.mp4": 5000})
    s3_client.put_object(Bucket=bucket, Key="b.mp4.tar.gz", Body=b"someone else's object")
    settings = make_settings()
    reporter = SilentReporter()

    report = await upload_batch(settings, list_entries(settings)[0], reporter=reporter, compressor=_thread_compress)

    assert sorted((r.target_name, str(r.status)) for r in report.records) == [("a.mp4", "success"),
                                                                              ("b.mp4", "failed")]
    assert reporter.total_bytes == 8000
    assert reporter.done_bytes == 3000


@pytest.mark.parametrize("lane", [False, True], ids=["one-by-one", "small-entry-lane"])
async def test_an_interrupted_batch_does_not_fill_the_bar(make_settings, make_media, lane: bool) -> None:
    make_media({"a.mp4": 3000, "b.mp4": 5000})
    # One by one (the lane off), a.mp4 ends before b.mp4 starts; in the lane both are one batch, cancelled together.
    settings = make_settings(concurrency=1, small_entry_size="1MiB" if lane else "0")
    reporter = SilentReporter()
    stuck = anyio.Event()

    async def compress(source: str, archive_path: str, part_size: int, level: int) -> ArchiveResult:
        if Path(source).name == "b.mp4":
            stuck.set()
            await anyio.sleep_forever()  # Ctrl-C comes while b.mp4 is being packed
        return await _thread_compress(source, archive_path, part_size, level)

    async with anyio.create_task_group() as tg:
        async def run() -> None:
            await upload_batch(settings, list_entries(settings)[0], reporter=reporter, compressor=compress)

        tg.start_soon(run)
        await stuck.wait()
        tg.cancel_scope.cancel()

    if lane:
        assert [str(r.status) for r in reporter.finished] == ["cancelled", "cancelled"]
        assert reporter.done_bytes == 0 and reporter.total_bytes == 8000
    else:
        assert [str(r.status) for r in reporter.finished] == ["success", "cancelled"]
        assert reporter.done_bytes == 3000 and reporter.total_bytes == 8000


async def test_a_run_refused_by_the_lock_draws_no_bar(make_settings, make_media) -> None:
    make_media({"a.mp4": 3000})
    settings = make_settings()
    screen = io.StringIO()
    with RunLock(settings.local_dir):
        with pytest.raises(BusyError):
            await upload_batch(settings, list_entries(settings)[0], reporter=TqdmReporter(stream=screen))
    assert screen.getvalue() == ""

    await upload_batch(settings, list_entries(settings)[0], reporter=TqdmReporter(stream=screen))
    assert "upload: 100%" in screen.getvalue()
