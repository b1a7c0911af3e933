"""The metadata database: its SQLite schema, migrations and connection, and saving and querying OperationRecords.
The only module importing sqlite3/aiosqlite; it never decides what to record, and no database error leaves it raw."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import json
import os
import sqlite3
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiosqlite
import anyio

from amgmt.errors import NotFoundError, StoreError
from amgmt.models import (
    UPLOAD_FIELDS,
    FileRecord,
    FileRole,
    OperationRecord,
    OperationStatus,
    UploadRecord,
    operation_from_dict,
)

# Migration N (1-based) is MIGRATIONS[N - 1]; `PRAGMA user_version` counts those applied. Never edit a released
# entry: append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE operations (
        operation_id        TEXT PRIMARY KEY,
        operation_type      TEXT NOT NULL,
        target_path         TEXT NOT NULL,
        target_name         TEXT NOT NULL,
        started_at          TEXT NOT NULL,  -- ISO-8601 UTC, fixed width, so text order is time order
        completed_at        TEXT,
        duration_seconds    REAL,
        status              TEXT NOT NULL,
        result_path         TEXT,
        error_message       TEXT,
        metadata            TEXT NOT NULL DEFAULT '{}',  -- JSON
        user                TEXT,
        command_args        TEXT NOT NULL DEFAULT '{}',  -- JSON
        -- upload-only columns, NULL for other operation types
        compression_type    TEXT,
        original_size       INTEGER,
        compressed_size     INTEGER,
        compression_ratio   REAL,
        s3_bucket           TEXT,
        s3_object_key       TEXT,
        s3_storage_class    TEXT,
        checksum_original   TEXT,
        checksum_compressed TEXT,
        checksum_s3_etag    TEXT,
        completed_dir_path  TEXT,
        compressed_file_path TEXT,
        stage               TEXT,
        verification_method TEXT,
        part_size           INTEGER,
        part_count          INTEGER
    );
    CREATE INDEX ix_operations_status ON operations (status);
    CREATE INDEX ix_operations_type ON operations (operation_type);
    CREATE INDEX ix_operations_started_at ON operations (started_at);
    CREATE INDEX ix_operations_checksum_original ON operations (checksum_original);
    CREATE INDEX ix_operations_s3_key ON operations (s3_bucket, s3_object_key);
    CREATE INDEX ix_operations_target_name ON operations (target_name);

    CREATE TABLE file_records (
        operation_id  TEXT NOT NULL REFERENCES operations (operation_id) ON DELETE CASCADE,
        role          TEXT NOT NULL CHECK (role IN ('source', 'compressed', 's3', 'completed')),
        name          TEXT NOT NULL,
        path          TEXT NOT NULL,
        location      TEXT NOT NULL,
        size          INTEGER NOT NULL,
        is_directory  INTEGER NOT NULL,
        mime_type     TEXT,
        created_at    TEXT,
        modified_at   TEXT,
        accessed_at   TEXT,
        checksum      TEXT,
        tags          TEXT NOT NULL DEFAULT '{}',  -- JSON
        status        TEXT NOT NULL,
        error_message TEXT,
        PRIMARY KEY (operation_id, role)
    );
    CREATE INDEX ix_file_records_location ON file_records (location);
    """,
    # 2: the multipart journal, so an interrupted upload can be resumed by a later run.
    """
    CREATE TABLE multipart_uploads (
        upload_id      TEXT PRIMARY KEY,
        operation_id   TEXT NOT NULL,
        bucket         TEXT NOT NULL,
        object_key     TEXT NOT NULL,
        archive_sha256 TEXT NOT NULL,
        part_size      INTEGER NOT NULL,
        part_count     INTEGER NOT NULL,
        state          TEXT NOT NULL CHECK (state IN ('open', 'completed', 'aborted')),
        created_at     TEXT NOT NULL
    );
    CREATE INDEX ix_multipart_uploads_key ON multipart_uploads (bucket, object_key, state);

    CREATE TABLE upload_parts (
        upload_id   TEXT NOT NULL REFERENCES multipart_uploads (upload_id) ON DELETE CASCADE,
        part_number INTEGER NOT NULL,
        size        INTEGER NOT NULL,
        md5         TEXT NOT NULL,
        etag        TEXT NOT NULL,
        checksum    TEXT,
        PRIMARY KEY (upload_id, part_number)
    );
    """,
)

