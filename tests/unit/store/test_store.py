"""The store against real databases: round trips, queries, concurrency and the journal on both backends (the
`store` fixture: a SQLite file in tmp_path, and a fresh database of the session's PostgreSQL server, marked `pg`);
the SQLite file's own failure modes (locks, corruption, WAL, deletion) on SQLite alone (`sqlite_store`)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
import pytest_asyncio

from amgmt.store import schema as store_module
from amgmt.store import records as store_records
from amgmt.store import sqlite as store_sqlite
from amgmt.errors import NotFoundError, StoreError
from amgmt.models import (
    UPLOAD_FIELDS,
    FileRecord,
    FileRole,
    FileStatus,
    Location,
    OperationRecord,
    OperationStatus,
    Stage,
    UploadRecord,
    new_operation_id,
)
from amgmt.store import MetadataStore, Store
from amgmt.store.postgres import PostgresStore

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
PLUS_TWO = timezone(timedelta(hours=2))


def make_file_record(role: FileRole, *, name: str = "Holiday 2023") -> FileRecord:
    location = {
        FileRole.SOURCE: Location.LOCAL,
        FileRole.COMPRESSED: Location.LOCAL,
        FileRole.S3: Location.S3,
        FileRole.COMPLETED: Location.COMPLETED,
    }[role]
    return FileRecord(
        name=name if role is not FileRole.COMPRESSED else f"{name}.tar.gz",
        path=f"/media/{role.value}/{name}",
        location=location,
        size=1234,
        is_directory=role in (FileRole.SOURCE, FileRole.COMPLETED),
        mime_type="application/gzip" if role is FileRole.COMPRESSED else None,
        created_at=T0,
        modified_at=T0 + timedelta(seconds=1, microseconds=5),
        accessed_at=None,
        checksum="ab" * 32,
        tags={"role": role.value, "camera": "X-T4"},
        status=FileStatus.COMPLETED,
    )


def make_upload(*, minutes: int = 0, name: str = "Holiday 2023", **changes: object) -> UploadRecord:
    record = UploadRecord(
        operation_id=new_operation_id(),
        target_path=f"/media/in/{name}",
        target_name=name,
        started_at=T0 + timedelta(minutes=minutes),
        s3_bucket="media",
        s3_object_key=f"archive/{name}.tar.gz",
        original_size=1234,
        checksum_original=f"sha-{name}",
        user="alice",
        command_args={"source": "/media/in", "workers": 4, "dry_run": False},
    )
    for key, value in changes.items():
        setattr(record, key, value)
    return record


def with_all_file_records(record: UploadRecord) -> UploadRecord:
    for role in FileRole:
        record.set_file_record(role, make_file_record(role, name=record.target_name))
    return record


def make_operation(*, minutes: int = 0, operation_type: str = "delete", name: str = "old.tar.gz") -> OperationRecord:
    return OperationRecord(
        operation_id=new_operation_id(),
        operation_type=operation_type,
        target_path=f"s3://media/archive/{name}",
        target_name=name,
        started_at=T0 + timedelta(minutes=minutes),
        metadata={"reason": "expired", "nested": {"keys": [1, 2, 3]}},
        command_args={"key": f"archive/{name}", "yes": True},
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "operations.db"


@pytest.fixture
async def sqlite_store(db_path: Path) -> AsyncIterator[MetadataStore]:
    async with MetadataStore(db_path) as opened:
        yield opened


# In the test's own event loop (fixtures default to the session's): asyncpg's connections belong to one loop.
@pytest_asyncio.fixture(loop_scope="function", params=["sqlite", pytest.param("postgres", marks=pytest.mark.pg)])
async def store(request: pytest.FixtureRequest, db_path: Path) -> AsyncIterator[Store]:
    """The same tests on each backend: SQLite (a file in tmp_path), PostgreSQL (a fresh database)."""
    opened: Store
    if request.param == "postgres":
        opened = PostgresStore(request.getfixturevalue("pg_url"))
    else:
        opened = MetadataStore(db_path)
    async with opened:
        yield opened


async def rows_of(store: Store, sql: str) -> list[tuple[Any, ...]]:
    """The rows of a query, through the store's own connection (either backend)."""
    return [tuple(row.values()) for row in await store._fetch("test", sql, [])]


