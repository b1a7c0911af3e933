"""`retry` and `cleanup` against the real server, and the run lock."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import amgmt.upload.pipeline
from amgmt.local.entries import list_entries
from amgmt.upload.batch import retry_targets, upload_batch
from amgmt.upload.recovery import KEPT_IN_PROGRESS, cleanup
from amgmt.errors import BusyError, MoveError
from amgmt.models import OperationStatus, UploadRecord, utcnow
from amgmt.parts import MiB
from amgmt.local.runlock import RunLock
from amgmt.config import Settings
from amgmt.store import JournaledUpload, MetadataStore


async def save_record(settings: Settings, operation_id: str, name: str, status: str) -> UploadRecord:
    """An upload record of `name` in the local dir, as a run of amgmt leaves it."""
    record = UploadRecord(operation_id=operation_id, target_path=str(settings.local_dir / name), target_name=name,
                          started_at=utcnow(), s3_bucket=settings.bucket or "", s3_object_key=f"{name}.tar.gz")
    if status != OperationStatus.PENDING:
        record.finish(OperationStatus(status), error="compress: interrupted")
    async with MetadataStore(settings.db_path) as store:
        await store.save_operation(record)
    return record


async def test_retry_failed_finishes_a_partial_upload_without_sending_it_again(
    make_settings, make_media, local_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_media({"a.mp4": 4000, "b.mp4": 5000})
    settings = make_settings()

    def refuse(*args: Any, **kwargs: Any) -> Path:
        raise MoveError("completed dir is on a read-only disk")

    with monkeypatch.context() as patch:
        patch.setattr(amgmt.upload.pipeline, "move_to_completed", refuse)
        first = await upload_batch(settings, list_entries(settings)[0])
    assert first.counts() == {"partial": 2}

    entries, notes = await retry_targets(settings, ids=[], failed=True)
    assert sorted(p.name for p in entries) == ["a.mp4", "b.mp4"] and notes == []
    again = await upload_batch(settings, entries)
    assert again.counts() == {"success": 2}
    assert all(r.metadata.get("reused_existing_object") for r in again.records)
    assert sorted(p.name for p in settings.completed_dir.iterdir() if not p.name.startswith(".")) == ["a.mp4", "b.mp4"]
    # Nothing left to retry now; naming a successful operation says so.
    assert await retry_targets(settings, ids=[], failed=True) == ([], [])
    ok_id = again.records[0].operation_id
    _, notes = await retry_targets(settings, ids=[ok_id[:8]], failed=False)
    assert "nothing to retry" in notes[0]


async def test_retry_by_id_after_the_cause_is_fixed(
    make_settings, make_media, s3_client: Any, bucket: str
) -> None:
    make_media({"clip.mov": 3000})
    s3_client.put_object(Bucket=bucket, Key="clip.mov.tar.gz", Body=b"someone else's object")
    settings = make_settings()
    first = await upload_batch(settings, list_entries(settings)[0])
    [failed] = first.records
    assert failed.status == OperationStatus.FAILED and "--on-conflict overwrite" in (failed.error_message or "")

    s3_client.delete_object(Bucket=bucket, Key="clip.mov.tar.gz")
    entries, _ = await retry_targets(settings, ids=[failed.operation_id[:6]], failed=False)
    report = await upload_batch(settings, entries)
    assert report.counts() == {"success": 1}


async def test_cleanup_aborts_open_uploads_and_removes_stale_staging(
    make_settings, s3_client: Any, bucket: str
) -> None:
    settings = make_settings(object_prefix="media")
    started = s3_client.create_multipart_upload(Bucket=bucket, Key="media/lost.mp4.tar.gz")
    s3_client.upload_part(Bucket=bucket, Key="media/lost.mp4.tar.gz", UploadId=started["UploadId"],
                          PartNumber=1, Body=b"x" * (5 * MiB))
    outside = s3_client.create_multipart_upload(Bucket=bucket, Key="elsewhere/keep.tar.gz")
    sibling = s3_client.create_multipart_upload(Bucket=bucket, Key="media-old/keep.tar.gz")
    settings.staging_dir.mkdir(parents=True)
    stale = settings.staging_dir / "00000000-0000-0000-0000-000000000000-lost.mp4.tar.gz.partial"
    stale.write_bytes(b"y" * 1000)
    # Only archives of amgmt's own records are removed: this one's operation ended cancelled.
    await save_record(settings, "00000000-0000-0000-0000-000000000000", "lost.mp4", OperationStatus.CANCELLED)

    # (moto reports every upload as initiated in 2010, so the --older-than age rule cannot be shown here.)
    preview = await cleanup(settings, dry_run=True, older_than=timedelta(0))
    assert [u["key"] for u in preview.multipart_uploads] == ["media/lost.mp4.tar.gz"]
    assert preview.multipart_bytes == 5 * MiB and preview.staging_bytes == 1000
    assert stale.exists() and len(s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"]) == 3

    done = await cleanup(settings, older_than=timedelta(0))
    assert done.multipart_bytes == 5 * MiB and done.staging_bytes == 1000
    assert not stale.exists()
    left = sorted(u["Key"] for u in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
    assert left == ["elsewhere/keep.tar.gz", "media-old/keep.tar.gz"]  # outside "media/": not ours to touch
    s3_client.abort_multipart_upload(Bucket=bucket, Key="elsewhere/keep.tar.gz", UploadId=outside["UploadId"])
    s3_client.abort_multipart_upload(Bucket=bucket, Key="media-old/keep.tar.gz", UploadId=sibling["UploadId"])


async def test_a_second_run_on_the_same_local_dir_is_refused(make_settings, make_media, local_dir: Path) -> None:
    make_media({"a.mp4": 100})
    settings = make_settings()
    with RunLock(settings.local_dir):
        with pytest.raises(BusyError, match="another amgmt run .* is uploading from"):
            await upload_batch(settings, list_entries(settings)[0])
    assert (local_dir / "a.mp4").exists()
    report = await upload_batch(settings, list_entries(settings)[0])
    assert report.counts() == {"success": 1}


async def test_cleanup_never_aborts_an_upload_whose_operation_is_in_progress_on_another_local_dir(
    make_settings, s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    settings = make_settings()
    live = await save_record(settings, "55555555-5555-4555-8555-555555555555", "live.mp4", OperationStatus.PENDING)
    live.target_path = str(tmp_path / "other-media" / "live.mp4")  # a run on another local dir, still going
    dead = await save_record(settings, "66666666-6666-4666-8666-666666666666", "dead.mp4", OperationStatus.CANCELLED)
    async with MetadataStore(settings.db_path) as store:
        await store.save_operation(live)
        for record in (live, dead):
            started = s3_client.create_multipart_upload(Bucket=bucket, Key=record.s3_object_key)
            await store.journal_multipart(JournaledUpload(
                upload_id=started["UploadId"], operation_id=record.operation_id, bucket=bucket,
                key=record.s3_object_key, archive_sha256="ab" * 32, part_size=5 * MiB, part_count=2))

    found = await cleanup(settings, older_than=timedelta(0), include_resumable=True)

    assert [u["key"] for u in found.multipart_uploads] == ["dead.mp4.tar.gz"]
    assert [(u["key"], u["reason"]) for u in found.kept_multipart_uploads] == [("live.mp4.tar.gz", KEPT_IN_PROGRESS)]
    assert [u["Key"] for u in s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"]] == ["live.mp4.tar.gz"]
