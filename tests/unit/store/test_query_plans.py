"""Every query the store sends is answered through an index, never by reading the whole operations table, except
where reading everything is the request itself (a substring search of names). Checked
with EXPLAIN QUERY PLAN on the statements the store really sends (traced), on a database with enough rows for
SQLite's planner to choose as it would on a large one (ANALYZE)."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from amgmt.models import OperationStatus
from amgmt.store import MetadataStore
from amgmt.store.connection import in_connection_thread
from amgmt.store.records import fold

from test_store import make_operation, make_upload, with_all_file_records

# A SCAN reads every row (USING INDEX only changes the order it reads them in); SEARCH reads what matches.
FULL_SCAN = re.compile(r"\bSCAN (operations|file_records|multipart_uploads|upload_parts|o|f)\b")
NEWEST = "SELECT * FROM operations ORDER BY started_at DESC, rowid DESC LIMIT"  # `history`: reads LIMIT rows, stops


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[tuple[MetadataStore, list[str]]]:
    db_path = tmp_path / "operations.db"
    async with MetadataStore(db_path) as store:
        for i in range(300):
            status = OperationStatus.FAILED if i % 7 == 0 else OperationStatus.SUCCESS
            record = with_all_file_records(make_upload(minutes=i, name=f"clip{i:03d}.mp4", status=status))
            await store.save_operation(record)
        for i in range(50):
            await store.save_operation(make_operation(minutes=i, name=f"gone{i}.tar.gz"))
        assert store._db is not None
        await in_connection_thread(store._db, lambda conn: conn.execute("ANALYZE"))
        statements: list[str] = []
        await in_connection_thread(store._db, lambda conn: conn.set_trace_callback(statements.append))
        yield store, statements


def plans(db_path: Path, statements: list[str]) -> dict[str, list[str]]:
    """EXPLAIN QUERY PLAN of each traced SELECT (its parameters already inlined by the trace)."""
    conn = sqlite3.connect(db_path)
    conn.create_function("amgmt_fold", 1, fold, deterministic=True)
    try:
        return {
            sql: [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()]
            for sql in statements
            if sql.lstrip().upper().startswith("SELECT")
        }
    finally:
        conn.close()


async def test_lookups_and_history_use_indexes(traced: tuple[MetadataStore, list[str]]) -> None:
    store, statements = traced
    now = datetime.now(UTC)
    some = (await store.list_operations(limit=1))[0]
    statements.clear()
    await store.list_operations()  # `history`
    await store.list_operations(status="failed")  # `history --status failed`
    await store.list_operations(operation_type="delete")
    await store.list_operations(since=now - timedelta(hours=1))
    await store.list_operations(status="success", since=now - timedelta(days=1), until=now)
    await store.get_operation(some.operation_id)
    await store.get_operation(some.operation_id[:6])
    await store.find_successful_upload(checksum_original="0" * 64)
    await store.find_uploads_by_key(bucket="bucket", key="clip007.mp4.tar.gz")
    await store.find_uploads_by_name(bucket="bucket", name="clip007.mp4")
    await store.find_operations_on(
        bucket="bucket", key="clip007.mp4.tar.gz", target_path="/media/clip007.mp4", target_name="clip007.mp4"
    )
    await store.open_multiparts(bucket="bucket", key="clip007.mp4.tar.gz")
    await store.mark_interrupted(target_prefix="/media", reason="test")
    found = plans(store.path, statements)
    assert len(found) >= 13, list(found)
    scans = {sql: plan for sql, plan in found.items() if any(FULL_SCAN.search(line) for line in plan)}
    assert [sql for sql in scans if sql.startswith(NEWEST)] == [next(s for s in found if s.startswith(NEWEST))]
    assert {sql: plan for sql, plan in scans.items() if not sql.startswith(NEWEST)} == {}


async def test_a_name_search_reads_every_row_by_design(traced: tuple[MetadataStore, list[str]]) -> None:
    """The one exception, checked so that the test above stays honest: a substring of a name cannot use an index
    (`history NAME`, `search`); it reads each row once, newest first, and stops at the limit."""
    store, statements = traced
    statements.clear()
    await store.list_operations(target="clip0")
    [(sql, plan)] = [(sql, plan) for sql, plan in plans(store.path, statements).items() if "operations WHERE" in sql]
    assert any(FULL_SCAN.search(line) for line in plan), plan


NAMES = [
    "Straße.mov",
    "STRASSE.MOV",
    "a_b.mov",
    "a%b.mov",
    "axb.mov",
    "café.jpg",
    "CAFÉ.JPG",
    "Cafe\u0301.jpg",
    "tab\tname",
    "plain.MP4",
    "K-kelvin\u212a.x",
    "back\\slash",
]


@pytest.mark.parametrize(
    "needle", ["strasse", "ß", "a_b", "a%b", "CAFÉ", "café", "MP4", "\t", "kelvink", "k", "\\s", "nothing"]
)
async def test_a_name_search_matches_what_python_folding_matches(tmp_path: Path, needle: str) -> None:
    """The search reads ASCII values with SQLite's LIKE and only the others through Python's fold: the same
    answers as folding every value (NFC + casefold: ß is ss, a Kelvin sign is k, a combining accent composes)."""
    async with MetadataStore(tmp_path / "operations.db") as store:
        for i, name in enumerate(NAMES):
            await store.save_operation(make_upload(minutes=i, name=name))
        found = {r.target_name for r in await store.list_operations(target=needle, limit=None)}
    wanted = {
        n for n in NAMES if (fold(needle) or "") in (fold(n) or "") or (fold(needle) or "") in fold(f"/media/in/{n}")
    }
    assert found == wanted


async def test_the_duplicate_lookup_of_every_entry_uses_the_checksum_index_without_statistics(tmp_path: Path) -> None:
    """find_successful_upload runs once per entry of a run, on a database that never saw ANALYZE: it must find its
    rows by the checksum, not walk every upload newest first (which made a 10,000-entry run quadratic)."""
    async with MetadataStore(tmp_path / "operations.db") as store:
        for i in range(200):
            await store.save_operation(make_upload(minutes=i, name=f"clip{i:03d}.mp4", status=OperationStatus.SUCCESS))
        assert store._db is not None
        statements: list[str] = []
        await in_connection_thread(store._db, lambda conn: conn.set_trace_callback(statements.append))
        await store.find_successful_upload(checksum_original="0" * 64)
        [(sql, plan)] = [(sql, plan) for sql, plan in plans(store.path, statements).items() if "checksum" in sql]
    assert any("USING INDEX ix_operations_checksum_original (checksum_original=?)" in line for line in plan), plan


async def test_history_filters_and_lookups_use_their_index_without_statistics(tmp_path: Path) -> None:
    """A real database never saw ANALYZE: the planner then must still find rows through the index of what is asked
    (on 1,000,000 operations, a walk by (operation_type, started_at) made `status NAME` take 11 s, and a search of
    every file record at a location for each row made `history --location` take 58 s)."""
    async with MetadataStore(tmp_path / "operations.db") as store:
        for i in range(200):
            record = with_all_file_records(make_upload(minutes=i, name=f"clip{i:03d}.mp4"))
            record.host_id = f"host-{i % 3}"
            await store.save_operation(record)
        assert store._db is not None
        statements: list[str] = []
        await in_connection_thread(store._db, lambda conn: conn.set_trace_callback(statements.append))
        await store.find_uploads_by_key(bucket="bucket", key="clip007.mp4.tar.gz")
        await store.find_uploads_by_name(bucket="bucket", name="clip007.mp4")
        await store.list_operations(location="completed")
        await store.list_operations(status="failed")
        await store.list_operations(operation_type="delete")
        await store.list_operations(host="host-1")
        await store.list_operations(host="host-1", status="failed", since=datetime.now(UTC) - timedelta(days=1))
        found = plans(store.path, statements)
    ops = [plan for sql, plan in found.items() if sql.startswith("SELECT * FROM operations WHERE")]
    by_key, by_name, location, status, kind, host, host_status = ops
    assert any("USING INDEX ix_operations_s3_key (s3_bucket=? AND s3_object_key=?)" in line for line in by_key), by_key
    assert any("USING INDEX ix_operations_target_name (target_name=?)" in line for line in by_name), by_name
    # newest first, each row's own file records by the primary key (never every record at that location)
    assert any("sqlite_autoindex_file_records_1 (operation_id=?)" in line for line in location), location
    assert not any("ix_file_records_location" in line for line in location), location
    assert any("ix_operations_status_started (status=?)" in line for line in status), status
    assert any("ix_operations_type_started (operation_type=?)" in line for line in kind), kind
    assert any("ix_operations_host_started (host_id=?)" in line for line in host), host
    assert not any(FULL_SCAN.search(line) for line in host_status), host_status


async def test_the_summaries_of_listed_keys_are_read_through_the_key_index_without_statistics(tmp_path: Path) -> None:
    """`ls` and `search` join the keys they list with the uploads recorded to them: on 1,000,000 operations, reading
    every upload's summary for that took minutes. With the keys given, each batch of them is found by the key index,
    and the summaries are those of the keys alone, oldest first, as without keys."""
    async with MetadataStore(tmp_path / "operations.db") as store:
        for i in range(200):
            await store.save_operation(with_all_file_records(make_upload(minutes=i, name=f"clip{i % 50:03d}.mp4")))
        assert store._db is not None
        everything = await store.upload_summaries(bucket="media")
        statements: list[str] = []
        await in_connection_thread(store._db, lambda conn: conn.set_trace_callback(statements.append))
        wanted = {"archive/clip007.mp4.tar.gz", "archive/clip042.mp4.tar.gz", "archive/never-uploaded.tar.gz"}
        some = await store.upload_summaries(bucket="media", keys=wanted)
        found = plans(store.path, statements)
    assert some == [s for s in everything if s.s3_object_key in wanted] and len(some) == 8
    [plan] = [plan for sql, plan in found.items() if "IN (" in sql]
    assert any("USING INDEX ix_operations_s3_key (s3_bucket=? AND s3_object_key=?)" in line for line in plan), plan
    assert not any(FULL_SCAN.search(line) for line in plan), plan
