"""Fixtures of tests/faults: S3 faults on demand (see faultkit) and the aftermath check of a failed entry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import amgmt.upload.batch
from amgmt.s3 import S3Bucket
from amgmt.config import Settings
from faultkit import Aftermath, S3Faults


@pytest.fixture
def s3_faults(monkeypatch: pytest.MonkeyPatch) -> S3Faults:
    """Every S3Bucket that upload_batch connects gets the test's handlers registered on its client. Its direct
    HEAD/PUT path is left out, so that every request passes botocore's hooks (faultproxy tests cover that path)."""
    faults = S3Faults()

    class FaultyBucket(S3Bucket):
        def __init__(self, client: Any, options: Any, direct: Any = None) -> None:
            super().__init__(client, options, None)
            faults.install(client)

    monkeypatch.setattr(amgmt.upload.batch, "S3Bucket", FaultyBucket)
    return faults


@pytest.fixture
def aftermath(s3_client: Any, bucket: str) -> Callable[[Settings], Aftermath]:
    return lambda settings: Aftermath(settings, s3_client, bucket)
