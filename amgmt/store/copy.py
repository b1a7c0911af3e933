"""Copying one store's records into another (`amgmt db migrate --to URL`: a SQLite history into PostgreSQL): every
operation with its file records, and the whole multipart journal, written as upserts (a second copy changes
nothing), then counted again in the target. Works between any two Stores; decides nothing about which."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from amgmt.errors import StoreError
from amgmt.store.base import JOURNAL_PART, Store

_BATCH = 500  # records per transaction, and ids per counting query

JOURNAL_UPLOAD_AS_IS = (
    "INSERT INTO multipart_uploads (upload_id, operation_id, bucket, object_key, archive_sha256, part_size,"
    " part_count, state, created_at, checksum_algorithm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (upload_id) DO UPDATE SET state = excluded.state"
)
_UPLOAD_COLUMNS = (
    "upload_id",
    "operation_id",
    "bucket",
    "object_key",
    "archive_sha256",
    "part_size",
    "part_count",
    "state",
    "created_at",
    "checksum_algorithm",
)
_PART_COLUMNS = ("upload_id", "part_number", "size", "md5", "etag", "checksum")


@dataclass(frozen=True)
class CopyReport:
    """What was copied, counted in the source, and found in the target afterwards (equal when verified)."""

    operations: int
    file_records: int
    multipart_uploads: int
    upload_parts: int
    found_operations: int
    found_file_records: int
    found_multipart_uploads: int
    found_upload_parts: int

    @property
    def verified(self) -> bool:
        return (self.operations, self.file_records, self.multipart_uploads, self.upload_parts) == (
            self.found_operations,
            self.found_file_records,
            self.found_multipart_uploads,
            self.found_upload_parts,
        )


async def copy_records(source: Store, target: Store) -> CopyReport:
    """Every record and journal row of `source` into `target` (both open), oldest first; then the target is
    counted for exactly the source's ids. Records without a host get the target's `host_id` (the host whose
    history this is). StoreError when a count differs."""
    records = list(reversed(await source.list_operations(limit=None)))  # oldest first: the target's rowid order
    for start in range(0, len(records), _BATCH):
        await target.save_operations(records[start : start + _BATCH])
    uploads = await source._fetch("read the multipart journal", "SELECT * FROM multipart_uploads", [])
    parts = await source._fetch("read the multipart journal", "SELECT * FROM upload_parts", [])
    for upload in sorted(uploads, key=lambda u: str(u["created_at"])):
        await target._execute(
            f"copy journaled upload {str(upload['upload_id'])[:12]}",
            JOURNAL_UPLOAD_AS_IS,
            [upload[c] for c in _UPLOAD_COLUMNS],
        )
    for part in parts:
        await target._execute(f"copy part {part['part_number']}", JOURNAL_PART, [part[c] for c in _PART_COLUMNS])

    ids = [r.operation_id for r in records]
    upload_ids = [str(u["upload_id"]) for u in uploads]
    file_count = (await source._fetch("count file records", "SELECT count(*) AS n FROM file_records", []))[0]["n"]
    report = CopyReport(
        operations=len(records),
        file_records=int(file_count),
        multipart_uploads=len(uploads),
        upload_parts=len(parts),
        found_operations=await _count(target, "operations", "operation_id", ids),
        found_file_records=await _count(target, "file_records", "operation_id", ids),
        found_multipart_uploads=await _count(target, "multipart_uploads", "upload_id", upload_ids),
        found_upload_parts=await _count(target, "upload_parts", "upload_id", upload_ids),
    )
    if not report.verified:
        raise StoreError(
            f"copied into {target.where}, but its counts differ from {source.where}'s: "
            f"{report.found_operations}/{report.operations} operations, "
            f"{report.found_file_records}/{report.file_records} file records, "
            f"{report.found_multipart_uploads}/{report.multipart_uploads} multipart uploads, "
            f"{report.found_upload_parts}/{report.upload_parts} parts"
        )
    return report


async def _count(store: Store, table: str, column: str, ids: Sequence[str]) -> int:
    total = 0
    for start in range(0, len(ids), _BATCH):
        chunk = list(ids[start : start + _BATCH])
        marks = ", ".join("?" for _ in chunk)
        rows: list[dict[str, Any]] = await store._fetch(
            f"count {table}", f"SELECT count(*) AS n FROM {table} WHERE {column} IN ({marks})", chunk
        )
        total += int(rows[0]["n"])
    return total
