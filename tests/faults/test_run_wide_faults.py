"""Run-wide S3 trouble stops the batch before any entry starts: StorageError, no record, nothing moved."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.errors import StorageError
from amgmt.bench.localserver import free_port
from amgmt.s3 import RETRY_POLICY
from faultkit import staging_leftovers, stored_records

MEDIA = {"a.mp4": 1000, "dir/b.txt": b"hello"}


def assert_untouched(local_dir: Path) -> None:
    assert (local_dir / "a.mp4").stat().st_size == 1000
    assert (local_dir / "dir" / "b.txt").read_bytes() == b"hello"
    completed = local_dir / "completed"
    assert not completed.exists() or [p.name for p in completed.iterdir()] == [".metadata"]


async def test_missing_bucket_stops_before_any_record(make_settings, make_media, local_dir: Path) -> None:
    make_media(MEDIA)
    settings = make_settings(bucket=f"amgmt-missing-{uuid.uuid4().hex[:12]}")

    with pytest.raises(StorageError, match="does not exist"):
        await upload_batch(settings, list_entries(settings)[0])

    assert_untouched(local_dir)
    assert staging_leftovers(settings) == []
    if settings.db_path.exists():
        assert await stored_records(settings) == {}


async def test_endpoint_down_fails_quickly(make_settings, make_media, local_dir: Path, s3_faults) -> None:
    make_media(MEDIA)
    settings = make_settings(endpoint_url=f"http://127.0.0.1:{free_port()}")
    attempts = s3_faults.count("HeadBucket")

    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint"):
        await upload_batch(settings, list_entries(settings)[0])
    took = time.monotonic() - started

    assert took < 30, f"took {took:.1f} s"
    # Bounded because the requests are: RETRY_POLICY.unreachable_attempts of them (botocore's own retries are off),
    # backoff 0.5+1+2+4+8 s at most in between (7.75 s at the least: a restarting server gets that long).
    assert len(attempts) == RETRY_POLICY.unreachable_attempts == 6
    assert_untouched(local_dir)
    if settings.db_path.exists():
        assert await stored_records(settings) == {}