def raw_rows(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(sql).fetchall()
    conn.close()
    return rows


# -- round trips ------------------------------------------------------------------------------------------------


async def test_upload_with_four_file_records_round_trips(store: Store) -> None:
    record = with_all_file_records(make_upload(started_at=datetime(2024, 5, 1, 14, 0, tzinfo=PLUS_TWO)))
    # Fields changed after construction, as the pipeline does at each stage.
    record.compressed_size = 999
    record.compression_ratio = 0.81
    record.checksum_compressed = "cd" * 32
    record.checksum_s3_etag = '"0123456789abcdef0123456789abcdef-2"'
    record.stage = Stage.DONE
    record.verification_method = "etag"
    record.part_size, record.part_count = 8 * 1024 * 1024, 2
    record.metadata["note"] = "café ✓"
    record.finish(OperationStatus.SUCCESS, when=T0 + timedelta(seconds=42.5))

    await store.save_operation(record)
    loaded = await store.get_operation(record.operation_id)

    assert isinstance(loaded, UploadRecord)
    assert loaded == record
    assert loaded.started_at == T0 and loaded.started_at.tzinfo is not None
    assert set(loaded.file_records()) == set(FileRole)
    assert loaded.s3_file_record is not None and loaded.s3_file_record.tags == {"role": "s3", "camera": "X-T4"}
    assert loaded.metadata["compressed_size"] == 999


async def test_plain_operation_round_trips_with_upload_columns_null(store: Store) -> None:
    record = make_operation()
    record.finish(OperationStatus.FAILED, error="AccessDenied", when=T0 + timedelta(seconds=3))

    await store.save_operation(record)
    loaded = await store.get_operation(record.operation_id)

    assert type(loaded) is OperationRecord
    assert loaded == record
    assert await rows_of(store, "SELECT s3_bucket, original_size, stage FROM operations") == [(None, None, None)]
    assert await rows_of(store, "SELECT count(*) FROM file_records") == [(0,)]


async def test_saving_again_updates_without_duplicating(store: Store) -> None:
    record = with_all_file_records(make_upload())
    await store.save_operation(record)

    record.stage = Stage.VERIFY
    record.status = OperationStatus.FAILED
    record.error_message = "ETag mismatch"
    assert record.s3_file_record is not None
    record.s3_file_record.status = FileStatus.FAILED
    record.s3_file_record.tags["retry"] = "1"
    record.completed_file_record = None  # fewer file records: the stored one is kept (upsert only)
    await store.save_operation(record)

    loaded = await store.get_operation(record.operation_id)
    assert isinstance(loaded, UploadRecord)
    assert (loaded.stage, loaded.status, loaded.error_message) == ("verify", "failed", "ETag mismatch")
    assert loaded.s3_file_record == record.s3_file_record
    assert loaded.completed_file_record is not None
    assert await rows_of(store, "SELECT count(*) FROM operations") == [(1,)]
    assert await rows_of(store, "SELECT count(*) FROM file_records") == [(4,)]


async def test_operations_table_has_a_column_for_every_upload_field(sqlite_store: MetadataStore, db_path: Path) -> None:
    operation_columns = [row[1] for row in raw_rows(db_path, "PRAGMA table_info(operations)")]
    file_columns = [row[1] for row in raw_rows(db_path, "PRAGMA table_info(file_records)")]
    assert sorted(operation_columns) == sorted(UPLOAD_FIELDS)
    assert sorted(file_columns) == sorted(["operation_id", "role", *(f.name for f in dataclasses.fields(FileRecord))])


# -- lookups ----------------------------------------------------------------------------------------------------


async def test_get_operation_by_exact_id_and_unique_prefix(store: Store) -> None:
    first = make_operation()
    first.operation_id = "abcd1111-0000"
    second = make_operation()
    second.operation_id = "abcd2222-0000"
    third = make_operation()
    third.operation_id = "abcd2223-0000"
    for record in (first, second, third):
        await store.save_operation(record)

    assert (await store.get_operation("abcd1111-0000")) == first
    assert (await store.get_operation("abcd1")) == first

    with pytest.raises(NotFoundError, match=r"^id prefix abcd is ambiguous: matches 3 operations$"):
        await store.get_operation("abcd")
    with pytest.raises(NotFoundError, match=r"^id prefix abcd222 is ambiguous: matches 2 operations$"):
        await store.get_operation("abcd222")
    with pytest.raises(NotFoundError, match=r"^no operation with id ffff$"):
        await store.get_operation("ffff")
    with pytest.raises(NotFoundError, match=r"^no operation with id abc \(a prefix needs 4\+ characters\)$"):
        await store.get_operation("abc")


async def test_list_operations_filters_orders_and_limits(store: Store) -> None:
    old_ok = with_all_file_records(make_upload(minutes=0, name="Wedding"))
    old_ok.status = OperationStatus.SUCCESS
    mid_fail = make_upload(minutes=10, name="Café Trip")
    mid_fail.set_file_record(FileRole.SOURCE, make_file_record(FileRole.SOURCE, name="Café Trip"))
    mid_fail.status = OperationStatus.FAILED
    delete = make_operation(minutes=20, name="wedding.tar.gz")
    delete.status = OperationStatus.SUCCESS
    new_ok = make_upload(minutes=30, name="Birthday")
    new_ok.status = OperationStatus.SUCCESS
    for record in (mid_fail, new_ok, old_ok, delete):  # saved out of order on purpose
        await store.save_operation(record)

    async def ids(**filters: object) -> list[str]:
        return [r.operation_id for r in await store.list_operations(**filters)]  # type: ignore[arg-type]

    everything = [new_ok.operation_id, delete.operation_id, mid_fail.operation_id, old_ok.operation_id]
    assert await ids() == everything
    assert await ids(limit=None) == everything
    assert await ids(limit=2) == everything[:2]
    assert await ids(limit=0) == []
    assert await ids(status="success") == [new_ok.operation_id, delete.operation_id, old_ok.operation_id]
    assert await ids(status=OperationStatus.FAILED) == [mid_fail.operation_id]
    assert await ids(operation_type="delete") == [delete.operation_id]
    assert await ids(since=T0 + timedelta(minutes=10)) == everything[:3]
    assert await ids(until=T0 + timedelta(minutes=10)) == [old_ok.operation_id]
    assert await ids(since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=25)) == everything[1:3]
    # the same instant given in another time zone
    assert await ids(since=datetime(2024, 5, 1, 14, 30, tzinfo=PLUS_TWO)) == [new_ok.operation_id]
    assert await ids(target="WEDDING") == [delete.operation_id, old_ok.operation_id]
    assert await ids(target="café") == [mid_fail.operation_id]
    assert await ids(target="CAFÉ") == [mid_fail.operation_id]
    assert await ids(target="media/in/") == [new_ok.operation_id, mid_fail.operation_id, old_ok.operation_id]
    assert await ids(location=Location.COMPLETED) == [old_ok.operation_id]
    assert await ids(location="local") == [mid_fail.operation_id, old_ok.operation_id]
    assert await ids(status="success", operation_type="upload", target="wed") == [old_ok.operation_id]

    listed = await store.list_operations(limit=None)
    assert listed == [new_ok, delete, mid_fail, old_ok]  # uploads come back with their file records


