"""`verify`: objects recorded as uploaded, checked again against the bucket (HEAD: size and ETag; deep: the bytes
downloaded and their SHA-256s); each check recorded as a "verify" operation. Reads the bucket; changes nothing there.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from amgmt.errors import AmgmtError, EntryError, NotFoundError, StorageError, StoreError, VerificationError
from amgmt.models import FileStatus, OperationStatus, UploadRecord, utcnow
from amgmt.objects.extract import source_digest
from amgmt.objects.resolve import Objects, Target
from amgmt.objects.transfer import QuietReporter, fetch_to_file
from amgmt.objects.verify import StreamDigests, check_digests, expected_of
from amgmt.progress import Reporter, SilentReporter
from amgmt.s3 import ByteBudget, ObjectHead

_UPLOADED = frozenset({OperationStatus.SUCCESS, OperationStatus.PARTIAL, OperationStatus.CHANGED})


class CheckResult(StrEnum):
    OK = "ok"
    MISSING = "missing"  # no object at the key
    CHANGED = "changed"  # the object is not what the upload recorded
    ERROR = "error"  # the check itself could not be made (a request failed, the object is archived, ...)


@dataclass(frozen=True)
class HeadFinding:
    result: CheckResult
    detail: str
    checked: tuple[str, ...]


def compare_head(upload: UploadRecord, head: ObjectHead | None) -> HeadFinding:
    """The HEAD against what the upload recorded. One comparison per property, each named in `checked`: a flexible
    checksum (CRC64NVME, ...) goes beside the ETag here when uploads record one."""
    if head is None:
        return HeadFinding(CheckResult.MISSING, "no object at the key", ())
    if upload.compressed_size is not None and head.size != upload.compressed_size:
        return HeadFinding(CheckResult.CHANGED, f"size {head.size}, recorded {upload.compressed_size}", ())
    checked: tuple[str, ...] = ("size",) if upload.compressed_size is not None else ()
    if upload.checksum_s3_etag:
        if head.etag != upload.checksum_s3_etag:
            return HeadFinding(CheckResult.CHANGED, f"ETag {head.etag}, recorded {upload.checksum_s3_etag}", checked)
        checked += ("etag",)
    return HeadFinding(CheckResult.OK, "", checked)


@dataclass
class ObjectCheck:
    """One object's check: what was compared, and the outcome."""

    target: Target
    upload: UploadRecord
    result: CheckResult = CheckResult.ERROR
    detail: str = ""
    checked: tuple[str, ...] = ()
    operation_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "result": str(self.result),
            "name": self.target.name,
            "bucket": self.target.bucket,
            "key": self.target.key,
            "upload_operation_id": self.upload.operation_id,
            "size": self.upload.compressed_size,
            "etag": self.upload.checksum_s3_etag,
            "checked": list(self.checked),
            "detail": self.detail or None,
            "operation_id": self.operation_id,
        }


@dataclass
class VerifyReport:
    deep: bool
    started_at: datetime = field(default_factory=utcnow)
    wall_seconds: float = 0.0
    interrupted: bool = False
    checks: list[ObjectCheck] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for check in self.checks:
            counts[str(check.result)] = counts.get(str(check.result), 0) + 1
        return counts

    @property
    def problems(self) -> list[ObjectCheck]:
        return [c for c in self.checks if c.result != CheckResult.OK]

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "wall_seconds": round(self.wall_seconds, 3),
            "deep": self.deep,
            "interrupted": self.interrupted,
            "checked": len(self.checks),
            "counts": self.counts(),
            "objects": [c.to_dict() for c in self.checks],
        }


async def targets_to_verify(
    objects: Objects, names: Iterable[str], *, since: datetime | None
) -> list[tuple[Target, UploadRecord]]:
    """The objects to check: each NAME (a key or an entry name) with its newest verified upload; without names,
    the newest upload of every key of this bucket recorded as uploaded (since `since`, when given)."""
    store = objects.store
    if store is None:
        raise NotFoundError(f"no metadata database at {objects.settings.db_path}: nothing recorded as uploaded")
    found: list[tuple[Target, UploadRecord]] = []
    for name in names:
        target = await objects.resolve(name)
        if target.upload is None:
            raise NotFoundError(f"{target.url}: no upload of it is recorded as verified (and not deleted since)")
        found.append((target, target.upload))
    if found:
        return found
    records = await store.list_operations(operation_type="upload", since=since, limit=None)
    by_key: dict[str, list[UploadRecord]] = {}
    for record in records:  # newest first
        if isinstance(record, UploadRecord) and record.s3_bucket == objects.s3.bucket:
            by_key.setdefault(record.s3_object_key, []).append(record)
    for key, uploads in sorted(by_key.items()):
        upload = next((u for u in uploads if u.status in _UPLOADED and not _deleted(u)), None)
        if upload is not None:
            found.append((Target(upload.s3_bucket, key, upload.target_name, upload, "key"), upload))
    return found


def _deleted(upload: UploadRecord) -> bool:
    """Deleted by `amgmt delete` (which marks every upload record of the key): nothing to check any more."""
    return upload.s3_file_record is not None and upload.s3_file_record.status == FileStatus.DELETED


