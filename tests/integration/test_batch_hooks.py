"""The hook of a stopped run: the entry cancelled in flight still gets its hook (status `cancelled`), and the
result is saved with its record; a slow hook holds up no other entry."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import anyio
import anyio.to_thread

from amgmt.local.archive import ArchiveResult, compress_entry
from amgmt.local.entries import list_entries
from amgmt.store import MetadataStore
from amgmt.upload.batch import upload_batch


async def _thread_compress(source: str, archive_path: str, part_size: int, level: int, md5: bool = True) -> ArchiveResult:
    job = functools.partial(compress_entry, part_size=part_size, level=level, md5=md5)
    return await anyio.to_thread.run_sync(job, source, archive_path)


async def test_a_stopped_run_still_runs_the_hook_of_its_cancelled_entry(
    make_settings, make_media, tmp_path: Path
) -> None:
    make_media({"a.mp4": 3000, "b.mp4": 5000})
    seen = tmp_path / "seen"
    # One entry after another: the lane off (it would take a.mp4 and b.mp4 in one batch, both then cancelled).
    settings = make_settings(concurrency=1, small_entry_size=0,
                             hook=f'echo "$AMGMT_TARGET_NAME $AMGMT_STATUS $AMGMT_ERROR" >> {seen}')
    stop = anyio.Event()

    async def compress(source: str, archive_path: str, part_size: int, level: int, md5: bool = True) -> ArchiveResult:
        if Path(source).name == "b.mp4":
            stop.set()  # Ctrl-C comes while b.mp4 is being packed
            await anyio.sleep_forever()
        return await _thread_compress(source, archive_path, part_size, level, md5)

    report = await upload_batch(settings, list_entries(settings)[0], compressor=compress, stop=stop)

    assert report.interrupted
    assert seen.read_text().splitlines() == ["a.mp4 success ", "b.mp4 cancelled compress: interrupted"]
    async with MetadataStore(settings.db_path) as store:
        saved = {r.target_name: r for r in await store.list_operations(operation_type="upload", limit=None)}
    assert saved["b.mp4"].status == "cancelled" and saved["b.mp4"].metadata["hook"]["exit"] == 0
    assert saved["a.mp4"].metadata["hook"]["exit"] == 0


async def test_a_slow_hook_holds_up_no_other_entry(make_settings, make_media, tmp_path: Path) -> None:
    make_media({"a.mp4": 3000, "b.mp4": 5000, "c.mp4": 700})
    settings = make_settings(concurrency=1, hook='[ "$AMGMT_TARGET_NAME" != a.mp4 ] || sleep 3')

    started = time.monotonic()
    report = await upload_batch(settings, list_entries(settings)[0], compressor=_thread_compress)
    took = time.monotonic() - started

    finished = {r.target_name: r.completed_at for r in report.records}
    assert sorted(finished) == ["a.mp4", "b.mp4", "c.mp4"]
    assert all(str(r.status) == "success" for r in report.records)
    # one worker: b and c ended while a's hook was still sleeping; the run waited for that hook
    assert (max(finished.values()) - min(finished.values())).total_seconds() < 2.5
    assert took >= 3