async def test_find_successful_upload_returns_the_newest_success(store: Store) -> None:
    older = make_upload(minutes=0, status=OperationStatus.SUCCESS)
    newer = with_all_file_records(make_upload(minutes=5, status=OperationStatus.SUCCESS))
    newest_failed = make_upload(minutes=9, status=OperationStatus.FAILED)
    other_source = make_upload(minutes=7, name="Other", status=OperationStatus.SUCCESS)
    for record in (older, newer, newest_failed, other_source):
        await store.save_operation(record)

    found = await store.find_successful_upload(checksum_original="sha-Holiday 2023")
    assert found == newer
    assert await store.find_successful_upload(checksum_original="sha-unknown") is None


async def test_find_uploads_by_key_newest_first(store: Store) -> None:
    first = make_upload(minutes=0, status=OperationStatus.FAILED)
    second = make_upload(minutes=1, status=OperationStatus.SUCCESS)
    elsewhere = make_upload(minutes=2, s3_bucket="other-bucket")
    for record in (second, first, elsewhere):
        await store.save_operation(record)

    found = await store.find_uploads_by_key(bucket="media", key="archive/Holiday 2023.tar.gz")
    assert found == [second, first]
    assert await store.find_uploads_by_key(bucket="media", key="nope") == []


# -- concurrency ------------------------------------------------------------------------------------------------


async def test_upload_summaries_of_some_keys_are_those_of_all_uploads_to_them(store: Store) -> None:
    # Both backends: the keys bound in batches of an IN (...) list, oldest first as without keys.
    for i in range(30):
        await store.save_operation(make_upload(minutes=i, name=f"clip{i % 12:02d}.mp4"))
    everything = await store.upload_summaries(bucket="media")
    wanted = {f"archive/clip{i:02d}.mp4.tar.gz" for i in (1, 5, 11)} | {"archive/none.tar.gz"}

    some = await store.upload_summaries(bucket="media", keys=wanted, key_prefix="archive/")

    assert some == [s for s in everything if s.s3_object_key in wanted] and len(some) == 8
    assert await store.upload_summaries(bucket="media", keys=set()) == []


