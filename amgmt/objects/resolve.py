"""The bucket's objects as amgmt sees them: a KEY or entry NAME resolved to its object and upload record, its status,
its deletion, and the operation records all of these leave. Downloads go through download.py; nothing here prints.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

from amgmt.config import Settings
from amgmt.errors import ConfigError, NotFoundError
from amgmt.models import (
    FileStatus,
    OperationRecord,
    OperationStatus,
    UploadRecord,
    current_user,
    new_operation_id,
    utcnow,
)
from amgmt.naming import ARCHIVE_SUFFIX, object_key
from amgmt.objects.download import DownloadOptions, DownloadOutcome, download_object
from amgmt.objects.transfer import MAX_RANGE_SIZE, DownloadReporter
from amgmt.parts import MiB
from amgmt.s3 import ClientOptions, ObjectHead, S3Bucket
from amgmt.store import Store, metadata_store, store_exists
from amgmt.text import iso_utc

SAVE_TIMEOUT = 10.0
_USABLE = frozenset({OperationStatus.SUCCESS, OperationStatus.PARTIAL})  # the object was uploaded and verified


def object_url(bucket: str, key: str) -> str:
    """The target path of every operation on an object other than its upload (download, restore, delete)."""
    return f"s3://{bucket}/{key}"


def entry_name_of(key: str) -> str:
    """An entry name guessed from a key that no upload record names: its last segment without `.tar.gz`."""
    base = key.rsplit("/", 1)[-1]
    return base[: -len(ARCHIVE_SUFFIX)] if base.endswith(ARCHIVE_SUFFIX) and base != ARCHIVE_SUFFIX else base


def _deleted(record: UploadRecord) -> bool:
    return record.s3_file_record is not None and record.s3_file_record.status == FileStatus.DELETED


def current_upload(uploads: Iterable[UploadRecord]) -> UploadRecord | None:
    """The newest verified upload whose object amgmt has not deleted since (uploads are given newest first)."""
    return next((r for r in uploads if r.status in _USABLE and not _deleted(r)), None)


@dataclass(frozen=True)
class Target:
    """What a KEY|NAME argument names: the key, the entry name, and the upload that describes the object now."""

    bucket: str
    key: str
    name: str
    upload: UploadRecord | None  # None when amgmt has no verified upload of this key on record
    found_by: str  # "key" | "name"

    @property
    def url(self) -> str:
        return object_url(self.bucket, self.key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "name": self.name,
            "found_by": self.found_by,
            "upload_operation_id": self.upload.operation_id if self.upload else None,
        }


def head_to_dict(head: ObjectHead | None) -> dict[str, Any] | None:
    if head is None:
        return None
    data = asdict(head)
    data["needs_restore"] = head.needs_restore
    return data


@dataclass
class ObjectStatus:
    target: Target
    head: ObjectHead | None  # None: not in the bucket (any more)
    operations: list[OperationRecord] = field(default_factory=list)


@dataclass
class DeletePlan:
    target: Target
    head: ObjectHead
    uploads: list[UploadRecord]  # every upload record of the key, newest first


# -- the session ---------------------------------------------------------------------------------------------------


class Objects:
    """The bucket's objects as amgmt sees them, through one S3 client and the metadata store. `store` is None when
    the command only reads and no database exists yet."""

    def __init__(self, settings: Settings, s3: S3Bucket, store: Store | None) -> None:
        self.settings = settings
        self.s3 = s3
        self.store = store
        self.range_size = min(max(settings.part_size, 1 * MiB), MAX_RANGE_SIZE)
        self.workers = max(1, settings.parts_in_flight)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings, *, record: bool) -> AsyncIterator[Objects]:
        """Connect (and check the bucket); open the store, creating it only when this command records."""
        async with contextlib.AsyncExitStack() as stack:
            store = None
            if record or store_exists(settings):
                store = await stack.enter_async_context(metadata_store(settings))
            options = ClientOptions.from_settings(settings, max_connections=max(4, settings.parts_in_flight + 2))
            s3 = await stack.enter_async_context(S3Bucket.connect(options))
            await s3.check_bucket()
            yield cls(settings, s3, store)

    # -- finding ---------------------------------------------------------------------------------------------------

    def _key_from(self, text: str) -> str | None:
        """The key of an `s3://bucket/key` argument (it must name the configured bucket); None for other text."""
        if not text.startswith("s3://"):
            return None
        bucket, _, key = text[len("s3://") :].partition("/")
        if bucket != self.s3.bucket:
            raise ConfigError(f"{text} is in bucket {bucket!r}, not the configured {self.s3.bucket!r}; pass --bucket")
        if not key:
            raise ConfigError(f"{text} names no key")
        return key

    async def resolve(self, text: str) -> Target:
        """KEY (or s3://bucket/KEY) or NAME -> Target. A key amgmt uploaded to, else an entry name amgmt uploaded
        (its newest verified upload), else an existing key, else `[prefix/]NAME.tar.gz` if it exists."""
        if not text:
            raise ConfigError("name an object: a key, s3://bucket/key, or the name of an uploaded entry")
        bucket = self.s3.bucket
        url_key = self._key_from(text)
        key = url_key or text
        if self.store is not None:
            by_key = await self.store.find_uploads_by_key(bucket=bucket, key=key)
            if by_key:
                return Target(bucket, key, by_key[0].target_name, current_upload(by_key), "key")
            if url_key is None:
                by_name = await self.store.find_uploads_by_name(bucket=bucket, name=text)
                if by_name:
                    usable = current_upload(by_name)
                    return Target(bucket, (usable or by_name[0]).s3_object_key, text, usable, "name")
        if await self.s3.describe_object(key) is not None:
            return Target(bucket, key, entry_name_of(key), None, "key")
        named = object_key(self.settings.object_prefix, text)
        if url_key is None and named != key and await self.s3.describe_object(named) is not None:
            return Target(bucket, named, text, None, "name")
        raise NotFoundError(self._not_found(text, [key] if url_key else [key, named]))

    def _not_found(self, text: str, tried: list[str]) -> str:
        keys = ", ".join(dict.fromkeys(tried))
        recorded = ", and no upload of that name recorded" if self.store is not None else " (no metadata database)"
        return (
            f"nothing named {text!r} in s3://{self.s3.bucket}: no object at {keys}{recorded}; "
            "`amgmt search` finds similar names"
        )

    async def _deleted_note(self, target: Target) -> str:
        if self.store is None:
            return ""
        ops = await self.store.find_operations_on(bucket=target.bucket, key=target.key, target_path=target.url)
        done = next((op for op in ops if op.operation_type == "delete" and op.status == OperationStatus.SUCCESS), None)
        if done is None:
            return ""
        when = done.started_at.astimezone().isoformat(sep=" ", timespec="seconds")  # the user's local time
        return f" (amgmt deleted it at {when}, operation {done.operation_id[:8]})"

    async def head(self, target: Target) -> ObjectHead:
        """The object's HEAD; NotFoundError (saying when amgmt deleted it, if it did) when it is gone."""
        head = await self.s3.describe_object(target.key)
        if head is None:
            raise NotFoundError(f"{target.url} does not exist{await self._deleted_note(target)}")
        return head

    async def status(self, text: str) -> ObjectStatus:
        """The object's HEAD (None if it is gone) beside every operation the store has on it, newest first."""
        target = await self.resolve(text)
        head = await self.s3.describe_object(target.key)
        operations: list[OperationRecord] = []
        if self.store is not None:
            operations = await self.store.find_operations_on(
                bucket=target.bucket,
                key=target.key,
                target_path=target.url,
                target_name=target.name if target.found_by == "name" else None,
            )
        return ObjectStatus(target, head, operations)

    # -- recording -------------------------------------------------------------------------------------------------

    def new_record(self, operation_type: str, target: Target, command_args: dict[str, Any] | None) -> OperationRecord:
        return OperationRecord(
            operation_id=new_operation_id(),
            operation_type=operation_type,
            target_path=target.url,
            target_name=target.name,
            started_at=utcnow(),
            user=current_user(),
            command_args=dict(command_args or {}),
            metadata={"bucket": target.bucket, "key": target.key},
        )

    async def save_record(self, record: OperationRecord) -> None:
        if self.store is None:
            return
        # Shielded and time-bounded: a cancelled command still leaves its record.
        with anyio.move_on_after(SAVE_TIMEOUT, shield=True):
            await self.store.save_operation(record)

    async def finish_failed(self, record: OperationRecord, exc: BaseException) -> None:
        cancelled = isinstance(exc, anyio.get_cancelled_exc_class()) or isinstance(exc, KeyboardInterrupt)
        record.finish(
            OperationStatus.CANCELLED if cancelled else OperationStatus.FAILED,
            error="interrupted" if cancelled else " ".join(str(exc).split()),
        )
        await self.save_record(record)

    # -- downloading -----------------------------------------------------------------------------------------------

    async def download(
        self,
        text: str,
        options: DownloadOptions,
        *,
        reporter: DownloadReporter | None = None,
        command_args: dict[str, Any] | None = None,
    ) -> DownloadOutcome:
        """See `download_object`: restore when archived, ranged GETs, verification, kept or extracted, recorded."""
        return await download_object(self, text, options, reporter=reporter, command_args=command_args)

    # -- deleting --------------------------------------------------------------------------------------------------

    async def plan_delete(self, text: str) -> DeletePlan:
        """What `delete` would remove; NotFoundError when the object does not exist."""
        target = await self.resolve(text)
        head = await self.head(target)
        uploads = await self.store.find_uploads_by_key(bucket=target.bucket, key=target.key) if self.store else []
        return DeletePlan(target, head, uploads)

    async def delete(self, plan: DeletePlan, *, command_args: dict[str, Any] | None = None) -> OperationRecord:
        """Delete the object; its upload records stay, their S3 file record marked deleted; a "delete" is recorded."""
        target = plan.target
        record = self.new_record("delete", target, command_args)
        record.metadata |= {
            "size": plan.head.size,
            "etag": plan.head.etag,
            "storage_class": plan.head.storage_class,
            "upload_operation_ids": [u.operation_id for u in plan.uploads],
        }
        try:
            await self.s3.delete_object(target.key)
        except BaseException as exc:
            await self.finish_failed(record, exc)
            raise
        record.finish(OperationStatus.SUCCESS)
        record.result_path = target.url
        with anyio.move_on_after(SAVE_TIMEOUT, shield=True):
            for upload in plan.uploads:
                if upload.s3_file_record is None:
                    continue
                upload.s3_file_record.status = FileStatus.DELETED
                upload.s3_file_record.tags["deleted_by_operation_id"] = record.operation_id
                upload.s3_file_record.tags["deleted_at"] = iso_utc(record.completed_at or utcnow())
                if self.store is not None:
                    await self.store.save_operation(upload)
            await self.save_record(record)
        return record
