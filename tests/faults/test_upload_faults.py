"""Stage 4 fails or is cancelled in the middle of a multipart upload: the upload is aborted, nothing is left over."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path
from typing import Any

import anyio

from amgmt.store import MetadataStore
from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.upload.report import BatchReport
from amgmt.models import OperationStatus
from amgmt.s3.bodies import read_range as _read_range
from faultkit import object_keys, open_multipart_uploads, query, staging_leftovers, stored_records

MiB = 1024 * 1024
MEDIA = {"a.mp4": 1000, "dir/b.txt": b"hello", "big.bin": 20 * MiB}  # big.bin: random bytes, 5 parts of 5 MiB


async def test_failed_part_aborts_the_multipart_upload(make_settings, make_media, aftermath, s3_faults,
                                                       s3_client, bucket) -> None:
    make_media(MEDIA)
    settings = make_settings(part_size="5MiB")
    open_when_failing: list[list[str]] = []

    async def third_part_fails(params: dict[str, Any]) -> tuple[int, str] | None:
        if int(query(params)["partNumber"]) != 3:
            return None
        open_when_failing.append(open_multipart_uploads(s3_client, bucket))
        return 400, "InvalidArgument"  # not transient: no retry hides it

    s3_faults.on("UploadPart", third_part_fails)
    report = await upload_batch(settings, list_entries(settings)[0])

    assert open_when_failing == [["big.bin.tar.gz"]]  # so the empty list afterwards proves the abort
    record = await aftermath(settings).check(report, failed="big.bin", stage="upload", others=["a.mp4", "dir"])
    assert "upload part 3 of" in record.error_message and "InvalidArgument" in record.error_message
    assert record.part_count and record.part_count >= 4
    assert "big.bin.tar.gz" not in object_keys(s3_client, bucket)


async def test_cancelled_batch_keeps_the_upload_in_flight_journaled_for_resume(
    make_settings, make_media, s3_faults, s3_client, bucket, local_dir: Path
) -> None:
    """Cancellation (Ctrl-C) journals the open multipart upload instead of aborting it, so the next run resumes it
    (see the next test); `amgmt cleanup` aborts it if nobody does. Staging is still cleaned, the original stays."""
    make_media({"big.bin": 20 * MiB})
    settings = make_settings(part_size="5MiB")
    stalled = anyio.Event()
    open_when_stalled: list[list[str]] = []

    async def second_part_stalls(params: dict[str, Any]) -> None:
        if int(query(params)["partNumber"]) == 2:
            open_when_stalled.append(open_multipart_uploads(s3_client, bucket))
            stalled.set()
            await anyio.sleep(60)
        return None

    s3_faults.on("UploadPart", second_part_stalls)
    report = BatchReport()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: upload_batch(settings, list_entries(settings)[0], report=report))
            await stalled.wait()
            tg.cancel_scope.cancel()

    assert open_when_stalled == [["big.bin.tar.gz"]]
    assert object_keys(s3_client, bucket) == []
    assert staging_leftovers(settings) == []
    assert (local_dir / "big.bin").stat().st_size == 20 * MiB
    record = (await stored_records(settings))["big.bin"]
    assert record.status == OperationStatus.CANCELLED, record.to_dict()
    assert record.error_message == "upload: interrupted"
    assert [r.status for r in report.records] == [OperationStatus.CANCELLED]
    assert open_multipart_uploads(s3_client, bucket) == ["big.bin.tar.gz"]
    async with MetadataStore(settings.db_path) as store:
        [journaled] = await store.open_multiparts(bucket=bucket, key="big.bin.tar.gz")
    assert journaled.upload_id == record.metadata["upload_id"]


async def test_next_run_after_a_cancelled_one_uploads_and_leaves_nothing_open(
    make_settings, make_media, s3_faults, s3_client, bucket, local_dir: Path
) -> None:
    make_media({"big.bin": 20 * MiB})
    settings = make_settings(part_size="5MiB")
    stalled = anyio.Event()
    stall = True

    async def second_part_stalls_once(params: dict[str, Any]) -> None:
        if stall and int(query(params)["partNumber"]) == 2:
            stalled.set()
            await anyio.sleep(60)
        return None

    s3_faults.on("UploadPart", second_part_stalls_once)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: upload_batch(settings, list_entries(settings)[0]))
            await stalled.wait()
            tg.cancel_scope.cancel()
    stall = False

    report = await upload_batch(settings, list_entries(settings)[0])

    assert [r.status for r in report.records] == [OperationStatus.SUCCESS], report.to_dict()
    assert open_multipart_uploads(s3_client, bucket) == []
    assert object_keys(s3_client, bucket) == ["big.bin.tar.gz"]
    assert (settings.completed_dir / "big.bin").stat().st_size == 20 * MiB
    assert staging_leftovers(settings) == []


async def test_cancelled_part_read_leaves_no_open_file(tmp_path: Path) -> None:
    """A part read cancelled while the file is being opened must still close it (one per part of every upload in
    flight at Ctrl-C; under pytest's warnings-as-errors the leak also makes the cancellation tests flaky)."""
    path = tmp_path / "staged.tar.gz"
    path.write_bytes(b"x" * 1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            with anyio.CancelScope() as scope:
                scope.cancel()  # delivered at the first await: after the read was handed to a worker thread
                await _read_range(str(path), 0, 1000)
            await anyio.sleep(0.05)  # the worker thread finishes its part of the read
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