async def test_fifty_concurrent_tasks_through_six_stage_updates(store: Store) -> None:
    records = [make_upload(minutes=i, name=f"entry-{i:02d}") for i in range(50)]
    stages = [Stage.RECORD, Stage.COMPRESS, Stage.UPLOAD, Stage.VERIFY, Stage.MOVE, Stage.DONE]

    async def run_entry(record: UploadRecord) -> None:
        for step, stage in enumerate(stages):
            record.stage = stage
            if stage is Stage.COMPRESS:
                record.set_file_record(FileRole.SOURCE, make_file_record(FileRole.SOURCE, name=record.target_name))
                record.set_file_record(
                    FileRole.COMPRESSED, make_file_record(FileRole.COMPRESSED, name=record.target_name)
                )
            if stage is Stage.UPLOAD:
                record.set_file_record(FileRole.S3, make_file_record(FileRole.S3, name=record.target_name))
            if stage is Stage.MOVE:
                record.set_file_record(
                    FileRole.COMPLETED, make_file_record(FileRole.COMPLETED, name=record.target_name)
                )
            if stage is Stage.DONE:
                record.finish(OperationStatus.SUCCESS, when=record.started_at + timedelta(seconds=step))
            record.compressed_size = step
            await store.save_operation(record)
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        for record in records:
            tg.start_soon(run_entry, record)

    loaded = await store.list_operations(limit=None)
    assert sorted(loaded, key=lambda r: r.target_name) == records
    assert all(isinstance(r, UploadRecord) and r.stage == "done" and r.status == "success" for r in loaded)
    assert await rows_of(store, "SELECT count(*) FROM operations") == [(50,)]
    assert await rows_of(store, "SELECT count(*) FROM file_records") == [(200,)]


async def test_save_operations_writes_many_records_in_one_transaction(store: MetadataStore, db_path: Path) -> None:
    records = [with_all_file_records(make_upload(minutes=i, name=f"photo-{i:03d}")) for i in range(40)]
    records.append(make_operation(minutes=50))  # a plain operation beside the uploads
    begun: list[str] = []
    db = store._db
    assert db is not None
    await db.set_trace_callback(lambda sql: begun.append(sql) if sql.startswith("BEGIN") else None)
    await store.save_operations(records)
    await db.set_trace_callback(None)  # type: ignore[arg-type]
    assert begun == ["BEGIN IMMEDIATE"]  # one transaction for all 41
    loaded = {r.operation_id: r for r in await store.list_operations(limit=None)}
    assert [loaded[r.operation_id] for r in records] == records  # each record whole, with its four file records
    assert raw_rows(db_path, "SELECT count(*) FROM file_records") == [(160,)]
    # Saving again updates in place; an empty call is a no-op.
    for record in records[:40]:
        record.stage = Stage.MOVE
    await store.save_operations(records[:40])
    await store.save_operations([])
    assert raw_rows(db_path, "SELECT count(*) FROM operations") == [(41,)]
    assert {r.stage for r in await store.list_operations(operation_type="upload", limit=None)} == {"move"}


async def test_save_operations_failing_midway_saves_none_of_its_records(
    sqlite_store: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operations' rows are written, then the transaction fails before the file records: none of it stays.
    store = sqlite_store
    records = [with_all_file_records(make_upload(minutes=i, name=f"photo-{i}")) for i in range(5)]

    def half_then_fail(conn: sqlite3.Connection, operation_rows: list[Any], file_rows: list[Any]) -> None:
        conn.executemany(store_records.UPSERT_OPERATION, operation_rows)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store_sqlite, "write_rows", half_then_fail)
    with pytest.raises(StoreError):
        await store.save_operations(records)
    monkeypatch.undo()
    assert await store.list_operations(limit=None) == []
    await store.save_operations(records)  # the store takes the next save
    assert len(await store.list_operations(limit=None)) == 5


@pytest.mark.parametrize(
    "cancelled_during", ["BEGIN IMMEDIATE", "INSERT INTO operations", "INSERT INTO file_records", "COMMIT"]
)
async def test_a_save_cancelled_midway_is_written_whole_and_the_store_stays_usable(
    sqlite_store: MetadataStore, cancelled_during: str
) -> None:
    # The cancel lands while that statement runs on the connection's thread (aiosqlite is asyncio-only). The whole
    # transaction runs there as one function, so a cancelled caller never leaves half a save: it is written whole
    # (never a part of it), and the store takes the next save.
    saved = True
    loop = asyncio.get_running_loop()
    db = sqlite_store._db
    assert db is not None
    record = with_all_file_records(make_upload())
    with anyio.CancelScope() as scope:

        def cancel_on(sql: str) -> None:
            if sql.startswith(cancelled_during):
                loop.call_soon_threadsafe(scope.cancel)

        await db.set_trace_callback(cancel_on)
        await sqlite_store.save_operation(record)
    await db.set_trace_callback(None)  # type: ignore[arg-type]  # None removes it (sqlite3 docs)
    assert scope.cancelled_caught

    if saved:
        assert await sqlite_store.get_operation(record.operation_id) == record
    else:
        with pytest.raises(NotFoundError):
            await sqlite_store.get_operation(record.operation_id)
    survivor = with_all_file_records(make_upload(minutes=1))
    await sqlite_store.save_operation(survivor)
    assert await sqlite_store.list_operations() == ([survivor, record] if saved else [survivor])