class _Verifier:
    def __init__(self, objects: Objects, *, deep: bool, reporter: Reporter, command_args: dict[str, Any]) -> None:
        self.objects = objects
        self.deep = deep
        self.reporter = reporter
        self.command_args = command_args
        self.budget = ByteBudget(objects.workers * objects.range_size)

    async def check(self, target: Target, upload: UploadRecord, limiter: anyio.CapacityLimiter) -> ObjectCheck:
        found = ObjectCheck(target, upload)
        record = self.objects.new_record("verify", target, self.command_args)
        record.metadata |= {"upload_operation_id": upload.operation_id, "deep": self.deep}
        head: ObjectHead | None = None
        async with limiter:
            try:
                head = await self.objects.s3.describe_object(target.key)
                finding = compare_head(upload, head)
                found.result, found.detail, found.checked = finding.result, finding.detail, finding.checked
                if self.deep and head is not None and finding.result == CheckResult.OK:
                    found.checked += await self._deep(target, upload, head)
            except (StorageError, StoreError):
                raise  # run-wide: the command stops
            except VerificationError as exc:
                found.result, found.detail = CheckResult.CHANGED, " ".join(str(exc).split())
            except AmgmtError as exc:
                found.result, found.detail = CheckResult.ERROR, " ".join(str(exc).split())
            except BaseException as exc:
                await self.objects.finish_failed(record, exc)  # cancelled: recorded so
                raise
        record.metadata |= {"result": str(found.result), "checked": list(found.checked)}
        if found.result == CheckResult.OK:
            record.finish(OperationStatus.SUCCESS)
        else:
            record.finish(OperationStatus.FAILED, error=f"{found.result}: {found.detail}")
        await self.objects.save_record(record)
        found.operation_id = record.operation_id
        self.reporter.advance(head.size if self.deep and head is not None else 1)
        self.reporter.entry_done(record)
        return found

    async def _deep(self, target: Target, upload: UploadRecord, head: ObjectHead) -> tuple[str, ...]:
        """Download into a temporary file, check size, ETag and archive SHA-256 (as `download` does), then recompute
        the source SHA-256 from the archive's members and compare it with the recorded one."""
        if head.needs_restore:
            raise EntryError(f"{target.url} is in {head.storage_class}: restore it to check its bytes", stage="verify")
        expected = await expected_of(self.objects.s3, target, head)
        digests = StreamDigests(expected.etag_part_size)
        with tempfile.TemporaryDirectory(prefix="amgmt-verify-") as tmp:  # removed with what it holds
            path = Path(tmp) / "object.tar.gz"
            await fetch_to_file(
                self.objects.s3,
                target.key,
                path,
                size=head.size,
                etag=head.etag or None,
                digests=digests,
                range_size=self.objects.range_size,
                workers=self.objects.workers,
                budget=self.budget,
                reporter=QuietReporter(),  # the run's bar counts an object's bytes once it is checked
            )
            passed = check_digests(target.url, expected, digests.finish())
            is_dir = bool(upload.source_file_record and upload.source_file_record.is_directory)
            source = await anyio.to_thread.run_sync(lambda: source_digest(path, is_directory=is_dir))
        if upload.checksum_original and source != upload.checksum_original:
            raise VerificationError(
                f"{target.url}: its members give source SHA-256 {source}, recorded {upload.checksum_original}"
            )
        return tuple(p for p in passed if p not in ("size", "etag")) + ("source-sha256",)


async def verify_objects(
    objects: Objects,
    names: Iterable[str] = (),
    *,
    since: datetime | None = None,
    deep: bool = False,
    concurrency: int = 8,
    reporter: Reporter | None = None,
    command_args: dict[str, Any] | None = None,
    stop: anyio.Event | None = None,
) -> VerifyReport:
    """Check the objects (see `targets_to_verify`) concurrently, `concurrency` at a time; every check is recorded.
    `stop` set: the checks under way are cancelled (recorded as cancelled) and the report says `interrupted`."""
    reporter = reporter or SilentReporter()
    started = time.monotonic()
    report = VerifyReport(deep=deep)
    targets = await targets_to_verify(objects, names, since=since)
    total = sum(u.compressed_size or 0 for _, u in targets) if deep else len(targets)
    reporter.add_work(len(targets), total)
    verifier = _Verifier(objects, deep=deep, reporter=reporter, command_args=dict(command_args or {}))
    limiter = anyio.CapacityLimiter(max(1, concurrency))
    results: list[ObjectCheck | None] = [None] * len(targets)

    async def one(index: int, target: Target, upload: UploadRecord) -> None:
        results[index] = await verifier.check(target, upload, limiter)

    async def stop_when_told(scope: anyio.CancelScope) -> None:
        if stop is not None:
            await stop.wait()
            report.interrupted = True
            scope.cancel()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_when_told, tg.cancel_scope)
            async with anyio.create_task_group() as checks:
                for index, (target, upload) in enumerate(targets):
                    checks.start_soon(one, index, target, upload)
            tg.cancel_scope.cancel()
    finally:
        reporter.close()
    report.checks = [r for r in results if r is not None]
    report.wall_seconds = time.monotonic() - started
    return report
