"""Fault injection for tests/faults: S3 requests that fail or stall on demand, and the aftermath every failure must
leave (original in place, staging empty, no open multipart upload, the other entries done, the record saying why).

Faults are injected at botocore's `before-call` hook, so amgmt's own upload loop, error translation and abort path
run unchanged; a request is answered without reaching the (real) server only when a handler says so.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from botocore.awsrequest import AWSResponse

from amgmt.upload.report import BatchReport
from amgmt.errors import ExitCode
from amgmt.models import OperationStatus, UploadRecord
from amgmt.config import Settings
from amgmt.store import MetadataStore

# handler(request_dict) -> None to let the request through, or a (status, error code) to answer it with that error.
Handler = Callable[[dict[str, Any]], Awaitable[tuple[int, str] | None]]


class S3Faults:
    """Handlers by S3 operation name (`UploadPart`, `HeadObject`, ...), installed on every S3Bucket of the run."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.sent: dict[str, list[float]] = {}

    def on(self, operation: str, handler: Handler) -> None:
        self.handlers[operation] = handler

    def count(self, operation: str) -> list[float]:
        """A list that gets the time of every HTTP attempt of `operation` (botocore's retries included)."""
        return self.sent.setdefault(operation, [])

    def install(self, client: Any) -> None:
        for operation, handler in self.handlers.items():
            client.meta.events.register(f"before-call.s3.{operation}", _hook(handler))
        for operation, times in self.sent.items():
            client.meta.events.register(f"before-send.s3.{operation}", functools.partial(_note_time, times))


def _note_time(times: list[float], **_: Any) -> None:
    times.append(time.monotonic())


def _hook(handler: Handler) -> Callable[..., Awaitable[Any]]:
    async def before_call(params: dict[str, Any], **_: Any) -> Any:
        answer = await handler(params)
        if answer is None:
            return None
        status, code = answer
        http = AWSResponse(params.get("url", ""), status, {}, None)
        parsed = {
            "Error": {"Code": code, "Message": "injected by the test"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        return http, parsed

    return before_call


def query(params: dict[str, Any]) -> dict[str, Any]:
    """The query parameters of a botocore request dict (`partNumber`, `uploadId`, ...)."""
    return dict(params.get("query_string") or {})


async def stored_records(settings: Settings) -> dict[str, UploadRecord]:
    """Every operation in the run's database, by target name."""
    async with MetadataStore(settings.db_path) as store:
        records = await store.list_operations(limit=None)
    out: dict[str, UploadRecord] = {}
    for record in records:
        assert isinstance(record, UploadRecord)
        assert record.target_name not in out, f"two operations for {record.target_name}"
        out[record.target_name] = record
    return out


def staging_leftovers(settings: Settings) -> list[str]:
    if not settings.staging_dir.exists():
        return []
    return sorted(p.name for p in settings.staging_dir.iterdir())


def open_multipart_uploads(s3_client: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def object_keys(s3_client: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


@dataclass
class Aftermath:
    """What a run with one failed (or partial) entry must leave behind, checked from the outside."""

    settings: Settings
    s3_client: Any
    bucket: str

    async def check(
        self,
        report: BatchReport,
        *,
        failed: str,
        stage: str,
        others: list[str],
        status: OperationStatus = OperationStatus.FAILED,
    ) -> UploadRecord:
        """Asserts the invariants; returns the stored record of the failed entry for further checks."""
        local = self.settings.local_dir
        assert (local / failed).exists(), f"{failed} was moved or lost"
        assert staging_leftovers(self.settings) == []
        assert open_multipart_uploads(self.s3_client, self.bucket) == []
        assert report.exit_code == ExitCode.ENTRY_FAILED, report.to_dict()

        stored = await stored_records(self.settings)
        assert sorted(stored) == sorted([failed, *others])
        record = stored[failed]
        assert record.status == status, record.to_dict()
        assert record.error_message and record.error_message.startswith(f"{stage}:"), record.error_message
        reported = {r.target_name: r for r in report.records}
        assert reported[failed].status == status

        keys = object_keys(self.s3_client, self.bucket)
        for name in others:
            assert stored[name].status == OperationStatus.SUCCESS, stored[name].to_dict()
            assert not (local / name).exists() and (self.settings.completed_dir / name).exists()
            assert stored[name].s3_object_key in keys
        return record
