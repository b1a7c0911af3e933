"""Content that is already somewhere: in an earlier upload, in the completed dir, or at the object's key."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.models import OperationStatus
from amgmt.parts import MiB
from amgmt.store import MetadataStore


async def test_identical_content_under_a_new_name_is_skipped(
    make_settings, make_media, local_dir: Path, s3view
) -> None:
    make_media({"a.mp4": 3000, "album/x.jpg": 400})
    settings = make_settings()
    first = await upload_batch(settings, list_entries(settings)[0])
    assert first.counts() == {"success": 2}
    keys = s3view.keys()
    shutil.copyfile(settings.completed_dir / "a.mp4", local_dir / "a-copy.mp4")
    shutil.copytree(settings.completed_dir / "album", local_dir / "album-copy")

    second = await upload_batch(settings, list_entries(settings)[0])
    by_name = {r.target_name: r for r in second.records}
    skipped = by_name["a-copy.mp4"]
    original = next(r for r in first.records if r.target_name == "a.mp4")
    assert skipped.status == OperationStatus.SKIPPED and skipped.stage == "done"
    assert "identical content already uploaded" in skipped.error_message
    assert original.operation_id[:8] in skipped.error_message and "a.mp4.tar.gz" in skipped.error_message
    assert skipped.checksum_original == original.checksum_original
    # a directory's checksum covers its own name, so a renamed copy is new content
    assert by_name["album-copy"].status == OperationStatus.SUCCESS
    assert s3view.keys() == sorted([*keys, "album-copy.tar.gz"])
    assert (local_dir / "a-copy.mp4").is_file() and not (settings.completed_dir / "a-copy.mp4").exists()
    assert os.listdir(settings.staging_dir) == []
    assert second.exit_code == 0 and second.bytes_in == by_name["album-copy"].original_size
    async with MetadataStore(settings.db_path) as store:
        stored = await store.get_operation(skipped.operation_id)
    assert stored.status == "skipped" and stored.s3_file_record is None and stored.completed_file_record is None


async def test_same_name_and_size_in_completed_is_not_taken_for_done(make_settings, make_media, local_dir: Path,
                                                                      s3view) -> None:
    """A name and size already in the completed dir prove nothing (another take with the same name; here other
    bytes): before, such entries were skipped forever and never uploaded. Now they are uploaded and moved under a
    duplicate name; what was in the completed dir stays as it was."""
    make_media({"c.mp4": 1000, "album/x.jpg": 10, "completed/c.mp4": 1000, "completed/album/x.jpg": 10})
    earlier = {p: (local_dir / "completed" / p).read_bytes() for p in ("c.mp4", "album/x.jpg")}
    local = (local_dir / "c.mp4").read_bytes()
    settings = make_settings()
    report = await upload_batch(settings, list_entries(settings)[0])
    assert report.counts() == {"success": 2} and report.exit_code == 0
    assert sorted(s3view.keys()) == ["album.tar.gz", "c.mp4.tar.gz"]
    assert not (local_dir / "c.mp4").exists() and not (local_dir / "album").exists()
    for rel, data in earlier.items():
        assert (local_dir / "completed" / rel).read_bytes() == data
    moved = {r.target_name: Path(r.completed_dir_path or "") for r in report.records}
    assert moved["c.mp4"] != local_dir / "completed" / "c.mp4" and moved["c.mp4"].read_bytes() == local


async def test_other_object_at_the_key_fails_then_overwrite_replaces_it(
    make_settings, make_media, local_dir: Path, s3view, files, tmp_path: Path
) -> None:
    make_media({"clip.mp4": 5000})
    original = (local_dir / "clip.mp4").read_bytes()
    s3view.put("clip.mp4.tar.gz", b"somebody else's object")
    settings = make_settings()

    report = await upload_batch(settings, list_entries(settings)[0])
    (failed,) = report.records
    assert failed.status == OperationStatus.FAILED and failed.stage == "upload"
    assert "--on-conflict overwrite" in failed.error_message and "already exists" in failed.error_message
    assert report.exit_code == 1
    assert (local_dir / "clip.mp4").read_bytes() == original
    assert s3view.get("clip.mp4.tar.gz") == b"somebody else's object"
    assert os.listdir(settings.staging_dir) == []
    async with MetadataStore(settings.db_path) as store:
        stored = await store.get_operation(failed.operation_id)
    assert stored.status == "failed" and stored.s3_file_record.status == "failed"

    again = await upload_batch(settings, list_entries(settings)[0], overwrite=True)
    (replaced,) = again.records
    assert replaced.status == OperationStatus.SUCCESS, replaced.error_message
    assert files.extract(s3view.get("clip.mp4.tar.gz"), tmp_path / "x") == ["clip.mp4"]
    assert (tmp_path / "x/clip.mp4").read_bytes() == original
    assert s3view.head("clip.mp4.tar.gz")["Metadata"]["amgmt-source-sha256"] == files.sha256(original)
    assert not (local_dir / "clip.mp4").exists() and (settings.completed_dir / "clip.mp4").is_file()


async def test_same_object_already_at_the_key_is_reused(make_settings, make_media, local_dir: Path, s3view,
                                                       s3_client, tmp_path: Path) -> None:
    make_media({"a.mp4": 3000, "big.bin": 11 * MiB})
    # The ETag path (radosgw's, MGMT_CHECKSUM_ALGORITHM=md5): test_flexible_checksums.py has the same with CRC64NVME.
    first = await upload_batch(make_settings(completed_enabled=False, part_size="5MiB", checksum_algorithm="md5"),
                               list_entries(make_settings())[0])
    assert first.counts() == {"success": 2}
    s3_client.put_bucket_versioning(Bucket=s3view.name, VersioningConfiguration={"Status": "Enabled"})
    before = {k: s3view.head(k)["ETag"] for k in s3view.keys()}

    # a new database knows nothing of the first run (as after a crash before the record was saved)
    settings = make_settings(db_path=str(tmp_path / "db2" / "ops.db"), part_size="5MiB", checksum_algorithm="md5")
    second = await upload_batch(settings, list_entries(settings)[0])
    assert second.counts() == {"success": 2}, second.to_dict()["failures"]
    for r in second.records:
        assert r.metadata.get("reused_existing_object") is True, r.target_name
        assert r.verification_method == "etag"
        assert r.checksum_s3_etag == before[r.s3_object_key].strip('"')
        assert len(s3view.versions(r.s3_object_key)) == 1, "the object was uploaded again"
    assert {k: s3view.head(k)["ETag"] for k in s3view.keys()} == before
    assert not (local_dir / "a.mp4").exists() and (settings.completed_dir / "big.bin").is_file()


async def test_reused_object_with_other_part_size_is_read_back(make_settings, make_media, s3view, tmp_path) -> None:
    make_media({"big.bin": 11 * MiB})
    # Where no stored checksum proves it (radosgw, MGMT_CHECKSUM_ALGORITHM=md5); with one, test_flexible_checksums.py.
    first = await upload_batch(make_settings(completed_enabled=False, part_size="5MiB", checksum_algorithm="md5"),
                               list_entries(make_settings())[0])
    assert first.records[0].part_count == 3
    settings = make_settings(db_path=str(tmp_path / "db2" / "ops.db"), part_size="6MiB", checksum_algorithm="md5")
    second = await upload_batch(settings, list_entries(settings)[0])
    (r,) = second.records
    assert r.status == OperationStatus.SUCCESS, r.error_message
    assert r.metadata.get("reused_existing_object") is True
    # the ETag follows the first run's 5 MiB parts, not the 6 MiB ones predicted now: proven by reading it back
    assert r.verification_method == "sha256-readback"
    assert r.checksum_compressed == first.records[0].checksum_compressed
