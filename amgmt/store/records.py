"""The store's rows and the records they hold: the journal and summary values, the columns, and the mapping between a
row and an OperationRecord (`records_from_rows`; `select_operations` reads them back with plain sqlite3 in the
caller's transaction). The SQL here is written once for both backends (`?` parameters; amgmt.store.dialect turns it
into PostgreSQL's)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from amgmt.errors import StoreError
from amgmt.models import (
    UPLOAD_FIELDS,
    FileRecord,
    FileRole,
    OperationRecord,
    UploadRecord,
    operation_from_dict,
)


@dataclass(frozen=True)
class JournaledPart:
    number: int
    size: int
    md5: str
    etag: str
    checksum: str | None = None


@dataclass(frozen=True)
class JournaledUpload:
    upload_id: str
    operation_id: str
    bucket: str
    key: str
    archive_sha256: str
    part_size: int
    part_count: int
    parts: tuple[JournaledPart, ...] = ()
    created_at: datetime | None = None  # when it was journaled (this machine's clock); None before it is
    checksum_algorithm: str | None = None  # the flexible checksum it was created with; None: Content-MD5 only


@dataclass(frozen=True)
class UploadSummary:
    """The columns of one upload that listings and statistics need, without its FileRecords."""

    operation_id: str
    target_name: str
    target_path: str
    status: str
    stage: str | None
    started_at: datetime
    duration_seconds: float | None
    original_size: int | None
    compressed_size: int | None
    s3_bucket: str | None
    s3_object_key: str | None
    error_message: str | None
    source_modified_at: datetime | None  # the source's mtime when it was uploaded (its FileRecord's modified_at)


@dataclass(frozen=True)
class HostActivity:
    """One host's uploads as the catalog holds them (`amgmt fleet`): when it last did anything, what it has pending
    (in flight, or left by a run that died), and what ended in the window asked for."""

    host_id: str | None  # None: operations saved before amgmt recorded hosts
    last_seen: datetime  # the newest start or end of any of its uploads
    pending: int
    done: int  # success, in the window
    failed: int  # failed, partial or cancelled, in the window
    bytes_done: int  # source bytes of the successes in the window


@dataclass(frozen=True)
class RunLease:
    """One run in a catalog several runs share: who it is and which local dir it works on (its `dir_identity`)."""

    run_id: str
    dir_id: str
    host_id: str | None
    pid: int
    local_dir: str  # as this host names it


@dataclass(frozen=True)
class Claimed:
    """An entry a run got the claim of; `previous_run`/`previous_operation`: whose lapsed claim it took over."""

    entry: str
    previous_run: str | None = None
    previous_operation: str | None = None


@dataclass(frozen=True)
class RunSeen:
    """A run as the catalog holds it (`amgmt fleet`); times in seconds since the epoch by the database's clock."""

    run_id: str
    dir_id: str
    host_id: str | None
    pid: int
    local_dir: str
    started_at: float
    heartbeat_at: float
    ended_at: float | None
    alive: bool  # its lease still runs
    in_flight: int  # entries it holds the claim of now
    now: float  # the database's clock when read


def run_seen(row: Mapping[str, Any]) -> RunSeen:
    return RunSeen(
        run_id=row["run_id"],
        dir_id=row["dir_id"],
        host_id=row["host_id"],
        pid=int(row["pid"]),
        local_dir=row["local_dir"],
        started_at=float(row["started_at"]),
        heartbeat_at=float(row["heartbeat_at"]),
        ended_at=None if row["ended_at"] is None else float(row["ended_at"]),
        alive=bool(row["alive"]),
        in_flight=int(row["in_flight"]),
        now=float(row["now"]),
    )


_IN_CHUNK = 500  # ids per `IN (...)` query, well under SQLite's bound-parameter limit

OPERATION_COLUMNS: tuple[str, ...] = UPLOAD_FIELDS
FILE_COLUMNS: tuple[str, ...] = ("operation_id", "role", *(f.name for f in dataclasses.fields(FileRecord)))


def _upsert_sql(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    # ON CONFLICT DO UPDATE, not INSERT OR REPLACE: a replace deletes the row first, and the delete would cascade
    # to the operation's file records.
    # Column names quoted: `user` is a reserved word in PostgreSQL.
    quoted = [f'"{c}"' for c in columns]
    updates = ", ".join(f"{q} = excluded.{q}" for c, q in zip(columns, quoted, strict=True) if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(quoted)}) VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


UPSERT_OPERATION = _upsert_sql("operations", OPERATION_COLUMNS, ["operation_id"])
UPSERT_FILE_RECORD = _upsert_sql("file_records", FILE_COLUMNS, ["operation_id", "role"])


def operation_row(record: OperationRecord) -> list[Any]:
    """The `operations` row of a record, in OPERATION_COLUMNS order."""
    # A plain OperationRecord lacks the upload fields: those columns get NULL.
    return [to_column(getattr(record, column, None)) for column in OPERATION_COLUMNS]


def file_row(operation_id: str, role: FileRole, record: FileRecord) -> list[Any]:
    """The `file_records` row of one of an upload's FileRecords."""
    values = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    values |= {"operation_id": operation_id, "role": role.value}
    return [to_column(values[column]) for column in FILE_COLUMNS]


def select_operations(
    conn: sqlite3.Connection, tail: str, params: Sequence[Any], *, path: Path
) -> list[OperationRecord]:
    """Operations `SELECT * FROM operations <tail>`, uploads with their file records attached (in one transaction).
    `path` (the database) is for the message of an unreadable row."""
    rows = [dict(r) for r in conn.execute(operations_sql(tail), params).fetchall()]
    file_rows = [
        dict(found)
        for chunk in upload_id_chunks(rows)
        for found in conn.execute(file_records_sql(len(chunk)), chunk).fetchall()
    ]
    return records_from_rows(rows, file_rows, path)


