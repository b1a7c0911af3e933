"""Stage 5 finds the object is not the archive: failed at verify, the original stays, the record says why.

The object stays in S3 (a later run proves it or replaces it); only the original's move depends on verification.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.models import FileStatus, OperationStatus
from amgmt.s3 import ObjectInfo, S3Bucket
from faultkit import object_keys, stored_records

MEDIA = {"a.mp4": 1000, "dir/b.txt": b"hello", "bad.mov": 300_000}
KEY = "bad.mov.tar.gz"
HeadFilter = Callable[[ObjectInfo | None], ObjectInfo | None]


def lie_about(monkeypatch: pytest.MonkeyPatch, *, head: HeadFilter | None = None, digest: str | None = None) -> None:
    """HEAD of KEY passes through `head`; its read-back returns `digest` when given."""
    real_head, real_sha = S3Bucket.head_object, S3Bucket.object_sha256

    async def head_object(self: S3Bucket, key: str, **kwargs: Any) -> ObjectInfo | None:
        info = await real_head(self, key, **kwargs)
        return head(info) if head and key == KEY else info

    async def object_sha256(self: S3Bucket, key: str, **kwargs: Any) -> str:
        if head and key == KEY:
            kwargs.pop("if_match", None)  # the server never gave the ETag this HEAD lies about
        real = await real_sha(self, key, **kwargs)
        return digest if digest is not None and key == KEY else real

    monkeypatch.setattr(S3Bucket, "head_object", head_object)
    monkeypatch.setattr(S3Bucket, "object_sha256", object_sha256)


def other_size(info: ObjectInfo | None) -> ObjectInfo | None:
    return info and dataclasses.replace(info, size=info.size + 1)


def other_etag(info: ObjectInfo | None) -> ObjectInfo | None:
    return info and dataclasses.replace(info, etag="0" * 32)


@pytest.mark.parametrize(
    ("head", "digest", "why"),
    [
        (other_size, None, "bytes, the archive"),
        (other_etag, "f" * 64, "does not match the archive (read-back SHA-256 differs)"),
        (lambda info: None, None, "is missing after the upload"),
    ],
    ids=["size", "etag-and-readback", "missing"],
)
async def test_verification_mismatch_fails_that_entry(make_settings, make_media, aftermath, monkeypatch,
                                                      s3_client, bucket, head, digest, why) -> None:
    make_media(MEDIA)
    settings = make_settings()
    lie_about(monkeypatch, head=head, digest=digest)

    report = await upload_batch(settings, list_entries(settings)[0])

    record = await aftermath(settings).check(report, failed="bad.mov", stage="verify", others=["a.mp4", "dir"])
    assert why in record.error_message
    assert record.verification_method is None
    assert record.source_file_record and record.source_file_record.status != FileStatus.COMPLETED
    assert record.completed_dir_path is None
    assert KEY in object_keys(s3_client, bucket)  # uploaded, just not proven


async def test_other_etag_with_matching_readback_verifies(make_settings, make_media, monkeypatch, s3_client,
                                                          bucket) -> None:
    """The control case: an endpoint whose ETag is not the MD5 scheme still verifies, by reading the object back."""
    make_media(MEDIA)
    settings = make_settings()
    lie_about(monkeypatch, head=other_etag)

    report = await upload_batch(settings, list_entries(settings)[0])

    assert report.counts() == {"success": 3}, report.to_dict()
    record = (await stored_records(settings))["bad.mov"]
    assert record.verification_method == "sha256-readback"
    body = s3_client.get_object(Bucket=bucket, Key=KEY)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == record.checksum_compressed
    assert record.status == OperationStatus.SUCCESS
