"""Stage 6 fails: the upload stands (verified in S3), the operation is "partial", the original stays in place."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import amgmt.upload.pipeline
from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.local.completed import move_to_completed
from amgmt.errors import ExitCode, MoveError
from amgmt.models import OperationStatus
from faultkit import open_multipart_uploads, staging_leftovers, stored_records

MEDIA = {"a.mp4": 1000, "dir/b.txt": b"hello", "bad.mov": 300_000}


def assert_verified_in_s3(record: Any, s3_client: Any, bucket: str) -> None:
    assert record.verification_method in ("etag", "sha256-readback")
    body = s3_client.get_object(Bucket=bucket, Key=record.s3_object_key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == record.checksum_compressed


async def test_move_error_for_one_entry_is_partial(make_settings, make_media, aftermath, monkeypatch,
                                                   s3_client, bucket) -> None:
    make_media(MEDIA)
    settings = make_settings()

    def move(entry: Path, *args: Any, **kwargs: Any) -> Path:
        if entry.name == "bad.mov":
            raise MoveError(f"cannot move {entry}: Read-only file system")
        return move_to_completed(entry, *args, **kwargs)

    monkeypatch.setattr(amgmt.upload.pipeline, "move_to_completed", move)
    report = await upload_batch(settings, list_entries(settings)[0])

    record = await aftermath(settings).check(
        report, failed="bad.mov", stage="move", others=["a.mp4", "dir"], status=OperationStatus.PARTIAL
    )
    assert "uploaded and verified, but the original stays in place" in record.error_message
    assert "Read-only file system" in record.error_message
    assert_verified_in_s3(record, s3_client, bucket)


async def test_unusable_completed_dir_makes_every_entry_partial(make_settings, make_media, tmp_path: Path,
                                                               local_dir: Path, s3_client, bucket) -> None:
    make_media(MEDIA)
    blocker = tmp_path / "a-regular-file"
    blocker.write_text("not a directory\n")
    meta = tmp_path / "meta"
    settings = make_settings(completed_dir=str(blocker / "completed"), db_path=str(meta / "operations.db"),
                             staging_dir=str(meta / "staging"))

    report = await upload_batch(settings, list_entries(settings)[0])

    assert report.exit_code == ExitCode.ENTRY_FAILED
    assert report.counts() == {"partial": 3}, report.to_dict()
    stored = await stored_records(settings)
    assert sorted(stored) == ["a.mp4", "bad.mov", "dir"]
    for name, record in stored.items():
        assert record.status == OperationStatus.PARTIAL
        assert record.error_message and record.error_message.startswith("move:")
        assert "Not a directory" in record.error_message, record.error_message
        assert (local_dir / name).exists()
        assert_verified_in_s3(record, s3_client, bucket)
    assert blocker.read_text() == "not a directory\n"
    assert staging_leftovers(settings) == []
    assert open_multipart_uploads(s3_client, bucket) == []
