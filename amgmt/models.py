"""The records of the user's design (seed-upload-process.md): FileRecord, OperationRecord, UploadRecord.

Plain values with JSON-friendly (de)serialisation; no I/O here. Field names are the seed's, kept exactly,
because `history --json` and the database expose them. Additions over the seed are marked "(amgmt)".
"""

from __future__ import annotations

import dataclasses
import getpass
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from amgmt.text import iso_utc


class Location(StrEnum):
    LOCAL = "local"
    S3 = "s3"
    COMPLETED = "completed"


class FileStatus(StrEnum):
    PENDING = "pending"
    UPLOADING = "uploading"
    COMPLETED = "completed"
    FAILED = "failed"
    DELETED = "deleted"


class OperationStatus(StrEnum):
    PENDING = "pending"  # (amgmt) recorded, stages running; a crash leaves it so
    SUCCESS = "success"
    FAILED = "failed"
    PARTIAL = "partial"  # uploaded and verified, but the original could not be moved
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # (amgmt) a duplicate: nothing uploaded, nothing moved
    # (amgmt) uploaded and verified, but the source changed (or vanished) after it was packed: the object holds it as
    # packed, the original stays local (or was put back), and the next run uploads the new content
    CHANGED = "changed"


class Stage(StrEnum):
    """(amgmt) The eight stages; `UploadRecord.stage` names the last one reached."""

    VALIDATE = "validate"
    RECORD = "record"
    COMPRESS = "compress"
    UPLOAD = "upload"
    VERIFY = "verify"
    MOVE = "move"
    PERSIST = "persist"
    CLEANUP = "cleanup"
    DONE = "done"


class FileRole(StrEnum):
    """(amgmt) Which of the four FileRecords of an upload a row is."""

    SOURCE = "source"
    COMPRESSED = "compressed"
    S3 = "s3"
    COMPLETED = "completed"


def utcnow() -> datetime:
    return datetime.now(UTC)


def current_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def new_operation_id() -> str:
    return str(uuid.uuid4())


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, StrEnum):
        return str(value)
    return value


def _decode_dt(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


@dataclass
class FileRecord:
    """A file or directory at one stage of its lifecycle (local source, staging archive, S3 object, completed)."""

    name: str
    path: str
    location: str
    size: int
    is_directory: bool
    mime_type: str | None = None
    created_at: datetime | None = None
    modified_at: datetime | None = None
    accessed_at: datetime | None = None
    checksum: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    status: str = FileStatus.PENDING
    error_message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("created_at", "modified_at", "accessed_at"):
            values[key] = _decode_dt(values.get(key))
        values["is_directory"] = bool(values.get("is_directory", False))
        values["tags"] = dict(values.get("tags") or {})
        return cls(**values)


@dataclass(kw_only=True)
class OperationRecord:
    """Any operation on a target (upload, download, delete, ...)."""

    operation_id: str
    operation_type: str
    target_path: str
    target_name: str
    started_at: datetime
    completed_at: datetime | None = None
    duration_seconds: float | None = None
    status: str = OperationStatus.PENDING
    result_path: str | None = None
    error_message: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    user: str | None = None
    command_args: dict[str, Any] = field(default_factory=dict)
    host_id: str | None = None  # (amgmt) MGMT_HOST_ID of the host that made it; None on records from before

    def finish(self, status: OperationStatus, *, error: str | None = None, when: datetime | None = None) -> None:
        """Close the operation: final status, completion time and duration."""
        self.status = status
        self.completed_at = when or utcnow()
        self.duration_seconds = round((self.completed_at - self.started_at).total_seconds(), 6)
        if error is not None:
            self.error_message = error

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, FileRecord) else _encode(value)
        return out


@dataclass(kw_only=True)
class UploadRecord(OperationRecord):
    """An upload: the seed's fields, plus what verification and resume need (marked (amgmt))."""

    operation_type: str = "upload"
    compression_type: str | None = "gzip"
    original_size: int = 0
    compressed_size: int | None = None
    compression_ratio: float | None = None
    s3_bucket: str = ""
    s3_object_key: str = ""
    s3_storage_class: str | None = None
    checksum_original: str | None = None  # SHA-256 of the source (directory: of its sorted manifest)
    checksum_compressed: str | None = None  # SHA-256 of the tar.gz
    checksum_s3_etag: str | None = None
    checksum_s3: str | None = None  # (amgmt) the object's flexible checksum from HEAD: "crc64nvme:BASE64", ...
    completed_dir_path: str | None = None
    compressed_file_path: str | None = None
    source_file_record: FileRecord | None = None
    compressed_file_record: FileRecord | None = None
    s3_file_record: FileRecord | None = None
    completed_file_record: FileRecord | None = None
    # (amgmt) where the entry got to, and how the object was proven intact
    stage: str = Stage.VALIDATE
    # "crc64nvme" | "crc32c" | "sha256" (the stored checksum), "etag" or "sha256-readback"
    verification_method: str | None = None
    part_size: int | None = None
    part_count: int | None = None

    def __post_init__(self) -> None:
        self.operation_type = "upload"
        if self.metadata is None:
            self.metadata = {}
        self.sync_metadata()

    def sync_metadata(self) -> None:
        """Mirror the upload-specific fields into `metadata`, as the seed does for serialisation."""
        self.metadata.update(
            {
                "compression_type": self.compression_type,
                "original_size": self.original_size,
                "compressed_size": self.compressed_size,
                "s3_bucket": self.s3_bucket,
                "s3_object_key": self.s3_object_key,
            }
        )

    def file_records(self) -> dict[FileRole, FileRecord]:
        roles = {
            FileRole.SOURCE: self.source_file_record,
            FileRole.COMPRESSED: self.compressed_file_record,
            FileRole.S3: self.s3_file_record,
            FileRole.COMPLETED: self.completed_file_record,
        }
        return {role: rec for role, rec in roles.items() if rec is not None}

    def set_file_record(self, role: FileRole, record: FileRecord) -> None:
        setattr(self, f"{role.value}_file_record", record)


OPERATION_FIELDS = tuple(f.name for f in dataclasses.fields(OperationRecord))
UPLOAD_FIELDS = tuple(f.name for f in dataclasses.fields(UploadRecord) if not f.name.endswith("_file_record"))


def operation_from_dict(data: dict[str, Any]) -> OperationRecord:
    """Rebuild an OperationRecord (an UploadRecord for uploads) from `to_dict()` output or a store row."""
    is_upload = data.get("operation_type") == "upload"
    cls = UploadRecord if is_upload else OperationRecord
    names = UPLOAD_FIELDS if is_upload else OPERATION_FIELDS
    values = {k: data[k] for k in names if k in data}
    values["started_at"] = _decode_dt(values["started_at"])
    values["completed_at"] = _decode_dt(values.get("completed_at"))
    values["metadata"] = dict(values.get("metadata") or {})
    values["command_args"] = dict(values.get("command_args") or {})
    record = cls(**values)
    if isinstance(record, UploadRecord):
        for role in FileRole:
            raw = data.get(f"{role.value}_file_record")
            if raw:
                record.set_file_record(role, FileRecord.from_dict(raw))
    return record