def operations_sql(tail: str) -> str:
    return f"SELECT * FROM operations {tail}"


def file_records_sql(count: int) -> str:
    """The file records of `count` operations (`upload_id_chunks` gives their ids)."""
    return f"SELECT * FROM file_records WHERE operation_id IN ({', '.join('?' for _ in range(count))})"


def upload_id_chunks(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The ids of the uploads among `operations` rows, in chunks of at most _IN_CHUNK."""
    ids = [r["operation_id"] for r in rows if r["operation_type"] == "upload"]
    return [ids[start : start + _IN_CHUNK] for start in range(0, len(ids), _IN_CHUNK)]


def records_from_rows(
    rows: Sequence[dict[str, Any]], file_rows: Sequence[dict[str, Any]], where: object
) -> list[OperationRecord]:
    """The records of `operations` rows (dicts), with their `file_records` rows attached; `where` (the database)
    is for the message of an unreadable row."""
    files: dict[str, dict[str, dict[str, Any]]] = {}
    for found in file_rows:
        files.setdefault(found["operation_id"], {})[found["role"]] = found
    return [_record(row, files.get(row["operation_id"], {}), where) for row in rows]


def _record(row: dict[str, Any], files: dict[str, dict[str, Any]], path: object) -> OperationRecord:
    try:
        row["metadata"] = json.loads(row["metadata"] or "{}")
        row["command_args"] = json.loads(row["command_args"] or "{}")
        for role, found in files.items():
            found["tags"] = json.loads(found["tags"] or "{}")
            row[f"{FileRole(role).value}_file_record"] = found
        return operation_from_dict(row)
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(
            f"metadata database {path}: operation {row.get('operation_id')} has an unreadable row: {exc}"
        ) from exc


def operation_filters(
    *,
    status: str | None,
    operation_type: str | None,
    since: datetime | None,
    until: datetime | None,
    target: str | None,
    location: str | None,
    host: str | None = None,
) -> tuple[list[str], list[Any]]:
    """The WHERE clauses of `MetadataStore.list_operations` and their parameters (a filter left None adds none)."""
    clauses: list[str] = []
    params: list[Any] = []
    if status is not None:
        clauses.append("status = ?")
        params.append(str(status))
    if operation_type is not None:
        clauses.append("operation_type = ?")
        params.append(str(operation_type))
    if since is not None:
        clauses.append("started_at >= ?")
        params.append(utc_iso(since))
    if until is not None:
        clauses.append("started_at < ?")
        params.append(utc_iso(until))
    if target is not None:
        clauses.append("(instr(amgmt_fold(target_name), ?) > 0 OR instr(amgmt_fold(target_path), ?) > 0)")
        params += [fold(target)] * 2
    if host is not None:
        clauses.append("host_id = ?")
        params.append(host)
    if location is not None:
        # `|| ''`: the operation's own file records (at most four, by the primary key), not every file record at
        # that location for each row (SQLite's choice without statistics: 58 s on 1,000,000 operations).
        clauses.append(
            "EXISTS (SELECT 1 FROM file_records AS f WHERE f.operation_id = operations.operation_id"
            " AND f.location || '' = ?)"
        )
        params.append(str(location))
    return clauses, params


def journaled_upload(row: Mapping[str, Any], parts: Sequence[Mapping[str, Any]]) -> JournaledUpload:
    """A `multipart_uploads` row with its `upload_parts` rows."""
    return JournaledUpload(
        upload_id=row["upload_id"],
        operation_id=row["operation_id"],
        bucket=row["bucket"],
        key=row["object_key"],
        archive_sha256=row["archive_sha256"],
        part_size=row["part_size"],
        part_count=row["part_count"],
        parts=tuple(JournaledPart(p["part_number"], p["size"], p["md5"], p["etag"], p["checksum"]) for p in parts),
        created_at=decode_time(row["created_at"]),
        checksum_algorithm=row["checksum_algorithm"],
    )


def upload_summary(row: Mapping[str, Any], *, path: object) -> UploadSummary:
    """An UploadSummary from its query's row (`path`, the database, is for the message of an unreadable row)."""
    try:
        return UploadSummary(
            **{
                **dict(row),
                "started_at": datetime.fromisoformat(row["started_at"]),
                "source_modified_at": decode_time(row["source_modified_at"]),
            }
        )
    except (ValueError, TypeError) as exc:
        raise StoreError(f"metadata database {path}: an upload has an unreadable row: {exc}") from exc


def to_column(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, dict):
        # default=str: a value JSON cannot hold (a Path in command_args) is kept as text rather than failing a save.
        text = json.dumps(value, ensure_ascii=False, default=str)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes of a file name (surrogates): JSON escapes keep them
            text = json.dumps(value, ensure_ascii=True, default=str)
        return text
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, StrEnum):
        return value.value
    return value


def utc_iso(value: datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} cannot be stored: use an aware (UTC) datetime")
    # Fixed width (always microseconds, always +00:00), so that comparing the text compares the times.
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def decode_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def fold(value: Any) -> str | None:
    """Case- and normalisation-insensitive form of a name (SQLite's own lower() only folds ASCII)."""
    if value is None:
        return None
    return unicodedata.normalize("NFC", str(value)).casefold()


def as_upload(record: OperationRecord) -> UploadRecord:
    assert isinstance(record, UploadRecord), record.operation_type
    return record