# -- the database file ------------------------------------------------------------------------------------------


async def test_connection_uses_wal_and_the_agreed_pragmas(sqlite_store: MetadataStore, db_path: Path) -> None:
    await sqlite_store.save_operation(make_operation())
    assert Path(f"{db_path}-wal").exists()
    assert raw_rows(db_path, "PRAGMA journal_mode") == [("wal",)]
    db = sqlite_store._db
    assert db is not None
    pragmas = {}
    for name in ("synchronous", "foreign_keys", "busy_timeout"):
        pragmas[name] = next(iter(await db.execute_fetchall(f"PRAGMA {name}")))[0]
    assert pragmas == {"synchronous": 1, "foreign_keys": 1, "busy_timeout": 5000}


async def test_creates_private_directory_and_files(sqlite_store: MetadataStore, db_path: Path) -> None:
    await sqlite_store.save_operation(make_operation())
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_reopening_keeps_data_and_applies_only_missing_migrations(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = with_all_file_records(make_upload())
    released = store_module.MIGRATIONS
    # A database made by the first release (schema v1, whose operations rows had no later column) ...
    monkeypatch.setattr(store_module, "MIGRATIONS", released[:1])
    first_columns = [c for c in store_records.OPERATION_COLUMNS if c not in ("checksum_s3", "host_id")]
    with monkeypatch.context() as first_release:
        first_release.setattr(store_records, "OPERATION_COLUMNS", tuple(first_columns))
        first_release.setattr(
            store_sqlite, "UPSERT_OPERATION", store_records._upsert_sql("operations", first_columns, ["operation_id"])
        )
        async with MetadataStore(db_path) as first:
            await first.save_operation(record)
    assert raw_rows(db_path, "PRAGMA user_version") == [(1,)]
    # ... is upgraded by this one, keeping its rows.
    monkeypatch.setattr(store_module, "MIGRATIONS", released)
    async with MetadataStore(db_path) as second:
        assert await second.get_operation(record.operation_id) == record
        assert await second.open_multiparts(bucket="b") == []
    assert raw_rows(db_path, "PRAGMA user_version") == [(len(released),)]

    extra = "CREATE TABLE probe (n INTEGER); INSERT INTO probe (n) VALUES (1);"
    monkeypatch.setattr(store_module, "MIGRATIONS", (*released, extra))
    for _ in range(2):
        async with MetadataStore(db_path) as third:
            assert await third.get_operation(record.operation_id) == record
    assert raw_rows(db_path, "PRAGMA user_version") == [(len(released) + 1,)]
    assert raw_rows(db_path, "SELECT n FROM probe") == [(1,)]


async def test_a_database_from_a_newer_amgmt_is_refused(db_path: Path) -> None:
    async with MetadataStore(db_path):
        pass
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()

    store = MetadataStore(db_path)
    with pytest.raises(StoreError, match="schema version 99, newer than this amgmt supports"):
        await store.open()
    with pytest.raises(StoreError, match="is not open"):
        await store.list_operations()


async def test_a_corrupt_file_gives_store_error(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.write_bytes(b"this is not a database\x00\xff" * 200)
    with pytest.raises(StoreError, match=r"operations\.db is not a valid SQLite database \(corrupt\?\)") as info:
        await MetadataStore(db_path).open()
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


async def test_locked_database_at_open_gives_store_error(db_path: Path) -> None:
    db_path.parent.mkdir()
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("CREATE TABLE other (x)")  # a rollback-journal database: EXCLUSIVE also blocks readers
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match=r"operations\.db is locked by another process") as info:
            await MetadataStore(db_path, busy_timeout=0.1).open()
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    finally:
        holder.close()


async def test_locked_database_at_save_gives_store_error_and_recovers(db_path: Path) -> None:
    async with MetadataStore(db_path, busy_timeout=0.1) as store:
        holder = sqlite3.connect(db_path, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            with pytest.raises(StoreError, match="locked by another process"):
                await store.save_operation(make_operation())
        finally:
            holder.close()
        record = make_operation()
        await store.save_operation(record)
        assert await store.get_operation(record.operation_id) == record


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
async def test_an_unwritable_location_gives_store_error(tmp_path: Path) -> None:
    locked_dir = tmp_path / "ro"
    locked_dir.mkdir(mode=0o500)
    try:
        with pytest.raises(StoreError, match=r"cannot create metadata database at .*: Permission denied"):
            await MetadataStore(locked_dir / "state" / "operations.db").open()
    finally:
        locked_dir.chmod(0o700)


async def test_a_file_in_the_way_of_the_directory_gives_store_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    with pytest.raises(StoreError, match=r"cannot create metadata database at .*operations\.db: ") as info:
        await MetadataStore(tmp_path / "state" / "operations.db").open()
    assert isinstance(info.value.__cause__, OSError)


async def test_multipart_journal_round_trip(store: Store) -> None:
    from amgmt.store import JournaledPart, JournaledUpload

    upload = JournaledUpload("up-1", "op-1", "b", "k.tar.gz", "ab" * 32, 5 * 2**20, 3, checksum_algorithm="crc64nvme")
    await store.journal_multipart(upload)
    await store.journal_multipart(upload)  # again: kept as it was
    await store.journal_part("up-1", JournaledPart(2, 10, "m2", "e2"))
    await store.journal_part("up-1", JournaledPart(1, 10, "m0", "e0"))
    await store.journal_part("up-1", JournaledPart(1, 10, "m1", "e1", "crc"))  # a part sent again replaces it
    other = JournaledUpload("up-2", "op-2", "b", "other.tar.gz", "cd" * 32, 5 * 2**20, 2)
    await store.journal_multipart(other)
    await store.journal_part("up-2", JournaledPart(1, 7, "m", "e"))
    [found] = await store.open_multiparts(bucket="b", key="k.tar.gz")
    assert found.upload_id == "up-1" and found.archive_sha256 == "ab" * 32
    assert found.checksum_algorithm == "crc64nvme" and found.created_at is not None
    assert found.parts == (JournaledPart(1, 10, "m1", "e1", "crc"), JournaledPart(2, 10, "m2", "e2"))
    assert [(u.upload_id, len(u.parts)) for u in await store.open_multiparts(bucket="b")] == [("up-1", 2), ("up-2", 1)]
    assert await store.open_multiparts(bucket="other") == []
    await store.journal_multipart_state("up-1", "completed")
    assert [u.upload_id for u in await store.open_multiparts(bucket="b")] == ["up-2"]


async def test_mark_interrupted_only_touches_pending_records_under_the_prefix(store: Store) -> None:
    inside = make_upload()
    inside.target_path = "/media/a.mp4"
    outside = make_upload()
    outside.target_path = "/other/b.mp4"
    done = make_upload()
    done.target_path = "/media/c.mp4"
    done.finish(OperationStatus.SUCCESS)
    for record in (inside, outside, done):
        await store.save_operation(record)
    [stale] = await store.mark_interrupted(target_prefix="/media", reason="process died")
    assert stale.operation_id == inside.operation_id
    again = await store.get_operation(inside.operation_id)
    assert again.status == OperationStatus.CANCELLED and "process died" in (again.error_message or "")
    assert (await store.get_operation(outside.operation_id)).status == OperationStatus.PENDING
    assert (await store.get_operation(done.operation_id)).status == OperationStatus.SUCCESS


async def test_mark_interrupted_leaves_the_pending_records_of_other_hosts(store: Store) -> None:
    # /media on another host is another folder (a catalog shared by several hosts): its run may be alive.
    store.host_id = "ingest-1"
    mine, theirs, older = make_upload(name="a.mp4"), make_upload(name="b.mp4"), make_upload(name="c.mp4")
    theirs.host_id = "ingest-2"
    older.host_id = None
    for record, path in ((mine, "/media/a.mp4"), (theirs, "/media/b.mp4"), (older, "/media/c.mp4")):
        record.target_path = path
    await store.save_operations([theirs])
    store.host_id = None
    await store.save_operations([older])  # saved before amgmt recorded hosts
    store.host_id = "ingest-1"
    await store.save_operations([mine])
    stale = await store.mark_interrupted(target_prefix="/media", reason="process died")
    assert sorted(r.target_name for r in stale) == ["a.mp4", "c.mp4"]
    assert (await store.get_operation(theirs.operation_id)).status == OperationStatus.PENDING
    assert [store.made_here(r) for r in (mine, theirs, older)] == [True, False, True]


async def test_host_activity_sums_each_hosts_uploads(store: Store) -> None:
    def upload(host: str | None, minutes: int, status: OperationStatus, size: int = 100) -> UploadRecord:
        record = make_upload(minutes=minutes, name=f"{host}-{minutes}.mp4", original_size=size)
        record.host_id = host
        record.status = status
        if status != OperationStatus.PENDING:
            record.finish(status, when=record.started_at + timedelta(seconds=30))
        return record

    records = [
        upload("ingest-1", 0, OperationStatus.SUCCESS, 5000),  # before the window
        upload("ingest-1", 70, OperationStatus.SUCCESS, 1000),
        upload("ingest-1", 75, OperationStatus.SUCCESS, 2000),
        upload("ingest-1", 80, OperationStatus.FAILED),
        upload("ingest-1", 90, OperationStatus.PENDING),
        upload("ingest-2", 65, OperationStatus.CANCELLED),
        upload(None, 1, OperationStatus.SUCCESS),  # saved before amgmt recorded hosts
    ]
    await store.save_operations(records)
    await store.save_operation(make_operation(minutes=120))  # not an upload: not counted
    found = await store.host_activity(since=T0 + timedelta(minutes=60))
    assert [(h.host_id, h.pending, h.done, h.failed, h.bytes_done) for h in found] == [
        ("ingest-1", 1, 2, 1, 3000),
        ("ingest-2", 0, 0, 1, 0),
        (None, 0, 0, 0, 0),
    ]
    assert found[0].last_seen == T0 + timedelta(minutes=90)  # the pending upload's start
    assert found[1].last_seen == T0 + timedelta(minutes=65, seconds=30)  # its end
    assert await store.host_activity(since=T0) != found


# -- several records in one transaction, the host of each operation ----------------------------------------------


async def test_save_operations_writes_many_records_in_one_transaction(store: Store) -> None:
    records = [with_all_file_records(make_upload(minutes=i, name=f"clip{i}.mp4")) for i in range(30)]
    records += [make_operation(minutes=40 + i, name=f"gone{i}.tar.gz") for i in range(3)]
    writes: list[int] = []
    write_rows = store._write_rows

    async def counting(doing: str, operation_rows: list[list[Any]], file_rows: list[list[Any]]) -> None:
        writes.append(len(operation_rows))
        await write_rows(doing, operation_rows, file_rows)

    store._write_rows = counting  # type: ignore[method-assign]
    await store.save_operations(records)
    await store.save_operations([])
    assert writes == [33]  # one transaction
    assert await store.list_operations(limit=None) == sorted(records, key=lambda r: r.started_at, reverse=True)
    assert await rows_of(store, "SELECT count(*) FROM file_records") == [(120,)]


async def test_a_failed_save_operations_writes_none_of_them(store: Store) -> None:
    good = make_upload(name="good.mp4")
    bad = make_upload(name="bad.mp4")
    bad.original_size = 2**70  # no database integer holds it: the transaction fails as a whole
    with pytest.raises((StoreError, OverflowError)):
        await store.save_operations([good, bad])
    assert await store.list_operations() == []
    await store.save_operations([good])
    assert await store.list_operations() == [good]


async def test_every_operation_records_its_host_and_history_filters_by_it(store: Store) -> None:
    store.host_id = "ingest-1"
    mine = make_upload(minutes=1, name="a.mp4")
    theirs = make_upload(minutes=2, name="b.mp4")
    theirs.host_id = "ingest-2"  # saved by another host: kept
    await store.save_operations([mine, theirs])
    await store.save_operation(make_operation(minutes=3))
    assert mine.host_id == "ingest-1"
    assert (await store.get_operation(mine.operation_id)).host_id == "ingest-1"
    assert [r.target_name for r in await store.list_operations(host="ingest-1")] == ["old.tar.gz", "a.mp4"]
    assert [r.target_name for r in await store.list_operations(host="ingest-2")] == ["b.mp4"]
    assert await store.list_operations(host="ingest") == []  # exact, not a substring


# -- the database file deleted or replaced under an open store ---------------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_database_deleted_or_replaced_during_the_run_stops_every_write(
    sqlite_store: MetadataStore, db_path: Path, how: str
) -> None:
    first = make_upload(name="a.mp4")
    await sqlite_store.save_operation(first)
    sqlite_store.check_alive()  # unchanged: nothing to say
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        path.unlink(missing_ok=True)
    if how == "replaced":
        async with MetadataStore(db_path):
            pass  # another database now at the same path

    message = f"the metadata database {db_path} was deleted or replaced during the run"
    with pytest.raises(StoreError, match="was deleted or replaced during the run") as checked:
        sqlite_store.check_alive()
    assert str(checked.value) == message
    with pytest.raises(StoreError, match="was deleted or replaced during the run"):
        await sqlite_store.save_operation(make_upload(name="b.mp4"))
    with pytest.raises(StoreError, match="was deleted or replaced during the run"):
        await sqlite_store.journal_multipart_state("upload-1", "aborted")


# -- the one private use of aiosqlite ---------------------------------------------------------------------------


async def test_aiosqlite_private_api_is_still_there(sqlite_store: MetadataStore) -> None:
    """`in_connection_thread` runs a transaction through aiosqlite's private `Connection._execute` and `._conn`
    (pinned in pyproject.toml). If an aiosqlite release moves them, this fails first, saying what to check."""
    import inspect
    import threading
    from importlib.metadata import version

    import aiosqlite

    from amgmt.store.connection import in_connection_thread

    moved = (
        f"aiosqlite {version('aiosqlite')} changed the private Connection._execute/._conn that "
        "amgmt.store.connection.in_connection_thread uses: adapt it (or keep the pin in pyproject.toml)"
    )
    assert inspect.iscoroutinefunction(getattr(aiosqlite.Connection, "_execute", None)), moved
    assert isinstance(inspect.getattr_static(aiosqlite.Connection, "_conn", None), property), moved
    db = sqlite_store._db
    assert db is not None

    def where(conn: sqlite3.Connection) -> tuple[int, sqlite3.Connection]:
        return threading.get_ident(), conn

    ident, conn = await in_connection_thread(db, where)
    assert isinstance(conn, sqlite3.Connection), moved
    # The same thread as aiosqlite's own public calls: a function registered publicly reports where it runs.
    await db.create_function("probe_thread", 0, threading.get_ident)
    public_ident = next(iter(await db.execute_fetchall("SELECT probe_thread()")))[0]
    assert ident == public_ident != threading.get_ident(), moved


async def test_claims_one_holder_takeover_after_the_lease_fence_and_release(store: Store) -> None:
    from amgmt.store import Claimed, RunLease

    a = RunLease("run-a", "dir-1", "host-a", 11, "/media")
    b = RunLease("run-b", "dir-1", "host-b", 22, "/mnt/media")
    a_started = await store.register_run(a, seconds=60)
    got = await store.claim_entries(a, [("x.mov", "op-ax"), ("y.mov", "op-ay"), ("z.mov", "op-az")], seconds=60,
                                    started=a_started)  # fmt: skip
    assert set(got) == {"x.mov", "y.mov", "z.mov"} and got["x.mov"] == Claimed("x.mov")
    b_started = await store.register_run(b, seconds=60)
    # Held by a live run: B gets none of them; an entry of another local dir is another claim.
    assert await store.claim_entries(b, [("x.mov", "op-bx"), ("y.mov", "op-by")], seconds=60, started=b_started) == {}
    other_dir = RunLease("run-b", "dir-2", "host-b", 22, "/mnt/other")
    assert set(await store.claim_entries(other_dir, [("x.mov", "op-b2")], seconds=60, started=b_started)) == {"x.mov"}
    # A ends x (released after B started: B leaves it, it was done meanwhile) and abandons y (cancelled: anyone may
    # take it, as a takeover of A's operation); z's lease runs out (A stalls: its claims made to lapse here).
    await store.release_entries(a, ["x.mov"], abandon=["y.mov"])
    await store._execute("test", "UPDATE entry_claims SET expires_at = amgmt_now() - 1 WHERE entry = 'z.mov'", [])
    got = await store.claim_entries(
        b, [("x.mov", "op-bx"), ("y.mov", "op-by"), ("z.mov", "op-bz")], seconds=60, started=b_started
    )
    assert got == {
        "y.mov": Claimed("y.mov", "run-a", "op-ay"),
        "z.mov": Claimed("z.mov", "run-a", "op-az"),
    }
    # Fencing: A no longer holds z (B took it over); B does, and the fence renews it.
    assert await store.fence_entries(a, ["z.mov"], seconds=60) == set()
    assert await store.fence_entries(b, ["y.mov", "z.mov", "x.mov"], seconds=60) == {"y.mov", "z.mov"}
    assert await store.claimed_operations(["op-ax", "op-ay", "op-az", "op-by"]) == {"op-ax", "op-by"}
    # A's renewals do not take anything back; its release of z touches nothing (the claim is B's).
    assert await store.renew_run("run-a", seconds=60) == 0
    await store.release_entries(a, ["z.mov"])
    assert await store.fence_entries(b, ["z.mov"], seconds=60) == {"z.mov"}
    # A run that starts after x was released may take it again (a re-run); B may re-claim what it released itself.
    c = RunLease("run-c", "dir-1", "host-a", 33, "/media")
    c_started = await store.register_run(c, seconds=60)
    assert set(await store.claim_entries(c, [("x.mov", "op-cx")], seconds=60, started=c_started)) == {"x.mov"}
    await store.release_entries(b, ["y.mov"])
    assert set(await store.claim_entries(b, [("y.mov", "op-by2")], seconds=60, started=b_started)) == {"y.mov"}
    # The fleet's view: B holds 2 (y again, z), C 1 (x); ending a run abandons what it holds.
    seen = {r.run_id: r for r in await store.recent_runs(within=3600)}
    assert {k: (r.alive, r.in_flight) for k, r in seen.items()} == {
        "run-a": (True, 0),
        "run-b": (True, 3),  # y, z and x of dir-2
        "run-c": (True, 1),
    }
    await store.end_run("run-b")
    seen = {r.run_id: r for r in await store.recent_runs(within=3600)}
    assert (seen["run-b"].alive, seen["run-b"].in_flight, seen["run-b"].ended_at is not None) == (False, 0, True)
    got = await store.claim_entries(a, [("z.mov", "op-az2")], seconds=60, started=a_started)
    assert got == {"z.mov": Claimed("z.mov", "run-b", "op-bz")}
