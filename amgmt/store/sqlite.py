"""MetadataStore: the metadata database's connection (aiosqlite), its transactions, and saving and querying records.
With connection.py (its setup), the only module importing aiosqlite; it never decides what to record, and no
database error leaves it raw."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiosqlite
import anyio

from amgmt.errors import NotFoundError, StoreError
from amgmt.models import OperationRecord, OperationStatus, UploadRecord
from amgmt.store import schema
from amgmt.store.connection import configure, create_private_file, in_connection_thread
from amgmt.store.errors import translate_errors
from amgmt.store.records import (
    UPSERT_FILE_RECORD,
    UPSERT_OPERATION,
    JournaledPart,
    JournaledUpload,
    UploadSummary,
    as_upload,
    file_row,
    journaled_upload,
    operation_filters,
    operation_row,
    select_operations,
    upload_summary,
    utc_iso,
)

MIN_ID_PREFIX = 4
_NEWEST_FIRST = "ORDER BY started_at DESC, rowid DESC"
_T = TypeVar("_T")


def write_rows(conn: sqlite3.Connection, operation_rows: list[list[Any]], file_rows: list[list[Any]]) -> None:
    """One save's statements, inside its transaction (the operations, then their file records)."""
    conn.executemany(UPSERT_OPERATION, operation_rows)
    if file_rows:
        conn.executemany(UPSERT_FILE_RECORD, file_rows)


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
            create_private_file(self.path)
        except OSError as exc:
            raise StoreError(f"cannot create metadata database at {self.path}: {exc.strerror or exc}") from exc
        with self._translate_errors("open"):
            db = await aiosqlite.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            with self._translate_errors("open"):
                db.row_factory = sqlite3.Row
                await configure(db, self.path)
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
        await self.save_operations((record,))

    async def save_operations(self, records: Sequence[OperationRecord]) -> None:
        """`save_operation` for many records in one transaction: all of them are durable when it returns, or (an
        error, a crash) none of this call's; each record is saved whole (its row and its file records), as by
        `save_operation`. The small-entry lane saves a batch of entries' stage changes this way."""
        if not records:
            return
        rows: dict[str, tuple[list[Any], list[list[Any]]]] = {}
        for record in records:
            if isinstance(record, UploadRecord):
                record.sync_metadata()
                file_rows = [file_row(record.operation_id, role, f) for role, f in record.file_records().items()]
            else:
                file_rows = []
            rows[record.operation_id] = (operation_row(record), file_rows)
        self._require_open()
        # Later saves of the same record replace earlier queued ones: only the newest state is worth writing.
        self._pending.update(rows)
        self._queued += 1
        ticket = self._queued
        async with self._lock:
            if self._written >= ticket:
                return  # a save queued after ours was written in the same batch: ours is durable
            batch, self._pending = self._pending, {}
            written = self._queued
            operation_rows = [op for op, _ in batch.values()]
            file_rows_all = [row for _, files in batch.values() for row in files]
            try:
                await self._run(
                    f"save {len(batch)} operations",
                    lambda conn: write_rows(conn, operation_rows, file_rows_all),
                    immediate=True,
                )
            except BaseException:
                # Not written. The other waiters' rows go back for the next writer (unless a newer save replaced
                # them); this caller's own saves failed (or were cancelled) and are not retried behind its back.
                for op_id, op_rows in batch.items():
                    if op_id not in rows:
                        self._pending.setdefault(op_id, op_rows)
                raise
            self._written = written

    async def get_operation(self, id_or_prefix: str) -> OperationRecord:
        """The operation with this exact id, or the only one whose id starts with it (at least 4 characters)."""

        def read(conn: sqlite3.Connection) -> list[OperationRecord]:
            found = self._select(conn, "WHERE operation_id = ?", [id_or_prefix])
            if not found and len(id_or_prefix) >= MIN_ID_PREFIX:
                upper = id_or_prefix[:-1] + chr(ord(id_or_prefix[-1]) + 1)
                found = self._select(
                    conn, "WHERE operation_id >= ? AND operation_id < ? LIMIT 2", [id_or_prefix, upper]
                )
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
        clauses, params = operation_filters(
            status=status, operation_type=operation_type, since=since, until=until, target=target, location=location
        )
        sql = ("WHERE " + " AND ".join(clauses) + " " if clauses else "") + _NEWEST_FIRST
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return await self._query("list operations", sql, params)

    async def find_successful_upload(self, *, checksum_original: str) -> UploadRecord | None:
        """The newest successful upload of a source with this checksum, if any."""
        # `+` keeps the type and status columns out of the index choice: without ANALYZE statistics (a real
        # database has none) SQLite would walk every upload by (operation_type, started_at) for the ORDER BY, once
        # per entry of a run: quadratic in the database's size (seen at 10,000 entries). The checksum's own index
        # finds the few rows with this content.
        found = await self._query(
            "look up uploads by checksum",
            f"WHERE +operation_type = 'upload' AND +status = ? AND checksum_original = ? {_NEWEST_FIRST} LIMIT 1",
            [str(OperationStatus.SUCCESS), checksum_original],
        )
        return as_upload(found[0]) if found else None

    async def find_uploads_by_key(self, *, bucket: str, key: str) -> list[UploadRecord]:
        """Every upload (any status) to this bucket and key, newest first."""
        found = await self._query(
            f"look up uploads of s3://{bucket}/{key}",
            f"WHERE operation_type = 'upload' AND s3_bucket = ? AND s3_object_key = ? {_NEWEST_FIRST}",
            [bucket, key],
        )
        return [as_upload(r) for r in found]

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
            params.append(utc_iso(since))
        if until is not None:
            clauses.append("o.started_at < ?")
            params.append(utc_iso(until))
        columns = ", ".join(f"o.{f.name}" for f in dataclasses.fields(UploadSummary) if f.name != "source_modified_at")
        sql = (
            f"SELECT {columns}, f.modified_at AS source_modified_at FROM operations AS o"
            " LEFT JOIN file_records AS f ON f.operation_id = o.operation_id AND f.role = 'source'"
            f" WHERE {' AND '.join(clauses)} ORDER BY o.started_at, o.rowid"
        )
        rows = await self._run("summarise uploads", lambda conn: conn.execute(sql, params).fetchall())
        return [upload_summary(row, path=self.path) for row in rows]

    async def find_uploads_by_name(self, *, bucket: str, name: str) -> list[UploadRecord]:
        """Every upload (any status) of an entry with this exact target name to this bucket, newest first."""
        found = await self._query(
            f"look up uploads of {name}",
            f"WHERE operation_type = 'upload' AND s3_bucket = ? AND target_name = ? {_NEWEST_FIRST}",
            [bucket, name],
        )
        return [as_upload(r) for r in found]

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
        row = [
            upload.upload_id,
            upload.operation_id,
            upload.bucket,
            upload.key,
            upload.archive_sha256,
            upload.part_size,
            upload.part_count,
            utc_iso(datetime.now(UTC)),
            upload.checksum_algorithm,
        ]
        await self._run(
            f"journal upload {upload.upload_id[:12]}",
            lambda conn: conn.execute(
                "INSERT OR IGNORE INTO multipart_uploads (upload_id, operation_id, bucket, object_key,"
                " archive_sha256, part_size, part_count, state, created_at, checksum_algorithm)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'open', ?, ?)",
                row,
            ),
            immediate=True,
        )

    async def journal_part(self, upload_id: str, part: JournaledPart) -> None:
        row = [upload_id, part.number, part.size, part.md5, part.etag, part.checksum]
        await self._run(
            f"journal part {part.number}",
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO upload_parts (upload_id, part_number, size, md5, etag, checksum)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                row,
            ),
            immediate=True,
        )

    async def journal_multipart_state(self, upload_id: str, state: str) -> None:
        """Close a journaled upload: 'completed' or 'aborted'."""
        await self._run(
            f"close upload {upload_id[:12]}",
            lambda conn: conn.execute("UPDATE multipart_uploads SET state = ? WHERE upload_id = ?", [state, upload_id]),
            immediate=True,
        )

    async def open_multiparts(self, *, bucket: str, key: str | None = None) -> list[JournaledUpload]:
        """Journaled uploads still open (interrupted), oldest first, with their finished parts."""
        sql = "SELECT * FROM multipart_uploads WHERE state = 'open' AND bucket = ?"
        params: list[Any] = [bucket]
        if key is not None:
            sql += " AND object_key = ?"
            params.append(key)

        def read(conn: sqlite3.Connection) -> list[tuple[dict[str, Any], list[Any]]]:
            uploads = [dict(r) for r in conn.execute(sql + " ORDER BY created_at", params).fetchall()]
            return [
                (
                    row,
                    conn.execute(
                        "SELECT * FROM upload_parts WHERE upload_id = ? ORDER BY part_number", [row["upload_id"]]
                    ).fetchall(),
                )
                for row in uploads
            ]

        found = await self._run("read the multipart journal", read)
        return [journaled_upload(row, parts) for row, parts in found]

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

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        known = len(schema.MIGRATIONS)
        version = await self._run("read the schema version", schema.user_version, db=db)
        while True:
            if version > known:
                raise StoreError(
                    f"metadata database {self.path} has schema version {version}, newer than this amgmt "
                    f"supports ({known}); upgrade amgmt"
                )
            if version == known:
                return
            version = await self._run(
                f"migrate to schema version {version + 1}", schema.migrate_one, immediate=True, db=db
            )

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
        """`work(connection)` as one transaction, run whole in the connection's thread (`in_connection_thread`): one
        hand-over between the event loop and that thread instead of one per statement (BEGIN, each statement,
        COMMIT). Under load each hand-over waits for a turn of the busy event loop: aiosqlite's public per-statement
        calls made a save 1.4-1.9x slower alone, 2.6-5.4x beside a busy loop (benchmarks/store_saves.py). The
        thread runs one function at a time, so transactions never interleave. A cancelled caller does not stop the
        transaction: it commits or rolls back whole. `db` is for `open`, before the store counts as open."""
        db = db or self._require_open()
        if immediate:
            self.check_alive()  # a write into a deleted database would be lost without a word

        def transaction(conn: sqlite3.Connection) -> _T:
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
            return await in_connection_thread(db, transaction)

    # -- rows -------------------------------------------------------------------------------------------------

    async def _query(self, doing: str, tail: str, params: Sequence[Any]) -> list[OperationRecord]:
        """`_select` as a transaction of its own."""
        return await self._run(doing, lambda conn: self._select(conn, tail, params))

    def _translate_errors(self, doing: str) -> AbstractContextManager[None]:
        return translate_errors(self.path, self.busy_timeout, doing)

    def _select(self, conn: sqlite3.Connection, tail: str, params: Sequence[Any]) -> list[OperationRecord]:
        return select_operations(conn, tail, params, path=self.path)
