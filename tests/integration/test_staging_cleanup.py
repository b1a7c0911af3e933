"""Staging cleanup removes only what amgmt made: archives named by `staging_name` whose operation is one of its
records and no longer in progress. Whatever else shares the staging dir stays, byte for byte."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from amgmt.upload.recovery import cleanup
from amgmt.models import OperationStatus, UploadRecord, utcnow
from amgmt.naming import staging_name
from amgmt.config import Settings
from amgmt.store import MetadataStore

DEAD = "11111111-1111-4111-8111-111111111111"  # a run that died: its record is still pending
FAILED = "22222222-2222-4222-8222-222222222222"  # failed: its archive should have gone, a leftover
LIVE_ELSEWHERE = "33333333-3333-4333-8333-333333333333"  # pending, of another local dir: a live run there
UNKNOWN = "44444444-4444-4444-8444-444444444444"  # no record: another database's, or not amgmt's at all


async def _record(store: MetadataStore, settings: Settings, operation_id: str, target: Path, status: str) -> None:
    record = UploadRecord(operation_id=operation_id, target_path=str(target), target_name=target.name,
                          started_at=utcnow(), s3_bucket=settings.bucket or "", s3_object_key=f"{target.name}.tar.gz")
    if status != OperationStatus.PENDING:
        record.finish(OperationStatus(status), error="compress: failed")
    await store.save_operation(record)


async def test_a_shared_staging_dir_loses_nothing_amgmt_did_not_make(make_settings, local_dir: Path,
                                                                      tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    settings = make_settings(staging_dir=str(shared), object_prefix="media")
    async with MetadataStore(settings.db_path) as store:
        await _record(store, settings, DEAD, local_dir / "dead.mp4", OperationStatus.PENDING)
        await _record(store, settings, FAILED, local_dir / "failed.mp4", OperationStatus.FAILED)
        await _record(store, settings, LIVE_ELSEWHERE, tmp_path / "other" / "live.mp4", OperationStatus.PENDING)
    ours = [shared / staging_name(DEAD, "dead.mp4"), shared / (staging_name(FAILED, "failed.mp4") + ".partial")]
    kept = {
        "notes.txt": b"someone's notes",
        "holiday.mp4": b"an original that was put here by hand",
        staging_name(UNKNOWN, "x.mp4"): b"named like ours, but no record of it",
        staging_name(LIVE_ELSEWHERE, "live.mp4"): b"in use by the run on the other local dir",
        DEAD + ".tar.gz": b"an id, but not the pattern",
        staging_name(DEAD, "dead.mp4") + ".bak": b"the pattern plus a suffix",
    }
    for name, data in kept.items():
        (shared / name).write_bytes(data)
    (shared / staging_name(FAILED, "dir.mp4")).mkdir()  # a directory named like an archive: not a file of ours
    kept_link = shared / staging_name(FAILED, "link.mp4")
    kept_link.symlink_to(shared / "notes.txt")
    for path in ours:
        path.write_bytes(b"z" * 600)

    preview = await cleanup(settings, dry_run=True, older_than=timedelta(hours=1))
    done = await cleanup(settings, older_than=timedelta(hours=1))

    removed = sorted(str(p) for p in ours)
    assert sorted(f["path"] for f in preview.staging_files) == removed  # the dry run says what the run does
    assert sorted(f["path"] for f in done.staging_files) == removed
    assert preview.staging_bytes == done.staging_bytes == 1200
    assert not any(p.exists() for p in ours)
    for name, data in kept.items():
        assert (shared / name).read_bytes() == data, name
    assert (shared / staging_name(FAILED, "dir.mp4")).is_dir() and kept_link.is_symlink()
