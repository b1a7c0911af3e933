"""The store's one interface, `Store`: what every backend answers (saving and querying records, the multipart journal),
written once over a handful of primitives each backend implements (`_select`, `_fetch`, `_execute`, `_write_rows`,
`_write_returning`), the runs and entry claims of a catalog several runs share included (upload/claims.py).

The SQL is written once, for both backends (`?` parameters, amgmt.store.dialect turns it into PostgreSQL's); the
group commit of saves is here too. Must not import a database driver: sqlite.py and postgres.py do."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import anyio

from amgmt.errors import NotFoundError
from amgmt.models import OperationRecord, OperationStatus, UploadRecord
from amgmt.store import members
from amgmt.store.records import (
    Claimed,
    HostActivity,
    JournaledPart,
    JournaledUpload,
    RunLease,
    RunSeen,
    UploadSummary,
    as_upload,
    file_row,
    journaled_upload,
    operation_filters,
    operation_row,
    run_seen,
    upload_summary,
    utc_iso,
)

MIN_ID_PREFIX = 4
KEYS_PER_QUERY = 500  # keys in one IN (...) of upload_summaries: far below both backends' limits of bound parameters
NEWEST_FIRST = "ORDER BY started_at DESC, rowid DESC"  # PostgreSQL's operations table has a rowid column too

JOURNAL_UPLOAD = (
    "INSERT INTO multipart_uploads (upload_id, operation_id, bucket, object_key, archive_sha256, part_size,"
    " part_count, state, created_at, checksum_algorithm) VALUES (?, ?, ?, ?, ?, ?, ?, 'open', ?, ?)"
    " ON CONFLICT (upload_id) DO NOTHING"
)
JOURNAL_PART = (
    "INSERT INTO upload_parts (upload_id, part_number, size, md5, etag, checksum) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (upload_id, part_number) DO UPDATE SET size = excluded.size, md5 = excluded.md5,"
    " etag = excluded.etag, checksum = excluded.checksum"
)
CLOSE_UPLOAD = "UPDATE multipart_uploads SET state = ? WHERE upload_id = ?"
PARTS_OF_OPEN_UPLOADS = (
    "SELECT p.* FROM upload_parts AS p JOIN multipart_uploads AS u ON u.upload_id = p.upload_id"
    " WHERE {where} ORDER BY p.upload_id, p.part_number"
)


class Store(ABC):
    """The metadata store of a run: open with `async with` (or `open()`), one object shared by every task.

    `where` names the database in messages (a path, or a URL without its password). `host_id`, when given, is
    recorded on every operation saved without one. Saves that wait for the write lock are written together, in
    one transaction, by whichever of them gets it first (group commit)."""

    where: str

    def __init__(self, *, host_id: str | None = None) -> None:
        self.host_id = host_id
        self._lock = anyio.Lock()
        # Group commit: saves waiting for the lock are written together by whichever of them gets it first.
        self._pending: dict[str, tuple[list[Any], list[list[Any]]]] = {}
        self._queued = 0  # saves queued so far
        self._written = 0  # saves durably written so far (queue order)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- what a backend implements ----------------------------------------------------------------------------

    @abstractmethod
    async def open(self) -> None:
        """Connect, create the schema or migrate it; StoreError when the database cannot be used."""

    @abstractmethod
    async def close(self) -> None: ...

    # Whether several runs and hosts may use the database at once: then runs of one local dir share it, each entry
    # claimed by one run (upload/claims.py), instead of one run per local dir under the local flock.
    shared = False

    def check_alive(self) -> None:  # noqa: B027 -- a backend with nothing to check keeps this
        """Raise StoreError (exit 4) when writing on would lose records (the SQLite file was deleted or replaced).
        A stage about to do something irreversible (the move) calls it first."""

    @abstractmethod
    def _require_open(self) -> object:
        """The open connection (or pool); StoreError when the store is not open."""

    @abstractmethod
    async def _select(self, doing: str, tail: str, params: Sequence[Any]) -> list[OperationRecord]:
        """Records `SELECT * FROM operations <tail>`, with their file records, read in one transaction."""

    @abstractmethod
    async def _fetch(self, doing: str, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """The rows of one query, as dicts."""

    @abstractmethod
    async def _execute(self, doing: str, sql: str, params: Sequence[Any]) -> None:
        """One write statement, in a transaction of its own."""

    @abstractmethod
    async def _execute_many(self, doing: str, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One write statement for each of `rows`, all in one transaction."""

    @abstractmethod
    async def _write_returning(self, doing: str, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """One write statement with a RETURNING clause, in a transaction of its own: the rows it returned."""

    @abstractmethod
    async def _write_rows(self, doing: str, operation_rows: list[list[Any]], file_rows: list[list[Any]]) -> None:
        """Upsert `operations` rows, then `file_records` rows, in one transaction."""

    # -- saving -----------------------------------------------------------------------------------------------

    async def save_operation(self, record: OperationRecord) -> None:
        """Insert or update the operation and, for an upload, its file records, in one transaction.

        For an UploadRecord, `metadata` is first re-synced from its fields (`sync_metadata`), so that what is
        stored is what `get_operation` rebuilds. File records absent from the record are left in place.
        """
        await self.save_operations([record])

    async def save_operations(self, records: Sequence[OperationRecord]) -> None:
        """`save_operation` of many records, in one transaction."""
        if not records:
            return
        rows: dict[str, tuple[list[Any], list[list[Any]]]] = {}
        for record in records:
            if record.host_id is None:
                record.host_id = self.host_id
            if isinstance(record, UploadRecord):
                record.sync_metadata()
                files = [file_row(record.operation_id, role, f) for role, f in record.file_records().items()]
            else:
                files = []
            rows[record.operation_id] = (operation_row(record), files)
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
            file_rows = [row for _, files in batch.values() for row in files]
            try:
                await self._write_rows(f"save {len(batch)} operations", operation_rows, file_rows)
            except BaseException:
                # Not written. The other waiters' rows go back for the next writer (unless a newer save replaced
                # them); this caller's own save failed (or was cancelled) and is not retried behind its back.
                for op_id, pending in batch.items():
                    if op_id not in rows:
                        self._pending.setdefault(op_id, pending)
                raise
            self._written = written

    # -- the members of directory archives ---------------------------------------------------------------------

    async def save_members(self, operation_id: str, rows: Sequence[tuple[str, str, int, int]]) -> None:
        """Record the members (path, kind, size, mtime) of an upload's archive: one transaction, one executemany
        (100,000 members: well under a second on SQLite), replacing what was recorded for those paths."""
        if rows:
            params = [(operation_id, *row) for row in rows]
            await self._execute_many(f"record {len(params)} archive members", members.INSERT_MEMBER, params)

    async def search_members(
        self, keyword: str, *, bucket: str | None = None, key_prefix: str = "", limit: int | None = None
    ) -> list[members.StoredMember]:
        """Members of the archives now in the bucket (their key's newest verified upload, not deleted) whose path
        contains `keyword`, case-insensitive as `list_operations(target=...)`."""
        sql, params = members.search_sql(keyword, bucket=bucket, key_prefix=key_prefix, limit=limit)
        return [members.member(row) for row in await self._fetch("search archive members", sql, params)]

    async def member_subtree(self, operation_id: str, path: str) -> tuple[list[members.StoredMember], int]:
        """The member at `path` of this upload's archive with everything below it, and how many members the upload
        recorded in all (0: no member list, e.g. an upload from before they were recorded)."""
        rows, counted = await self._fetch_pair(
            f"read the members of {operation_id[:8]}",
            members.subtree_sql(operation_id, path),
            (members.COUNT_SQL, [operation_id]),
        )
        return [members.member(row) for row in rows], int(counted[0]["n"])

    async def member_paths_named(self, operation_id: str, name: str) -> list[str]:
        """The paths (at most 11) of this upload's members whose last segment is `name`."""
        sql, params = members.named_sql(operation_id, name)
        found = await self._fetch(f"look up {name} in the members of {operation_id[:8]}", sql, params)
        return [row["path"] for row in found]

    # -- reading ----------------------------------------------------------------------------------------------

    async def get_operation(self, id_or_prefix: str) -> OperationRecord:
        """The operation with this exact id, or the only one whose id starts with it (at least 4 characters)."""
        doing = f"read operation {id_or_prefix}"
        found = await self._select(doing, "WHERE operation_id = ?", [id_or_prefix])
        if not found and len(id_or_prefix) >= MIN_ID_PREFIX:
            upper = id_or_prefix[:-1] + chr(ord(id_or_prefix[-1]) + 1)
            found = await self._select(
                doing, "WHERE operation_id >= ? AND operation_id < ? LIMIT 2", [id_or_prefix, upper]
            )
            if len(found) > 1:
                rows = await self._fetch(
                    doing,
                    "SELECT count(*) AS n FROM operations WHERE operation_id >= ? AND operation_id < ?",
                    [id_or_prefix, upper],
                )
                raise NotFoundError(f"id prefix {id_or_prefix} is ambiguous: matches {rows[0]['n']} operations")
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
        host: str | None = None,
        limit: int | None = 20,
    ) -> list[OperationRecord]:
        """Operations newest first (by started_at), filtered; `since` is inclusive, `until` exclusive.

        `target` matches a case-insensitive substring of the target name or path; `location` keeps operations
        with a file record at that location; `host` those recorded by that MGMT_HOST_ID; `limit=None` returns them
        all.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, not {limit}")
        clauses, params = operation_filters(
            status=status,
            operation_type=operation_type,
            since=since,
            until=until,
            target=target,
            location=location,
            host=host,
        )
        sql = ("WHERE " + " AND ".join(clauses) + " " if clauses else "") + NEWEST_FIRST
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return await self._select("list operations", sql, params)

    async def find_successful_upload(self, *, checksum_original: str) -> UploadRecord | None:
        """The newest successful upload of a source with this checksum, if any."""
        # `|| ''` keeps the type and status columns out of the index choice (SQLite's unary `+`, which PostgreSQL
        # lacks): without ANALYZE statistics (a real database has none) SQLite would walk every upload by
        # (operation_type, started_at) for the ORDER BY, once per entry of a run: quadratic in the database's size
        # (seen at 10,000 entries). The checksum's own index finds the few rows with this content.
        found = await self._select(
            "look up uploads by checksum",
            "WHERE operation_type || '' = 'upload' AND status || '' = ? AND checksum_original = ? "
            f"{NEWEST_FIRST} LIMIT 1",
            [str(OperationStatus.SUCCESS), checksum_original],
        )
        return as_upload(found[0]) if found else None

    async def find_uploads_by_key(self, *, bucket: str, key: str) -> list[UploadRecord]:
        """Every upload (any status) to this bucket and key, newest first."""
        # `|| ''` as in find_successful_upload: without statistics SQLite walked every upload newest first by
        # (operation_type, started_at) instead of the key's own index (`status NAME`: 11 s on 1,000,000 operations).
        found = await self._select(
            f"look up uploads of s3://{bucket}/{key}",
            f"WHERE operation_type || '' = 'upload' AND s3_bucket = ? AND s3_object_key = ? {NEWEST_FIRST}",
            [bucket, key],
        )
        return [as_upload(r) for r in found]

    async def find_uploads_by_name(self, *, bucket: str, name: str) -> list[UploadRecord]:
        """Every upload (any status) of an entry with this exact target name to this bucket, newest first."""
        found = await self._select(
            f"look up uploads of {name}",
            f"WHERE operation_type || '' = 'upload' AND s3_bucket = ? AND target_name = ? {NEWEST_FIRST}",
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
        return await self._select(
            f"look up operations on s3://{bucket}/{key}", f"WHERE {' OR '.join(clauses)} {NEWEST_FIRST}", params
        )

    async def upload_summaries(
        self,
        *,
        bucket: str | None = None,
        key_prefix: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        keys: Collection[str] | None = None,
    ) -> list[UploadSummary]:
        """Every upload, oldest first (by started_at), to `bucket` (any when None) under `key_prefix`, started in
        [since, until); one query of a dozen columns, so that tens of thousands of uploads stay cheap. With `keys`
        (and a bucket), only the uploads to those keys, read through the key index KEYS_PER_QUERY keys at a time:
        what a listing of a few thousand objects needs stays cheap beside a million recorded uploads."""
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
            " WHERE {where} ORDER BY o.started_at, o.rowid"
        )
        if keys is None or bucket is None:
            rows = await self._fetch("summarise uploads", sql.format(where=" AND ".join(clauses)), params)
        else:
            wanted, rows = sorted(keys), []
            # `|| ''` keeps the planner on the key index (without statistics it would take the type index for the
            # ORDER BY and walk every upload).
            typed = ["o.operation_type || '' = 'upload'", *clauses[1:]]
            for at in range(0, len(wanted), KEYS_PER_QUERY):
                chunk = wanted[at : at + KEYS_PER_QUERY]
                where = " AND ".join([*typed, f"o.s3_object_key IN ({', '.join('?' * len(chunk))})"])
                rows += await self._fetch("summarise uploads", sql.format(where=where), [*params, *chunk])
            rows.sort(key=lambda row: row["started_at"])  # stable: each key's uploads stay in their order
        return [upload_summary(row, path=self.where) for row in rows]

    async def host_activity(self, *, since: datetime) -> list[HostActivity]:
        """Every host that recorded an upload, most recently seen first, with its pending uploads and what ended
        since `since` (one pass over the uploads, grouped by host)."""
        window = utc_iso(since)
        ended = "status IN ('failed', 'partial', 'cancelled')"
        rows = await self._fetch(
            "summarise hosts",
            "SELECT host_id, max(coalesce(completed_at, started_at)) AS last_seen,"
            " sum(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS pending,"
            " sum(CASE WHEN status = 'success' AND started_at >= ? THEN 1 ELSE 0 END) AS done,"
            f" sum(CASE WHEN {ended} AND started_at >= ? THEN 1 ELSE 0 END) AS failed,"
            " sum(CASE WHEN status = 'success' AND started_at >= ? THEN coalesce(original_size, 0) ELSE 0 END)"
            " AS bytes_done"
            " FROM operations WHERE operation_type = 'upload' GROUP BY host_id",
            [window, window, window],
        )
        found = [
            HostActivity(
                host_id=row["host_id"],
                last_seen=datetime.fromisoformat(row["last_seen"]),
                pending=int(row["pending"]),
                done=int(row["done"]),
                failed=int(row["failed"]),
                bytes_done=int(row["bytes_done"]),
            )
            for row in rows
        ]
        return sorted(found, key=lambda h: h.last_seen, reverse=True)

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
        await self._execute(f"journal upload {upload.upload_id[:12]}", JOURNAL_UPLOAD, row)

    async def journal_part(self, upload_id: str, part: JournaledPart) -> None:
        row = [upload_id, part.number, part.size, part.md5, part.etag, part.checksum]
        await self._execute(f"journal part {part.number}", JOURNAL_PART, row)

    async def journal_multipart_state(self, upload_id: str, state: str) -> None:
        """Close a journaled upload: 'completed' or 'aborted'."""
        await self._execute(f"close upload {upload_id[:12]}", CLOSE_UPLOAD, [state, upload_id])

    async def open_multiparts(self, *, bucket: str, key: str | None = None) -> list[JournaledUpload]:
        """Journaled uploads still open (interrupted), oldest first, with their finished parts."""
        columns = ["bucket"] if key is None else ["bucket", "object_key"]
        params: list[Any] = [bucket] if key is None else [bucket, key]
        where = "".join(f" AND {c} = ?" for c in columns)
        uploads, parts = await self._fetch_pair(
            "read the multipart journal",
            (f"SELECT * FROM multipart_uploads WHERE state = 'open'{where} ORDER BY created_at", params),
            (PARTS_OF_OPEN_UPLOADS.format(where="u.state = 'open'" + where.replace(" AND ", " AND u.")), params),
        )
        by_upload: dict[str, list[dict[str, Any]]] = {}
        for part in parts:
            by_upload.setdefault(part["upload_id"], []).append(part)
        return [journaled_upload(row, by_upload.get(row["upload_id"], [])) for row in uploads]

    async def _fetch_pair(
        self, doing: str, first: tuple[str, Sequence[Any]], second: tuple[str, Sequence[Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Two queries; a backend may read them in one transaction."""
        return await self._fetch(doing, *first), await self._fetch(doing, *second)

    # -- runs and entry claims (a catalog several runs share: upload/claims.py) ----------------------------------

    async def register_run(self, lease: RunLease, *, seconds: float) -> float:
        """Record a run starting, its lease running `seconds`; the database's time of its start."""
        rows = await self._write_returning(
            f"register run {lease.run_id[:8]}",
            "INSERT INTO runs (run_id, dir_id, host_id, pid, local_dir, started_at, heartbeat_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, amgmt_now(), amgmt_now(), amgmt_now() + ?) RETURNING started_at",
            [lease.run_id, lease.dir_id, lease.host_id, lease.pid, lease.local_dir, seconds],
        )
        return float(rows[0]["started_at"])

    async def renew_run(self, run_id: str, *, seconds: float) -> int:
        """The run's lease and the claims it holds renewed for `seconds` from now (the database's clock); how many
        claims it holds."""
        await self._execute(
            f"renew run {run_id[:8]}",
            "UPDATE runs SET heartbeat_at = amgmt_now(), expires_at = amgmt_now() + ? WHERE run_id = ?",
            [seconds, run_id],
        )
        rows = await self._write_returning(
            f"renew the claims of run {run_id[:8]}",
            "UPDATE entry_claims SET expires_at = amgmt_now() + ? WHERE run_id = ? AND released_at IS NULL"
            " RETURNING entry",
            [seconds, run_id],
        )
        return len(rows)

    async def end_run(self, run_id: str) -> None:
        """The run ended: its lease closed, and the claims it still holds abandoned (any run may take them)."""
        await self._execute(
            f"abandon the claims of run {run_id[:8]}",
            "UPDATE entry_claims SET expires_at = 0 WHERE run_id = ? AND released_at IS NULL",
            [run_id],
        )
        await self._execute(
            f"end run {run_id[:8]}",
            "UPDATE runs SET ended_at = amgmt_now(), expires_at = amgmt_now() WHERE run_id = ?",
            [run_id],
        )

    async def unended_runs(self, host_id: str | None) -> list[tuple[str, int]]:
        """(run id, pid) of the runs of this host that have not recorded their end."""
        rows = await self._fetch(
            "read this host's runs",
            "SELECT run_id, pid FROM runs WHERE host_id = ? AND ended_at IS NULL",
            [host_id],
        )
        return [(row["run_id"], int(row["pid"])) for row in rows]

    async def claim_entries(
        self, lease: RunLease, entries: Sequence[tuple[str, str]], *, seconds: float, started: float
    ) -> dict[str, Claimed]:
        """Claim the entries (name, operation id) of the lease's local dir for its run, in one statement; the ones
        it got (by name). An entry is got when no run claimed it yet, when the claim of the run that held it ran out
        unreleased (that run died or stalled: a takeover, `Claimed.previous_run`), or when it was released before
        this run `started` (an earlier run ended it) or by this run. Taken in name order: two runs claiming
        overlapping batches wait for each other's rows in one order (no deadlock).

        Correct under concurrency by PostgreSQL's INSERT .. ON CONFLICT DO UPDATE: the conflicting row is locked
        and its WHERE evaluated on its newest committed version, so of two runs claiming one entry at once exactly
        one updates it (the other waits for that commit, then finds the claim live and gets nothing)."""
        if not entries:
            return {}
        ordered = sorted(entries)
        values = ", ".join(["(?, ?, ?, ?, ?, amgmt_now(), amgmt_now() + ?)"] * len(ordered))
        params: list[Any] = []
        for name, operation_id in ordered:
            params += [lease.dir_id, name, lease.run_id, lease.host_id, operation_id, seconds]
        params.append(started)
        rows = await self._write_returning(
            f"claim {len(ordered)} entries",
            "INSERT INTO entry_claims AS c (dir_id, entry, run_id, host_id, operation_id, claimed_at, expires_at)"
            f" VALUES {values}"
            " ON CONFLICT (dir_id, entry) DO UPDATE SET run_id = excluded.run_id, host_id = excluded.host_id,"
            " operation_id = excluded.operation_id, claimed_at = excluded.claimed_at, expires_at = excluded.expires_at,"
            " released_at = NULL,"
            " previous_run = CASE WHEN c.released_at IS NULL THEN c.run_id END,"
            " previous_operation = CASE WHEN c.released_at IS NULL THEN c.operation_id END"
            " WHERE (c.released_at IS NULL AND c.expires_at < amgmt_now())"
            " OR (c.released_at IS NOT NULL AND (c.released_at < ? OR c.run_id = excluded.run_id))"
            " RETURNING entry, previous_run, previous_operation",
            params,
        )
        return {row["entry"]: Claimed(row["entry"], row["previous_run"], row["previous_operation"]) for row in rows}

    async def fence_entries(self, lease: RunLease, names: Sequence[str], *, seconds: float) -> set[str]:
        """Of `names`, those whose claim the lease's run still holds, each renewed for `seconds` from now in the
        same statement: what the run may act on irreversibly for that long (the check before a complete, a PUT
        making the key, or a move)."""
        if not names:
            return set()
        marks = ", ".join("?" * len(names))
        rows = await self._write_returning(
            f"check the claims of {len(names)} entries",
            "UPDATE entry_claims SET expires_at = amgmt_now() + ?"
            f" WHERE dir_id = ? AND run_id = ? AND released_at IS NULL AND entry IN ({marks}) RETURNING entry",
            [seconds, lease.dir_id, lease.run_id, *names],
        )
        return {row["entry"] for row in rows}

    async def release_entries(self, lease: RunLease, names: Sequence[str], *, abandon: Sequence[str] = ()) -> None:
        """The run ended these entries: `names` released (done: a run that started before now leaves them alone),
        `abandon` expired unreleased (not done: any run may take them now). Only claims this run still holds."""
        for doing, released, chosen in (("release", "released_at = amgmt_now(), ", names), ("abandon", "", abandon)):
            rows = [[lease.dir_id, name, lease.run_id] for name in chosen]
            if rows:
                await self._execute_many(
                    f"{doing} {len(rows)} claims",
                    f"UPDATE entry_claims SET {released}expires_at = 0"
                    " WHERE dir_id = ? AND entry = ? AND run_id = ? AND released_at IS NULL",
                    rows,
                )

    async def claimed_operations(self, operation_ids: Sequence[str]) -> set[str]:
        """Of these operations, those a claim still stands for (held by a run whose lease has not run out, or
        released by it): not a dead run's, whatever their record says."""
        if not operation_ids:
            return set()
        marks = ", ".join("?" * len(operation_ids))
        rows = await self._fetch(
            "read the claims of pending operations",
            f"SELECT operation_id FROM entry_claims WHERE operation_id IN ({marks})"
            " AND (released_at IS NOT NULL OR expires_at >= amgmt_now())",
            list(operation_ids),
        )
        return {row["operation_id"] for row in rows}

    async def recent_runs(self, *, within: float) -> list[RunSeen]:
        """Runs that heartbeat within the last `within` seconds or are still going, newest heartbeat first, with
        the entries each holds now and whether its lease still runs (the database's clock)."""
        rows = await self._fetch(
            "read the runs",
            "SELECT r.run_id, r.dir_id, r.host_id, r.pid, r.local_dir, r.started_at, r.heartbeat_at, r.ended_at,"
            " r.expires_at > amgmt_now() AS alive, amgmt_now() AS now,"
            " (SELECT count(*) FROM entry_claims AS c WHERE c.run_id = r.run_id AND c.released_at IS NULL"
            " AND c.expires_at > amgmt_now()) AS in_flight"
            " FROM runs AS r WHERE r.heartbeat_at > amgmt_now() - ? OR r.ended_at IS NULL"
            " ORDER BY r.heartbeat_at DESC",
            [within],
        )
        return [run_seen(row) for row in rows]

    def made_here(self, record: OperationRecord) -> bool:
        """Whether this host made the record (or it predates host ids): only then can a run here know that the
        run which left it pending is dead. In a catalog shared by several hosts, /data/ingest on another host is
        another folder, and its run may be alive."""
        return self.host_id is None or record.host_id is None or record.host_id == self.host_id

    async def mark_interrupted(self, *, target_prefix: str, reason: str) -> list[OperationRecord]:
        """Operations of this host (`made_here`) still 'pending' under `target_prefix` belong to a run that died:
        record them cancelled."""
        stale = await self._select(
            "find interrupted operations", "WHERE status = ? " + NEWEST_FIRST, [str(OperationStatus.PENDING)]
        )
        stale = [
            r
            for r in stale
            if (r.target_path == target_prefix or r.target_path.startswith(target_prefix + "/")) and self.made_here(r)
        ]
        for record in stale:
            stage = getattr(record, "stage", "?")
            record.finish(OperationStatus.CANCELLED, error=f"{stage}: {reason}")
            await self.save_operation(record)
        return stale
