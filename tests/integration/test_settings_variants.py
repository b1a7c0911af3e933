"""Settings that change where things go: key prefix, completed-dir layout and duplicates, no completed dir,
storage class."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from amgmt.local.entries import list_entries, resolve_names
from amgmt.upload.batch import upload_batch
from amgmt.parts import MiB
from amgmt.store import MetadataStore


async def test_object_prefix(make_settings, make_media, s3view, files, tmp_path: Path) -> None:
    make_media({"a.mp4": 1500, "album/x.jpg": 300})
    settings = make_settings(object_prefix="/media/2026/")
    assert settings.object_prefix == "media/2026"
    report = await upload_batch(settings, list_entries(settings)[0])
    assert report.counts() == {"success": 2}
    assert s3view.keys() == ["media/2026/a.mp4.tar.gz", "media/2026/album.tar.gz"]
    assert sorted(r.s3_object_key for r in report.records) == s3view.keys()
    assert files.extract(s3view.get("media/2026/album.tar.gz"), tmp_path / "x") == ["album"]


async def test_preserve_structure_keeps_the_relative_path(make_settings, make_media, local_dir: Path, s3view) -> None:
    make_media({"show/season1/ep1.mkv": 1000, "show/season1/ep2.mkv": 1200, "loose.mkv": 50})
    settings = make_settings(preserve_structure=True)
    entries = resolve_names(settings, ["show/season1/ep1.mkv", "loose.mkv"])
    report = await upload_batch(settings, entries)
    assert report.counts() == {"success": 2}
    # the key and the completed dir both mirror where the entry was (s1/ep1 and s2/ep1 cannot collide)
    assert s3view.keys() == ["loose.mkv.tar.gz", "show/season1/ep1.mkv.tar.gz"]
    done = settings.completed_dir
    assert (done / "show/season1/ep1.mkv").is_file() and (done / "loose.mkv").is_file()
    assert not (local_dir / "show/season1/ep1.mkv").exists() and (local_dir / "show/season1/ep2.mkv").exists()
    ep1 = next(r for r in report.records if r.target_name == "ep1.mkv")
    assert ep1.completed_dir_path == str(done / "show/season1/ep1.mkv")


async def test_without_preserve_structure_nested_entry_lands_flat(make_settings, make_media, local_dir: Path) -> None:
    make_media({"show/season1/ep1.mkv": 1000})
    settings = make_settings(preserve_structure=False)
    report = await upload_batch(settings, resolve_names(settings, ["show/season1/ep1.mkv"]))
    assert report.counts() == {"success": 1}
    assert (settings.completed_dir / "ep1.mkv").is_file() and not (settings.completed_dir / "show").exists()


async def test_duplicate_timestamp_renames_in_completed(make_settings, make_media, local_dir: Path, s3view) -> None:
    make_media({"clip.mp4": 2000, "completed/clip.mp4": b"an older, different clip"})
    settings = make_settings(duplicate_handling="timestamp")
    report = await upload_batch(settings, list_entries(settings)[0])
    assert report.counts() == {"success": 1}, report.to_dict()["failures"]
    (record,) = report.records
    final = Path(record.completed_dir_path)
    assert final.parent == settings.completed_dir and re.fullmatch(r"\d{8}-\d{6}_clip\.mp4", final.name)
    assert final.stat().st_size == 2000 and not (local_dir / "clip.mp4").exists()
    assert (settings.completed_dir / "clip.mp4").read_bytes() == b"an older, different clip"
    assert s3view.keys() == ["clip.mp4.tar.gz"]


async def test_duplicate_subdirectory(make_settings, make_media, local_dir: Path) -> None:
    make_media({"clip.mp4": 2000, "completed/clip.mp4": b"older"})
    settings = make_settings(duplicate_handling="subdirectory")
    report = await upload_batch(settings, list_entries(settings)[0])
    (record,) = report.records
    final = Path(record.completed_dir_path)
    assert record.status == "success" and final.name == "clip.mp4"
    assert final.parent.parent == settings.completed_dir and re.fullmatch(r"\d{8}-\d{6}", final.parent.name)
    assert (settings.completed_dir / "clip.mp4").read_bytes() == b"older"


async def test_duplicate_error_fails_before_upload(make_settings, make_media, local_dir: Path, s3view) -> None:
    make_media({"clip.mp4": 2000, "other.mp4": 10, "completed/clip.mp4": b"older"})
    settings = make_settings(duplicate_handling="error")
    report = await upload_batch(settings, list_entries(settings)[0])
    assert report.counts() == {"failed": 1, "success": 1}
    failed = next(r for r in report.records if r.target_name == "clip.mp4")
    assert failed.error_message.startswith("validate:") and "already exists" in failed.error_message
    assert "MGMT_DUPLICATE_HANDLING=error" in failed.error_message
    assert failed.compressed_size is None and failed.checksum_original is None
    assert s3view.keys() == ["other.mp4.tar.gz"]
    assert (local_dir / "clip.mp4").stat().st_size == 2000
    assert (settings.completed_dir / "clip.mp4").read_bytes() == b"older"
    assert os.listdir(settings.staging_dir) == []
    async with MetadataStore(settings.db_path) as store:
        stored = await store.get_operation(failed.operation_id)
    assert stored.status == "failed" and stored.source_file_record.status == "failed"


async def test_completed_disabled_leaves_originals(make_settings, make_media, local_dir: Path, s3view) -> None:
    make_media({"a.mp4": 1000, "album/x.jpg": 300})
    settings = make_settings(completed_enabled=False)
    report = await upload_batch(settings, list_entries(settings)[0])
    assert report.counts() == {"success": 2}
    assert s3view.keys() == ["a.mp4.tar.gz", "album.tar.gz"]
    assert (local_dir / "a.mp4").is_file() and (local_dir / "album/x.jpg").is_file()
    assert os.listdir(settings.completed_dir) == [".metadata"]
    async with MetadataStore(settings.db_path) as store:
        for r in report.records:
            stored = await store.get_operation(r.operation_id)
            assert stored.status == "success" and stored.stage == "done"
            assert stored.completed_dir_path is None and stored.completed_file_record is None
            assert stored.source_file_record.location == "local"


async def test_storage_class_recorded_and_on_object(make_settings, make_media, s3view) -> None:
    make_media({"small.bin": 1000, "big.bin": 11 * MiB})
    settings = make_settings(storage_class="STANDARD_IA", part_size="5MiB")
    report = await upload_batch(settings, list_entries(settings)[0])
    assert report.counts() == {"success": 2}
    async with MetadataStore(settings.db_path) as store:
        for r in report.records:
            stored = await store.get_operation(r.operation_id)
            assert stored.s3_storage_class == "STANDARD_IA", r.target_name
            assert s3view.head(r.s3_object_key).get("StorageClass") == "STANDARD_IA", r.target_name
    assert next(r for r in report.records if r.target_name == "big.bin").part_count == 3


async def test_signed_payloads_and_sha256_checksums_on_single_puts(make_settings, make_media, s3view) -> None:
    # MGMT_PAYLOAD_SIGNING=true and MGMT_CHECKSUM_ALGORITHM=sha256: the one-part PUTs (sent directly, not by
    # botocore) are signed with the archive's SHA-256 from the packing pass. (MGMT_CHECKSUM_MODE, whose
    # when_supported had them carry a CRC32 computed as they were sent, gave way to MGMT_CHECKSUM_ALGORITHM: the
    # checksum headers of single PUTs are checked in tests/faults/test_checksum_faults.py, through a proxy that checks
    # them as S3 does, which the moto server does not.)
    make_media({"small.jpg": 3000, "bigger.mov": 2 * MiB})
    settings = make_settings(payload_signing=True, checksum_algorithm="sha256", part_size="8MiB")
    report = await upload_batch(settings, list_entries(settings)[0])
    assert report.counts() == {"success": 2}, report.to_dict()["failures"]
    assert all(r.metadata["multipart"] is False for r in report.records)
    for record in report.records:
        assert record.checksum_compressed == hashlib.sha256(s3view.get(record.s3_object_key)).hexdigest()
