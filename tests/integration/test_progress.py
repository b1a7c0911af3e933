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


async def _thread_compress(source: str, archive_path: str, part_size: int, level: int, md5: bool = True) -> ArchiveResult:
    job = functools.partial(compress_entry, part_size=part_size, level=level, md5=md5)
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

    async def compress(source: str, archive_path: str, part_size: int, level: int, md5: bool = True) -> ArchiveResult:
        if Path(source).name == "b.mp4":
            stuck.set()
            await anyio.sleep_forever()  # Ctrl-C comes while b.mp4 is being packed
        return await _thread_compress(source, archive_path, part_size, level, md5)

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


async def test_the_reporter_hears_each_entrys_stage_while_it_is_in_flight(make_settings, make_media) -> None:
    """Every entry goes compress -> upload 0%..100% -> verify -> move, each stage reported as it starts; while one
    entry is held in compression the other's stages are reported beside it (both in flight), and an entry leaves
    the in-flight list when it ends."""
    make_media({"big.mp4": 16 * 1024 * 1024, "held.mp4": 2000})
    settings = make_settings(concurrency=2, part_size="5MiB", multipart_threshold="5MiB")
    reporter = SilentReporter()
    release = anyio.Event()
    seen_while_held: list[dict[str, tuple[str, str]]] = []

    async def compress(source: str, archive_path: str, part_size: int, level: int, md5: bool = True) -> ArchiveResult:
        if Path(source).name == "held.mp4":
            await release.wait()
        return await _thread_compress(source, archive_path, part_size, level, md5)

    class Watching(SilentReporter):
        def entry_stage(self, record: Any, stage: str) -> None:
            reporter.entry_stage(record, stage)
            if record.target_name == "big.mp4" and stage == "verify":
                seen_while_held.append(dict(reporter.in_flight))
                release.set()

        def entry_done(self, record: Any) -> None:
            reporter.entry_done(record)

    report = await upload_batch(settings, list_entries(settings)[0], reporter=Watching(), compressor=compress)

    assert sorted(str(r.status) for r in report.records) == ["success", "success"]
    [held] = seen_while_held
    assert sorted(held.values()) == [("big.mp4", "verify"), ("held.mp4", "compress")]
    big = [stage for name, stage in reporter.stages if name == "big.mp4"]
    assert big[0] == "compress" and big[1] == "upload 0%" and big[-2:] == ["verify", "move"]
    percents = [int(s.split()[1].rstrip("%")) for s in big if s.startswith("upload")]
    assert percents == sorted(percents) and percents[-1] == 100 and len(percents) > 3, big  # parts, as they go
    assert reporter.in_flight == {}


def test_the_in_flight_line_under_the_bar() -> None:
    """What a terminal shows below the bar, drawn from the reporter's calls (no timing, no screen scraping)."""
    from amgmt.cli.progress_bar import in_flight_text
    from amgmt.models import UploadRecord, utcnow

    def record(name: str) -> UploadRecord:
        return UploadRecord(operation_id=f"id-{name}", target_path=f"/m/{name}", target_name=name,
                            started_at=utcnow(), s3_bucket="b", s3_object_key=f"{name}.tar.gz")

    screen = io.StringIO()
    bar = TqdmReporter(stream=screen)
    bar.add_work(3, 3000)
    clip, trip = record("clip.mp4"), record("trip")
    bar.entry_stage(clip, "compress")
    bar.entry_stage(trip, "compress")
    bar.entry_stage(clip, "upload 0%")
    bar._drawn = 0.0  # the redraw pause has passed
    bar.entry_stage(clip, "upload 42%")
    assert "clip.mp4 upload 42% | trip compress" in screen.getvalue()
    bar.entry_done(clip)
    bar.close()
    assert list(bar.in_flight.values()) == [("trip", "compress")]

    many = [(f"GX0102{n:02d}.MP4", "upload 7%") for n in range(12)]
    line = in_flight_text(many, 80)
    assert len(line) <= 80 and line.startswith("GX010200.MP4 upload 7% | ") and line.endswith(" more")
    assert in_flight_text([("a-very-long-entry-name-" * 4, "verify")], 20) == "+1 more"
    assert in_flight_text([], 80) == ""