MIN_ID_PREFIX = 4


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


_IN_CHUNK = 500  # ids per `IN (...)` query, well under SQLite's bound-parameter limit

_OPERATION_COLUMNS: tuple[str, ...] = UPLOAD_FIELDS
_FILE_COLUMNS: tuple[str, ...] = ("operation_id", "role", *(f.name for f in dataclasses.fields(FileRecord)))


def _upsert_sql(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    # ON CONFLICT DO UPDATE, not INSERT OR REPLACE: a replace deletes the row first, and the delete would cascade
    # to the operation's file records.
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


_UPSERT_OPERATION = _upsert_sql("operations", _OPERATION_COLUMNS, ["operation_id"])
_UPSERT_FILE_RECORD = _upsert_sql("file_records", _FILE_COLUMNS, ["operation_id", "role"])
_NEWEST_FIRST = "ORDER BY started_at DESC, rowid DESC"
_T = TypeVar("_T")


class MetadataStore:
    """The operations database at `path`: one aiosqlite connection, opened with `async with` or `open()`.

    One store object is shared by every task of a run. Every transaction runs whole, as one function, in the
    connection's thread (`_run`), so transactions of concurrent tasks never interleave; the lock only gathers
    concurrent saves into one transaction (group commit).
    """

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()
        # Group commit: saves waiting for the lock are written together by whichever of them gets it first.
        self._pending: dict[str, tuple[list[Any], list[list[Any]]]] = {}
        self._queued = 0  # saves queued so far
        self._written = 0  # saves durably written so far (queue order)
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the database file opened

    async def __aenter__(self) -> MetadataStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the database if needed (parent dir 0700, file 0600), configure the connection and migrate."""
        if self._db is not None:
            return
        try:
            self._create_file()
        except OSError as exc:
            raise StoreError(f"cannot create metadata database at {self.path}: {exc.strerror or exc}") from exc
        with self._translate_errors("open"):
            db = await aiosqlite.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            with self._translate_errors("open"):
                db.row_factory = sqlite3.Row
                await self._configure(db)
                await self._migrate(db)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await db.close()
            raise
        try:
            st = os.stat(self.path)
        except OSError as exc:
            with anyio.CancelScope(shield=True):
                await db.close()
            raise StoreError(f"metadata database {self.path}: cannot examine it: {exc.strerror or exc}") from exc
        self._identity = (st.st_dev, st.st_ino)
        self._db = db

    def check_alive(self) -> None:
        """Raise StoreError (exit 4) when the database file opened is no longer at its path (deleted, or replaced
        by another file): SQLite would go on writing into the unlinked file, and every record would be lost.

        Every write checks it; a stage about to do something irreversible (the move) calls it first too."""
        if self._identity is None:
            return
        try:
            st = os.stat(self.path)
            alive = (st.st_dev, st.st_ino) == self._identity
        except FileNotFoundError:
            alive = False
        except OSError as exc:
            raise StoreError(f"metadata database {self.path}: cannot examine it: {exc.strerror or exc}") from exc
        if not alive:
            raise StoreError(f"the metadata database {self.path} was deleted or replaced during the run")

    async def close(self) -> None:
        self._identity = None
        db, self._db = self._db, None
        if db is None:
            return
        # Shielded: a cancelled run must still stop the connection's thread.
        with anyio.CancelScope(shield=True), self._translate_errors("close"):
            await db.close()

    async def save_operation(self, record: OperationRecord) -> None:
        """Insert or update the operation and, for an upload, its file records, in one transaction.

        For an UploadRecord, `metadata` is first re-synced from its fields (`sync_metadata`), so that what is
        stored is what `get_operation` rebuilds. File records absent from the record are left in place.
        """
        if isinstance(record, UploadRecord):
            record.sync_metadata()
            file_rows = [self._file_row(record.operation_id, role, f) for role, f in record.file_records().items()]
        else:
            file_rows = []
        operation_row = self._operation_row(record)
        self._require_open()
        # Later saves of the same record replace earlier queued ones: only the newest state is worth writing.
        self._pending[record.operation_id] = (operation_row, file_rows)
        self._queued += 1
        ticket = self._queued
        async with self._lock:
            if self._written >= ticket:
                return  # a save queued after ours was written in the same batch: ours is durable
            batch, self._pending = self._pending, {}
            written = self._queued
            operation_rows = [op for op, _ in batch.values()]
            file_rows_all = [row for _, files in batch.values() for row in files]

            def write(conn: sqlite3.Connection) -> None:
                conn.executemany(_UPSERT_OPERATION, operation_rows)
                if file_rows_all:
                    conn.executemany(_UPSERT_FILE_RECORD, file_rows_all)

            try:
                await self._run(f"save {len(batch)} operations", write, immediate=True)
            except BaseException:
                # Not written. The other waiters' rows go back for the next writer (unless a newer save replaced
                # them); this caller's own save failed (or was cancelled) and is not retried behind its back.
                for op_id, rows in batch.items():
                    if op_id != record.operation_id:
                        self._pending.setdefault(op_id, rows)
                raise
            self._written = written

    async def get_operation(self, id_or_prefix: str) -> OperationRecord:
        """The operation with this exact id, or the only one whose id starts with it (at least 4 characters)."""

        def read(conn: sqlite3.Connection) -> list[OperationRecord]:
            found = self._select(conn, "WHERE operation_id = ?", [id_or_prefix])
            if not found and len(id_or_prefix) >= MIN_ID_PREFIX:
                upper = id_or_prefix[:-1] + chr(ord(id_or_prefix[-1]) + 1)
                found = self._select(conn, "WHERE operation_id >= ? AND operation_id < ? LIMIT 2", [id_or_prefix, upper])
                if len(found) > 1:
                    count = conn.execute(
                        "SELECT count(*) FROM operations WHERE operation_id >= ? AND operation_id < ?",
                        [id_or_prefix, upper],
                    ).fetchone()[0]
                    raise NotFoundError(f"id prefix {id_or_prefix} is ambiguous: matches {count} operations")
            return found

        found = await self._run(f"read operation {id_or_prefix}", read)
        if not found:
            hint = "" if len(id_or_prefix) >= MIN_ID_PREFIX else f" (a prefix needs {MIN_ID_PREFIX}+ characters)"
            raise NotFoundError(f"no operation with id {id_or_prefix}{hint}")
        return found[0]

    async def list_operations(
        self,
        *,
        status: str | None = None,
        operation_type: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        target: str | None = None,
        location: str | None = None,
        limit: int | None = 20,
    ) -> list[OperationRecord]:
        """Operations newest first (by started_at), filtered; `since` is inclusive, `until` exclusive.

        `target` matches a case-insensitive substring of the target name or path; `location` keeps operations
        with a file record at that location; `limit=None` returns them all.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, not {limit}")
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
            params.append(_utc_iso(since))
        if until is not None:
            clauses.append("started_at < ?")
            params.append(_utc_iso(until))
        if target is not None:
            clauses.append("(instr(amgmt_fold(target_name), ?) > 0 OR instr(amgmt_fold(target_path), ?) > 0)")
            params += [_fold(target)] * 2
        if location is not None:
            clauses.append(
                "EXISTS (SELECT 1 FROM file_records AS f"
                " WHERE f.operation_id = operations.operation_id AND f.location = ?)"
            )
            params.append(str(location))
        sql = ("WHERE " + " AND ".join(clauses) + " " if clauses else "") + _NEWEST_FIRST
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return await self._query("list operations", sql, params)

    async def find_successful_upload(self, *, checksum_original: str) -> UploadRecord | None:
        """The newest successful upload of a source with this checksum, if any."""
        found = await self._query(
            "look up uploads by checksum",
            f"WHERE operation_type = 'upload' AND status = ? AND checksum_original = ? {_NEWEST_FIRST} LIMIT 1",
            [str(OperationStatus.SUCCESS), checksum_original],
        )
        return _as_upload(found[0]) if found else None

    async def find_uploads_by_key(self, *, bucket: str, key: str) -> list[UploadRecord]:
        """Every upload (any status) to this bucket and key, newest first."""
        found = await self._query(
            f"look up uploads of s3://{bucket}/{key}",
            f"WHERE operation_type = 'upload' AND s3_bucket = ? AND s3_object_key = ? {_NEWEST_FIRST}",
            [bucket, key],
        )
        return [_as_upload(r) for r in found]

    async def upload_summaries(
        self,
        *,
        bucket: str | None = None,
        key_prefix: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[UploadSummary]:
        """Every upload, oldest first (by started_at), to `bucket` (any when None) under `key_prefix`, started in
        [since, until); one query of a dozen columns, so that tens of thousands of uploads stay cheap."""
        clauses = ["o.operation_type = 'upload'"]
        params: list[Any] = []
        if bucket is not None:
            clauses.append("o.s3_bucket = ?")
            params.append(bucket)
        if key_prefix:
            clauses.append("substr(o.s3_object_key, 1, ?) = ?")
            params += [len(key_prefix), key_prefix]
        if since is not None:
            clauses.append("o.started_at >= ?")
            params.append(_utc_iso(since))
        if until is not None:
            clauses.append("o.started_at < ?")
            params.append(_utc_iso(until))
        columns = ", ".join(f"o.{f.name}" for f in dataclasses.fields(UploadSummary) if f.name != "source_modified_at")
        sql = (
            f"SELECT {columns}, f.modified_at AS source_modified_at FROM operations AS o"
            " LEFT JOIN file_records AS f ON f.operation_id = o.operation_id AND f.role = 'source'"
            f" WHERE {' AND '.join(clauses)} ORDER BY o.started_at, o.rowid"
        )
        rows = await self._run("summarise uploads", lambda conn: conn.execute(sql, params).fetchall())
        try:
            return [
                UploadSummary(
                    **{
                        **dict(r),
                        "started_at": datetime.fromisoformat(r["started_at"]),
                        "source_modified_at": _decode_time(r["source_modified_at"]),
                    }
                )
                for r in rows
            ]
        except (ValueError, TypeError) as exc:
            raise StoreError(f"metadata database {self.path}: an upload has an unreadable row: {exc}") from exc

    async def find_uploads_by_name(self, *, bucket: str, name: str) -> list[UploadRecord]:
        """Every upload (any status) of an entry with this exact target name to this bucket, newest first."""
        found = await self._query(
            f"look up uploads of {name}",
            f"WHERE operation_type = 'upload' AND s3_bucket = ? AND target_name = ? {_NEWEST_FIRST}",
            [bucket, name],
        )
        return [_as_upload(r) for r in found]

    async def find_operations_on(
        self, *, bucket: str, key: str, target_path: str | None = None, target_name: str | None = None
    ) -> list[OperationRecord]:
        """Every operation (any type and status) on one object, newest first: uploads to bucket/key, and operations
        whose target path is `target_path` or whose target name is `target_name` (when given)."""
        clauses = ["(s3_bucket = ? AND s3_object_key = ?)"]
        params: list[Any] = [bucket, key]
        if target_path is not None:
            clauses.append("target_path = ?")
            params.append(target_path)
        if target_name is not None:
            clauses.append("target_name = ?")
            params.append(target_name)
        return await self._query(
            f"look up operations on s3://{bucket}/{key}", f"WHERE {' OR '.join(clauses)} {_NEWEST_FIRST}", params
        )

    # -- the multipart journal -------------------------------------------------------------------------------

    async def journal_multipart(self, upload: JournaledUpload) -> None:
        """Record a new multipart upload (state open) the moment its UploadId exists."""
        row = [upload.upload_id, upload.operation_id, upload.bucket, upload.key, upload.archive_sha256,
               upload.part_size, upload.part_count, _utc_iso(datetime.now(timezone.utc))]
        await self._run(f"journal upload {upload.upload_id[:12]}", lambda conn: conn.execute(
            "INSERT OR IGNORE INTO multipart_uploads (upload_id, operation_id, bucket, object_key,"
            " archive_sha256, part_size, part_count, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'open', ?)",
            row,
        ), immediate=True)

    async def journal_part(self, upload_id: str, part: JournaledPart) -> None:
        row = [upload_id, part.number, part.size, part.md5, part.etag, part.checksum]
        await self._run(f"journal part {part.number}", lambda conn: conn.execute(
            "INSERT OR REPLACE INTO upload_parts (upload_id, part_number, size, md5, etag, checksum)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            row,
        ), immediate=True)

    async def journal_multipart_state(self, upload_id: str, state: str) -> None:
        """Close a journaled upload: 'completed' or 'aborted'."""
        await self._run(f"close upload {upload_id[:12]}", lambda conn: conn.execute(
            "UPDATE multipart_uploads SET state = ? WHERE upload_id = ?", [state, upload_id]
        ), immediate=True)

    async def open_multiparts(self, *, bucket: str, key: str | None = None) -> list[JournaledUpload]:
        """Journaled uploads still open (interrupted), oldest first, with their finished parts."""
        sql = "SELECT * FROM multipart_uploads WHERE state = 'open' AND bucket = ?"
        params: list[Any] = [bucket]
        if key is not None:
            sql += " AND object_key = ?"
            params.append(key)

        def read(conn: sqlite3.Connection) -> list[tuple[dict[str, Any], list[Any]]]:
            uploads = [dict(r) for r in conn.execute(sql + " ORDER BY created_at", params).fetchall()]
            return [(row, conn.execute("SELECT * FROM upload_parts WHERE upload_id = ? ORDER BY part_number",
                                       [row["upload_id"]]).fetchall()) for row in uploads]

        found = []
        for row, parts in await self._run("read the multipart journal", read):
            found.append(
                JournaledUpload(
                    upload_id=row["upload_id"],
                    operation_id=row["operation_id"],
                    bucket=row["bucket"],
                    key=row["object_key"],
                    archive_sha256=row["archive_sha256"],
                    part_size=row["part_size"],
                    part_count=row["part_count"],
                    parts=tuple(
                        JournaledPart(p["part_number"], p["size"], p["md5"], p["etag"], p["checksum"])
                        for p in parts
                    ),
                    created_at=_decode_time(row["created_at"]),
                )
            )
        return found

    async def mark_interrupted(self, *, target_prefix: str, reason: str) -> list[OperationRecord]:
        """Operations still 'pending' under `target_prefix` belong to a run that died: record them cancelled."""
        stale = await self._query(
            "find interrupted operations", "WHERE status = ? " + _NEWEST_FIRST, [str(OperationStatus.PENDING)]
        )
        stale = [r for r in stale if r.target_path == target_prefix or r.target_path.startswith(target_prefix + "/")]
        for record in stale:
            stage = getattr(record, "stage", "?")
            record.finish(OperationStatus.CANCELLED, error=f"{stage}: {reason}")
            await self.save_operation(record)
        return stale

    # -- connection -------------------------------------------------------------------------------------------

    def _create_file(self) -> None:
        # Created here, not by SQLite, to choose the modes; SQLite gives -wal/-shm the database file's mode.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return
        os.close(fd)

    async def _configure(self, db: aiosqlite.Connection) -> None:
        rows = await db.execute_fetchall("PRAGMA journal_mode = WAL")
        mode = next(iter(rows))[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"metadata database {self.path} cannot use WAL journal mode (got {mode})")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
        await db.create_function("amgmt_fold", 1, _fold, deterministic=True)

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        known = len(MIGRATIONS)

        def step(conn: sqlite3.Connection) -> int:
            # Read under the write lock (IMMEDIATE): another process may have migrated meanwhile.
            version = _user_version(conn)
            if version < known:
                for statement in _split_statements(MIGRATIONS[version]):
                    conn.execute(statement)
                version += 1
                conn.execute(f"PRAGMA user_version = {version:d}")
            return version

        version = await self._run("read the schema version", _user_version, db=db)
        while True:
            if version > known:
                raise StoreError(
                    f"metadata database {self.path} has schema version {version}, newer than this amgmt "
                    f"supports ({known}); upgrade amgmt"
                )
            if version == known:
                return
            version = await self._run(f"migrate to schema version {version + 1}", step, immediate=True, db=db)

    def _require_open(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(f"metadata database {self.path} is not open")
        return self._db

    async def _run(
        self,
        doing: str,
        work: Callable[[sqlite3.Connection], _T],
        *,
        immediate: bool = False,
        db: aiosqlite.Connection | None = None,
    ) -> _T:
        """`work(connection)` as one transaction, run whole in the connection's thread: one hand-over between the
        event loop and that thread instead of one per statement (BEGIN, each statement, COMMIT). Under load each
        hand-over waits for a turn of the busy event loop: on `small` (2,000 x 64 KiB) a save took ~8 ms this way
        and most of an entry's time went to them. The thread runs one function at a time, so transactions never
        interleave; aiosqlite's `_execute` (private, the same in every version we allow) is what its own
        `execute` uses. A cancelled caller does not stop the transaction: it commits or rolls back whole.
        `db` is for `open`, before the store counts as open."""
        db = db or self._require_open()
        if immediate:
            self.check_alive()  # a write into a deleted database would be lost without a word

        def transaction() -> _T:
            conn = db._conn
            conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                result = work(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            conn.execute("COMMIT")
            return result

        with self._translate_errors(doing):
            return await db._execute(transaction)  # type: ignore[no-any-return]

    @contextmanager
    def _translate_errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(self._describe(doing, exc)) from exc
        except OSError as exc:
            raise StoreError(f"metadata database {self.path}: cannot {doing}: {exc.strerror or exc}") from exc

    def _describe(self, doing: str, exc: sqlite3.Error) -> str:
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc):
            return (
                f"metadata database {self.path} is locked by another process "
                f"(cannot {doing}; gave up after {self.busy_timeout:g} s)"
            )
        if primary in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            return f"metadata database {self.path} is not a valid SQLite database (corrupt?): {exc}"
        if primary == sqlite3.SQLITE_CANTOPEN:
            return f"cannot open metadata database {self.path}: {exc}"
        if primary == sqlite3.SQLITE_READONLY:
            return f"metadata database {self.path} is read-only: cannot {doing}"
        if primary == sqlite3.SQLITE_FULL:
            return f"metadata database {self.path}: cannot {doing}: disk full"
        return f"metadata database {self.path}: cannot {doing}: {exc}"

    # -- rows -------------------------------------------------------------------------------------------------

    async def _query(self, doing: str, tail: str, params: Sequence[Any]) -> list[OperationRecord]:
        """`_select` as a transaction of its own."""
        return await self._run(doing, lambda conn: self._select(conn, tail, params))

    def _select(self, conn: sqlite3.Connection, tail: str, params: Sequence[Any]) -> list[OperationRecord]:
        """Operations `SELECT * FROM operations <tail>`, uploads with their file records attached (in `_run`)."""
        rows = [dict(r) for r in conn.execute(f"SELECT * FROM operations {tail}", params).fetchall()]
        upload_ids = [r["operation_id"] for r in rows if r["operation_type"] == "upload"]
        files: dict[str, dict[str, dict[str, Any]]] = {}
        for start in range(0, len(upload_ids), _IN_CHUNK):
            chunk = upload_ids[start : start + _IN_CHUNK]
            sql = f"SELECT * FROM file_records WHERE operation_id IN ({', '.join('?' for _ in chunk)})"
            for file_row in conn.execute(sql, chunk).fetchall():
                files.setdefault(file_row["operation_id"], {})[file_row["role"]] = dict(file_row)
        return [self._record(row, files.get(row["operation_id"], {})) for row in rows]

    def _record(self, row: dict[str, Any], files: dict[str, dict[str, Any]]) -> OperationRecord:
        try:
            row["metadata"] = json.loads(row["metadata"] or "{}")
            row["command_args"] = json.loads(row["command_args"] or "{}")
            for role, file_row in files.items():
                file_row["tags"] = json.loads(file_row["tags"] or "{}")
                row[f"{FileRole(role).value}_file_record"] = file_row
            return operation_from_dict(row)
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(
                f"metadata database {self.path}: operation {row.get('operation_id')} has an unreadable row: {exc}"
            ) from exc

    @staticmethod
    def _operation_row(record: OperationRecord) -> list[Any]:
        # A plain OperationRecord lacks the upload fields: those columns get NULL.
        return [_to_column(getattr(record, column, None)) for column in _OPERATION_COLUMNS]

    @staticmethod
    def _file_row(operation_id: str, role: FileRole, record: FileRecord) -> list[Any]:
        values = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
        values |= {"operation_id": operation_id, "role": role.value}
        return [_to_column(values[column]) for column in _FILE_COLUMNS]


def _to_column(value: Any) -> Any:
    if isinstance(value, datetime):
        return _utc_iso(value)
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


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _utc_iso(value: datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} cannot be stored: use an aware (UTC) datetime")
    # Fixed width (always microseconds, always +00:00), so that comparing the text compares the times.
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _decode_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _fold(value: Any) -> str | None:
    """Case- and normalisation-insensitive form of a name (SQLite's own lower() only folds ASCII)."""
    if value is None:
        return None
    return unicodedata.normalize("NFC", str(value)).casefold()


def _as_upload(record: OperationRecord) -> UploadRecord:
    assert isinstance(record, UploadRecord), record.operation_type
    return record


def _split_statements(script: str) -> list[str]:
    """The statements of a migration script, to run inside one transaction (executescript would commit first)."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\n;"):
                statements.append(pending.strip())
            pending = ""
    return statements
