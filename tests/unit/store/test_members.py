"""The members of directory archives in a real store (SQLite and PostgreSQL, as test_store): recorded in one transaction, found by a folded search
among the archives that are the current objects of their keys, and read back as a member's subtree."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from amgmt.models import FileRecord, FileRole, FileStatus, Location, OperationStatus, UploadRecord
from amgmt.store import MetadataStore, Store
from test_store import db_path, make_upload, sqlite_store, store  # noqa: F401 (the fixtures: both backends)


TREE = [
    ("trip", "dir", 0, 1_700_000_000),
    ("trip/DCIM", "dir", 0, 1_700_000_000),
    ("trip/DCIM/IMG_1010.JPG", "file", 4000, 1_700_000_001),
    ("trip/DCIM-old", "dir", 0, 1_700_000_000),
    ("trip/DCIM-old/IMG_0001.JPG", "file", 10, 1_700_000_002),
    ("trip/Straße/Ärger.txt", "file", 5, 1_700_000_003),
]


async def uploaded(store: Store, *, minutes: int = 0, status: str = OperationStatus.SUCCESS,
                   members: list[tuple[str, str, int, int]] = TREE, **changes: object) -> UploadRecord:
    record = make_upload(name="trip", minutes=minutes, status=status, **changes)
    await store.save_operation(record)
    await store.save_members(record.operation_id, members)
    return record


async def test_search_folds_case_and_names_the_archive(store: MetadataStore) -> None:
    record = await uploaded(store)
    found = await store.search_members("img_1010")
    assert [(m.path, m.size, m.key, m.operation_id) for m in found] == [
        ("trip/DCIM/IMG_1010.JPG", 4000, "archive/trip.tar.gz", record.operation_id)
    ]
    assert [m.path for m in await store.search_members("STRASSE/ärger")] == ["trip/Straße/Ärger.txt"]
    assert await store.search_members("img", bucket="other") == []
    assert [m.path for m in await store.search_members("img", key_prefix="archive/")] == [
        "trip/DCIM-old/IMG_0001.JPG", "trip/DCIM/IMG_1010.JPG"]
    assert await store.search_members("img", key_prefix="elsewhere/") == []


async def test_only_the_current_object_of_a_key_is_searched(store: MetadataStore) -> None:
    """An older upload of the key, a failed newer one, and a deleted object: their members are not in the bucket."""
    await uploaded(store, members=[("trip", "dir", 0, 1), ("trip/old.jpg", "file", 1, 1)])
    newer = await uploaded(store, minutes=5, members=[("trip", "dir", 0, 1), ("trip/new.jpg", "file", 2, 1)])
    await uploaded(store, minutes=9, status=OperationStatus.FAILED,
                   members=[("trip", "dir", 0, 1), ("trip/failed.jpg", "file", 3, 1)])
    assert [m.path for m in await store.search_members(".jpg")] == ["trip/new.jpg"]

    newer.set_file_record(FileRole.S3, FileRecord(name="trip.tar.gz", path="s3://media/archive/trip.tar.gz",
                                                   location=Location.S3, size=9, is_directory=False,
                                                   status=FileStatus.DELETED))
    await store.save_operation(newer)
    assert await store.search_members(".jpg") == []


async def test_a_subtree_is_a_range_of_the_archive_not_its_neighbours(store: MetadataStore) -> None:
    record = await uploaded(store)
    found, total = await store.member_subtree(record.operation_id, "trip/DCIM")
    assert [m.path for m in found] == ["trip/DCIM", "trip/DCIM/IMG_1010.JPG"] and total == len(TREE)
    found, _ = await store.member_subtree(record.operation_id, "trip/DCIM/IMG_1010.JPG")
    assert [(m.kind, m.size, m.mtime) for m in found] == [("file", 4000, 1_700_000_001)]
    assert await store.member_subtree(record.operation_id, "trip/nothing") == ([], len(TREE))
    assert await store.member_subtree("no-such-operation", "trip") == ([], 0)


async def test_a_100k_member_tree_is_recorded_and_searched(store: MetadataStore) -> None:
    """100,000 members (a camera card's tree) in one save; found by search and counted by the subtree read."""
    tree = [("big", "dir", 0, 1)] + [(f"big/d{i // 1000:03d}/IMG_{i:06d}.JPG", "file", i, 1) for i in range(100_000)]
    record = make_upload(name="big", status=OperationStatus.SUCCESS)
    await store.save_operation(record)
    started = time.perf_counter()
    await store.save_members(record.operation_id, tree)
    took = time.perf_counter() - started
    _, total = await store.member_subtree(record.operation_id, "big")
    assert total == len(tree)
    found = await store.search_members("img_099999")
    assert [m.path for m in found] == ["big/d099/IMG_099999.JPG"]
    assert took < 30, took  # generous on a loaded machine: see docs/commands.md for what it measures alone


async def test_member_reads_use_the_primary_key_and_only_the_search_scans(sqlite_store: MetadataStore) -> None:
    """EXPLAIN QUERY PLAN of the statements really sent: a subtree and a bare name read one upload's members
    through the primary key (operation_id, path); the search reads every member once (a substring, by design) and
    finds each one's current upload through an index of operations, never by scanning them."""

    from amgmt.store.connection import in_connection_thread
    from test_query_plans import plans

    store = sqlite_store
    record = await uploaded(store)
    for i in range(50):
        await uploaded(store, minutes=i + 1, s3_object_key=f"archive/other{i}.tar.gz")
    assert store._db is not None
    await in_connection_thread(store._db, lambda conn: conn.execute("ANALYZE"))
    statements: list[str] = []
    await in_connection_thread(store._db, lambda conn: conn.set_trace_callback(statements.append))
    await store.member_subtree(record.operation_id, "trip/DCIM")
    await store.member_paths_named(record.operation_id, "IMG_1010.JPG")
    reads = plans(store.path, [s for s in statements if "archive_members" in s])
    assert len(reads) == 3, list(reads)
    for sql, plan in reads.items():
        assert all("SCAN" not in line for line in plan) and any("archive_members" in line or " m " in line
                                                                 for line in plan), (sql, plan)
    statements.clear()
    await store.search_members("img")
    [(sql, plan)] = plans(store.path, statements).items()
    scans = [line for line in plan if "SCAN" in line]
    # One pass over the members (or over the uploads, each one's members read by the primary key, as the planner
    # likes): a full read either way; the current upload of each key and its s3 record are index searches.
    assert scans and all(line.split()[1] in ("m", "o") for line in scans), plan
    assert any("SEARCH c USING INDEX ix_operations_s3_key" in line for line in plan), plan
