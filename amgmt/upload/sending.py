"""Sending one entry's archive: the upload (single PUT or multipart, resumed where the journal allows) with its
metadata, and what it cost counted into the record. What may be sent over what is ownership.py's decision."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from amgmt import checksums
from amgmt.errors import UploadError
from amgmt.local.archive import ArchiveResult
from amgmt.models import UploadRecord
from amgmt.s3 import (
    METADATA_ARCHIVE_SHA256,
    METADATA_SOURCE_SHA256,
    METADATA_SOURCE_SIZE,
    ByteBudget,
    ObjectOptions,
    ProgressCallback,
    S3Bucket,
    UploadResult,
    UploadStats,
    upload_file,
)
from amgmt.s3.multipart import Fence
from amgmt.store import Store
from amgmt.upload.ownership import operation_ended
from amgmt.upload.records import StoreJournal


@dataclass
class ArchiveSender:
    """Sends `archive` (staged at `staging`) to the record's key."""

    s3: S3Bucket
    store: Store
    budget: ByteBudget
    storage_class: str | None
    record: UploadRecord
    archive: ArchiveResult
    staging: Path
    on_progress: ProgressCallback
    options: ObjectOptions = ObjectOptions()  # MGMT_SSE, MGMT_ACL, MGMT_TAGS, MGMT_METADATA...
    # part number -> (ETag, checksum) as the journal of the upload resumable_upload chose recorded them
    journaled_parts: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    fence: Fence | None = None  # awaited right before the request that makes the object (upload/claims.py)

    async def send(self, resume: str | None, *, if_absent: bool, takeover: str | None) -> UploadResult:
        """The archive sent (or its upload resumed), what it cost counted into the record."""
        stats = UploadStats()
        record = self.record
        described = self.options.describe()
        if described:
            record.metadata["object_options"] = described
        try:
            return await self._upload_file(resume, stats, if_absent=if_absent, takeover=takeover)
        finally:
            metadata = record.metadata
            metadata["retries"] = metadata.get("retries", 0) + stats.retries
            metadata["parts_sent"] = metadata.get("parts_sent", 0) + stats.parts_sent
            metadata["parts_reused"] = metadata.get("parts_reused", 0) + stats.parts_reused
            if stats.resumed_upload_id:
                metadata["resumed_upload_id"] = stats.resumed_upload_id

    async def checksum(self) -> str | None:
        """The flexible checksum this archive is sent and verified with (probe.py), None for Content-MD5 only."""
        support = await self.s3.checksum_support()
        return support.sends(multipart=self.archive.part_count > 1)

    def _part_checksums(self, algorithm: str | None) -> tuple[str, ...]:
        """The parts' checksums the packing pass computed already: its CRC64NVMEs, or for a single part sent with
        SHA-256, the archive's SHA-256 itself. Others are computed as the parts are read (once each)."""
        archive = self.archive
        if algorithm == checksums.CRC64NVME:
            return archive.part_crc64nvmes
        if algorithm == checksums.SHA256 and archive.part_count == 1:
            return (checksums.sha256_value(archive.archive_sha256),)
        return ()

    async def _upload_file(
        self, resume: str | None, stats: UploadStats, *, if_absent: bool, takeover: str | None
    ) -> UploadResult:
        record = self.record
        algorithm = await self.checksum()
        return await upload_file(
            self.s3,
            record.s3_object_key,
            str(self.staging),
            size=self.archive.archive_size,
            part_size=self.archive.part_size,
            part_md5s=self.archive.part_md5s,
            metadata={
                METADATA_SOURCE_SHA256: self.archive.source_sha256,
                METADATA_ARCHIVE_SHA256: self.archive.archive_sha256,
                METADATA_SOURCE_SIZE: str(record.original_size),
            },
            storage_class=self.storage_class,
            budget=self.budget,
            on_progress=self.on_progress,
            journal=StoreJournal(self.store, record, self.archive, checksum_algorithm=algorithm),
            resume_upload_id=resume,
            stats=stats,
            if_absent=if_absent,
            owner=record.operation_id,
            takeover=takeover,
            checksum=algorithm,
            part_checksums=self._part_checksums(algorithm),
            payload_sha256=self.archive.archive_sha256,  # the single PUT's body is the whole archive
            options=self.options,
            journaled_parts=self.journaled_parts if resume else None,
            fence=self.fence,
        )

    async def resumable_upload(self) -> str | None:
        """An interrupted multipart upload of this very archive to resume; stale ones of other content are aborted."""
        record = self.record
        resume = None
        algorithm = await self.checksum()
        for journaled in await self.store.open_multiparts(bucket=record.s3_bucket, key=record.s3_object_key):
            if not await operation_ended(self.store, journaled.operation_id):
                continue  # a run in progress elsewhere (sharing this database) owns it: never touched
            # Created for another checksum (or none): its complete would have to name that one; start afresh.
            same = (journaled.archive_sha256, journaled.part_size, journaled.checksum_algorithm) == (
                self.archive.archive_sha256,
                self.archive.part_size,
                algorithm,
            )
            if same and resume is None:
                resume = journaled.upload_id
                self.journaled_parts = {p.number: (p.etag, p.checksum) for p in journaled.parts}
                continue
            with contextlib.suppress(UploadError):
                await self.s3.abort_multipart(record.s3_object_key, journaled.upload_id)
            await self.store.journal_multipart_state(journaled.upload_id, "aborted")
        return resume
