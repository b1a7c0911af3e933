"""Many entries at once: every one uploaded, recorded and counted, none lost between the workers."""

from __future__ import annotations

import os
from pathlib import Path

from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.store import MetadataStore

ENTRIES = 30


async def test_thirty_entries_with_eight_workers(make_settings, make_media, local_dir: Path, s3view, files) -> None:
    spec: dict[str, int | bytes | None] = {}
    for i in range(ENTRIES):
        if i % 5 == 0:
            spec[f"dir{i:02d}/inner/f.bin"] = 100 + i
            spec[f"dir{i:02d}/g.txt"] = f"entry {i}".encode()
        else:
            spec[f"file{i:02d}.bin"] = 100 * i + 1
    make_media(spec)
    sizes = {p.name: files.source_size(p) for p in local_dir.iterdir()}
    settings = make_settings(concurrency=8)
    entries, _ = list_entries(settings)
    assert len(entries) == ENTRIES

    report = await upload_batch(settings, entries)

    assert report.counts() == {"success": ENTRIES}, report.to_dict()["failures"]
    assert report.planned == ENTRIES and report.exit_code == 0 and report.aborted is None
    assert report.bytes_in == sum(sizes.values())
    keys = s3view.keys()
    assert keys == sorted(f"{name}.tar.gz" for name in sizes)
    assert report.bytes_out == sum(s3view.head(k)["ContentLength"] for k in keys)
    async with MetadataStore(settings.db_path) as store:
        stored = await store.list_operations(limit=None)
        assert sorted(r.operation_id for r in stored) == sorted(r.operation_id for r in report.records)
        assert len({r.operation_id for r in stored}) == ENTRIES
        for r in stored:
            full = await store.get_operation(r.operation_id)
            assert full.status == "success" and full.stage == "done", full.target_name
            assert full.original_size == sizes[full.target_name]
            assert len(full.file_records()) == 4, full.target_name
    assert sorted(os.listdir(local_dir)) == ["completed"]
    assert sorted(os.listdir(settings.completed_dir)) == sorted([".metadata", *sizes])
    assert os.listdir(settings.staging_dir) == []
