"""The records of one upload as its stages fill them: the four FileRecords (source, compressed, s3, completed), the
UploadRecord fields each stage sets, and the multipart journal adapter. No I/O except the journal's store writes."""

from __future__ import annotations

import mimetypes
import os
from datetime import UTC, datetime
from pathlib import Path

from amgmt.local.archive import ArchiveResult
from amgmt.local.entries import PlannedEntry
from amgmt.models import FileRecord, FileStatus, Location, UploadRecord, utcnow
from amgmt.naming import display
from amgmt.s3 import ObjectInfo, PartDone
from amgmt.store import JournaledPart, JournaledUpload, Store
from amgmt.text import iso_utc


class StoreJournal:
    """The multipart journal of one entry's upload, written to the metadata store as parts finish."""

    def __init__(
        self, store: Store, record: UploadRecord, archive: ArchiveResult, *, checksum_algorithm: str | None
    ) -> None:
        self.store = store
        self.record = record
        self.archive = archive
        self.checksum_algorithm = checksum_algorithm

    async def started(self, upload_id: str) -> None:
        self.record.metadata["upload_id"] = upload_id
        await self.store.journal_multipart(
            JournaledUpload(
                upload_id=upload_id,
                operation_id=self.record.operation_id,
                bucket=self.record.s3_bucket,
                key=self.record.s3_object_key,
                archive_sha256=self.archive.archive_sha256,
                part_size=self.archive.part_size,
                part_count=self.archive.part_count,
                checksum_algorithm=self.checksum_algorithm,
            )
        )
        await self.store.save_operation(self.record)

    async def part_done(self, upload_id: str, part: PartDone) -> None:
        await self.store.journal_part(
            upload_id, JournaledPart(part.number, part.size, part.md5, part.etag, part.checksum)
        )

    async def finished(self, upload_id: str, state: str) -> None:
        await self.store.journal_multipart_state(upload_id, state)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def source_file_record(planned: PlannedEntry, st: os.stat_result) -> FileRecord:
    """Stage 1: the entry as it was listed (size and file count from the plan, times from its lstat)."""
    entry = planned.path
    return FileRecord(
        name=display(entry.name),
        path=display(entry),
        location=Location.LOCAL,
        size=planned.size,
        is_directory=planned.is_directory,
        mime_type=None if planned.is_directory else mimetypes.guess_type(entry.name)[0],
        created_at=_dt(st.st_ctime),
        modified_at=_dt(st.st_mtime),
        accessed_at=_dt(st.st_atime),
        status=FileStatus.PENDING,
        tags={"file_count": str(planned.file_count)},
    )


def record_archive(record: UploadRecord, archive: ArchiveResult, staging: Path) -> None:
    """Stage 3: the archive's sizes and digests, the source's identity, and the compressed FileRecord."""
    record.compressed_size = archive.archive_size
    record.compressed_file_path = display(staging)
    record.checksum_original = archive.source_sha256
    record.metadata["source_identity"] = archive.source_identity.to_dict()
    record.checksum_compressed = archive.archive_sha256
    record.part_size = archive.part_size
    record.part_count = archive.part_count
    record.compression_ratio = round(record.original_size / archive.archive_size, 4) if archive.archive_size else None
    if record.source_file_record:
        record.source_file_record.checksum = f"sha256:{archive.source_sha256}"
        if archive.skipped:
            record.source_file_record.tags["skipped_special_files"] = str(len(archive.skipped))
    record.compressed_file_record = FileRecord(
        name=staging.name,
        path=display(staging),
        location=Location.LOCAL,
        size=archive.archive_size,
        is_directory=False,
        mime_type="application/gzip",
        modified_at=utcnow(),
        checksum=f"sha256:{archive.archive_sha256}",
        status=FileStatus.PENDING,
        tags={"part_size": str(archive.part_size), "part_count": str(archive.part_count)},
    )


def s3_file_record(record: UploadRecord, archive: ArchiveResult) -> FileRecord:
    """Stage 4: the object about to be written (uploading)."""
    key = record.s3_object_key
    return FileRecord(
        name=key.rsplit("/", 1)[-1],
        path=key,
        location=Location.S3,
        size=archive.archive_size,
        is_directory=False,
        mime_type="application/gzip",
        status=FileStatus.UPLOADING,
        tags={
            "original_path": record.target_path,
            "original_size": str(record.original_size),
            "compression_type": "gzip",
            "s3_bucket": record.s3_bucket,
            "upload_operation_id": record.operation_id,
        },
    )


def record_verified(record: UploadRecord, info: ObjectInfo, method: str) -> None:
    """Stage 5: how the object was proven, and what the server says of it."""
    record.verification_method = method
    record.checksum_s3_etag = info.etag
    record.checksum_s3 = info.checksum.text if info.checksum else None
    record.s3_storage_class = info.storage_class
    record.compressed_size = info.size
    if record.s3_file_record:
        record.s3_file_record.status = FileStatus.COMPLETED
        record.s3_file_record.checksum = f"etag:{info.etag}"
        record.s3_file_record.modified_at = info.last_modified or utcnow()
        record.s3_file_record.tags["verified_by"] = method


def record_moved(record: UploadRecord, final: Path) -> None:
    """Stage 6: where the original went, and the completed FileRecord."""
    record.completed_dir_path = display(final)
    source = record.source_file_record
    record.completed_file_record = FileRecord(
        name=display(final.name),
        path=display(final),
        location=Location.COMPLETED,
        size=record.original_size,
        is_directory=bool(source and source.is_directory),
        checksum=source.checksum if source else None,
        status=FileStatus.COMPLETED,
        modified_at=utcnow(),
        tags={
            "s3_bucket": record.s3_bucket,
            "s3_object_key": record.s3_object_key,
            "upload_operation_id": record.operation_id,
            "upload_timestamp": iso_utc(utcnow()),
        },
    )
    if source:
        source.status = FileStatus.COMPLETED
        source.tags["moved_to"] = display(final)
