"""The small-entry lane (upload/lane.py) in real runs: small files go through it in batches, each entry with records
of its own; large and small entries of one run both progress, even at concurrency 1; one entry's failure in a
batch is its own."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import anyio
import pytest

import amgmt.upload.batch
import amgmt.upload.pipeline
from amgmt.local.entries import list_entries
from amgmt.models import FileStatus, OperationStatus
from amgmt.parts import MiB
from amgmt.store import MetadataStore
from amgmt.upload.batch import upload_batch
from amgmt.upload.lane import SmallBatch
from amgmt.upload.pipeline import EntryPipeline


def _spy_batches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The names of each batch the lane ran, in order."""
    batches: list[list[str]] = []

    class Spy(SmallBatch):
        async def run(self) -> Any:
            batches.append([p.record.target_name for p in self.pipelines])
            return await super().run()

    monkeypatch.setattr(amgmt.upload.batch, "SmallBatch", Spy)
    return batches


async def test_small_files_go_in_batches_and_each_has_complete_records(
    make_settings, make_media, local_dir: Path, s3view, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_media({f"IMG_{i:03d}.jpg": 2000 + i for i in range(40)} | {"album/a.jpg": 10, "clip.mov": 2 * MiB})
    batches = _spy_batches(monkeypatch)
    settings = make_settings(concurrency=4, small_entry_size="1MiB")

    report = await upload_batch(settings, list_entries(settings)[0])

    assert report.counts() == {"success": 42}
    laned = sorted(name for batch in batches for name in batch)
    assert laned == sorted(f"IMG_{i:03d}.jpg" for i in range(40))  # not the directory, not the 2 MiB file
    assert max(len(b) for b in batches) > 1
    async with MetadataStore(settings.db_path) as store:
        for record in await store.list_operations(limit=None):
            # each entry's own record, whole: its four file records, its verification, its own object
            assert record.status == OperationStatus.SUCCESS and record.stage == "done"
            assert record.verification_method and record.completed_dir_path
            files = record.file_records()
            assert len(files) == 4 and files["s3"].status == FileStatus.COMPLETED
            assert files["compressed"].status == FileStatus.DELETED
            body = s3view.get(record.s3_object_key)
            assert hashlib.sha256(body).hexdigest() == record.checksum_compressed
            assert set(record.metadata["stage_seconds"]) >= {"compress", "upload", "verify", "move", "cleanup"}


async def test_zero_turns_the_lane_off(make_settings, make_media, monkeypatch: pytest.MonkeyPatch) -> None:
    make_media({f"f{i}.jpg": 100 for i in range(5)})
    batches = _spy_batches(monkeypatch)
    settings = make_settings(small_entry_size="0")

    report = await upload_batch(settings, list_entries(settings)[0])

    assert report.counts() == {"success": 5} and batches == []


@pytest.mark.parametrize("held", ["large", "small"])
async def test_large_and_small_entries_both_progress_at_concurrency_one(
    make_settings, make_media, monkeypatch: pytest.MonkeyPatch, held: str
) -> None:
    # One kind is held in its upload until every entry of the other kind has ended: without both progressing
    # side by side, the run would wait forever (bounded here by a timeout).
    make_media({"0-film.mov": 3 * MiB} | {f"IMG_{i:02d}.jpg": 1000 for i in range(30)})
    settings = make_settings(concurrency=1, small_entry_size="1MiB")
    others_done = anyio.Event()
    remaining = {"large": 1, "small": 30}
    other = "small" if held == "large" else "large"
    real_upload = EntryPipeline._upload

    def kind(pipeline: EntryPipeline) -> str:
        return "large" if pipeline.record.target_name.endswith(".mov") else "small"

    async def upload(self: EntryPipeline) -> None:
        if kind(self) == held:
            await others_done.wait()
        await real_upload(self)

    class Reporter(amgmt.upload.batch.SilentReporter):
        def entry_done(self, record: Any) -> None:
            super().entry_done(record)
            name = "large" if record.target_name.endswith(".mov") else "small"
            remaining[name] -= 1
            if remaining[other] == 0:
                others_done.set()

    monkeypatch.setattr(EntryPipeline, "_upload", upload)
    with anyio.fail_after(60):
        report = await upload_batch(settings, list_entries(settings)[0], reporter=Reporter())

    assert report.counts() == {"success": 31}
    order = [r.target_name.endswith(".mov") for r in report.records]  # in the order they ended
    assert order.index(True) == (30 if held == "large" else 0)


async def test_one_entry_failing_in_a_batch_fails_alone(
    make_settings, make_media, local_dir: Path, s3view, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_media({f"IMG_{i:02d}.jpg": 5000 + i for i in range(12)})
    settings = make_settings(concurrency=4, small_entry_size="1MiB")
    real_job = EntryPipeline._compress_job

    def grown_before_packing(self: EntryPipeline) -> tuple[str, str, int, int]:
        if self.record.target_name == "IMG_05.jpg":
            with open(self.entry, "ab") as f:
                f.write(b"more")  # it changed between listing and compression
        return real_job(self)

    monkeypatch.setattr(EntryPipeline, "_compress_job", grown_before_packing)

    report = await upload_batch(settings, list_entries(settings)[0])

    assert report.counts() == {"success": 11, "failed": 1}
    [failed] = report.failures
    assert failed.target_name == "IMG_05.jpg" and "changed between listing and compression" in failed.error_message
    assert (local_dir / "IMG_05.jpg").exists() and "IMG_05.jpg.tar.gz" not in s3view.keys()
    assert len(s3view.keys()) == 11
    assert list(settings.staging_dir.iterdir()) == []
    async with MetadataStore(settings.db_path) as store:
        stored = await store.get_operation(failed.operation_id)
    assert stored.status == OperationStatus.FAILED and stored.stage == "compress"
