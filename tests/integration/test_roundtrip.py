"""`upload all` end to end: every kind of entry survives the trip byte for byte, lands where it must and is
recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from amgmt import checksums
from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.models import OperationStatus, UploadRecord
from amgmt.naming import display
from amgmt.parts import MiB
from amgmt.store import MetadataStore

NON_UTF8 = os.fsdecode(b"raw\xffbyte.bin")
# name on disk -> the key the naming rules give it
EXPECTED_KEYS = {
    "small.txt": "small.txt.tar.gz",
    "photo.jpg": "photo.jpg.tar.gz",
    "empty.dat": "empty.dat.tar.gz",
    "empty-dir": "empty-dir.tar.gz",
    "tree": "tree.tar.gz",
    "Café été.jpg": "Café été.jpg.tar.gz",
    "line\nbreak.txt": "line%0Abreak.txt.tar.gz",
    "100% done.txt": "100%25 done.txt.tar.gz",
    "tab\tname.txt": "tab%09name.txt.tar.gz",
    "a+b #1?&=.txt": "a+b #1?&=.txt.tar.gz",
    "emoji 🎬.mp4": "emoji 🎬.mp4.tar.gz",
    NON_UTF8: "raw%FFbyte.bin.tar.gz",
    "big.bin": "big.bin.tar.gz",
}
SEED_FIELDS = (
    "operation_id", "operation_type", "target_name", "target_path", "status", "started_at", "completed_at",
    "duration_seconds", "s3_bucket", "s3_object_key", "original_size", "compressed_size", "compression_ratio",
    "checksum_original", "checksum_compressed", "checksum_s3_etag", "completed_dir_path", "error_message",
)


@pytest.fixture
async def uploaded(make_settings, make_media, local_dir: Path, snapshot):  # type: ignore[no-untyped-def]
    """One `upload all` over every kind of entry; (settings, report, copy of the local dir before the run)."""
    make_media(
        {
            "small.txt": b"hello amgmt\n",
            "photo.jpg": 3000,
            "empty.dat": b"",
            "empty-dir/": None,
            "tree/top.txt": b"top",
            "tree/l1/a.bin": 4096,
            "tree/l1/b.txt": b"b",
            "tree/l1/l2/c.bin": 10_000,
            "tree/l1/l2/l3/d.txt": b"deepest",
            "tree/l1/l2/l3/empty/": None,
            "tree/other/e.bin": 777,
            "Café été.jpg": 2048,
            "line\nbreak.txt": b"a newline in the name",
            "100% done.txt": b"percent",
            "tab\tname.txt": b"tab",
            "a+b #1?&=.txt": b"url-special characters",
            "emoji 🎬.mp4": 600,
            NON_UTF8: b"not utf-8",
            "big.bin": 20 * MiB,
            ".hidden": b"never listed",
        }
    )
    before = snapshot()
    settings = make_settings(part_size="5MiB")
    entries, ignored = list_entries(settings)
    assert sorted(e.name for e in entries) == sorted(EXPECTED_KEYS) and ignored == []
    report = await upload_batch(settings, entries)
    assert report.counts() == {"success": len(EXPECTED_KEYS)}, report.to_dict()["failures"]
    return settings, report, before


async def test_every_entry_round_trips_byte_for_byte(uploaded, local_dir: Path, s3view, files, tmp_path) -> None:
    settings, report, before = uploaded
    assert s3view.keys() == sorted(EXPECTED_KEYS.values())

    for name, key in EXPECTED_KEYS.items():
        dest = tmp_path / "out" / key
        assert files.extract(s3view.get(key), dest) == [name], key
        assert files.tree_of(dest / name) == files.tree_of(before / name), name
        # the original moved, whole, to the completed dir
        assert not os.path.lexists(local_dir / name)
        assert files.tree_of(settings.completed_dir / name) == files.tree_of(before / name), name

    assert sorted(os.listdir(local_dir)) == [".hidden", "completed"]
    assert os.listdir(settings.staging_dir) == []
    assert sorted(os.listdir(settings.completed_dir)) == sorted([".metadata", *EXPECTED_KEYS])


async def test_large_entry_goes_multipart(uploaded, s3view) -> None:
    settings, report, _ = uploaded
    big = next(r for r in report.records if r.target_name == "big.bin")
    head = s3view.head("big.bin.tar.gz")
    assert big.part_size == 5 * MiB
    assert big.part_count == -(-head["ContentLength"] // (5 * MiB)) > 1
    assert head["ETag"].strip('"').endswith(f"-{big.part_count}")
    assert big.metadata["multipart"] is True
    small = next(r for r in report.records if r.target_name == "small.txt")
    assert small.part_count == 1 and "-" not in small.checksum_s3_etag and small.metadata["multipart"] is False


async def test_records_describe_what_happened(uploaded, s3view, files) -> None:
    settings, report, before = uploaded
    async with MetadataStore(settings.db_path) as store:
        listed = await store.list_operations(limit=None)
        stored = {r.operation_id: await store.get_operation(r.operation_id) for r in report.records}
    assert sorted(r.operation_id for r in listed) == sorted(stored)
    assert report.bytes_in == sum(files.source_size(before / n) for n in EXPECTED_KEYS)

    for op_id, rec in stored.items():
        assert isinstance(rec, UploadRecord)
        on_disk = next(n for n in EXPECTED_KEYS if display(n) == rec.target_name)
        original = before / on_disk
        key = EXPECTED_KEYS[on_disk]
        head = s3view.head(key)
        body = s3view.get(key)
        where = f"{rec.target_name!r}"
        assert rec.status == OperationStatus.SUCCESS and rec.stage == "done", where
        assert rec.error_message is None, where
        assert rec.s3_bucket == s3view.name and rec.s3_object_key == key, where
        assert rec.compressed_size == head["ContentLength"] == len(body), where
        assert rec.checksum_s3_etag == head["ETag"].strip('"'), where
        assert rec.checksum_compressed == files.sha256(body), where
        assert rec.checksum_original == files.source_sha256(original), where
        assert rec.original_size == files.source_size(original), where
        if rec.part_count > 1:  # moto keeps the CRC64NVME it computes of a multipart upload (amgmt.s3.probe)
            assert rec.verification_method == "crc64nvme", where
            assert rec.checksum_s3 == f"crc64nvme:{checksums.of_bytes('crc64nvme', body)}", where
        else:  # and what it was sent for a single PUT, which proves nothing: the ETag does
            assert rec.verification_method == "etag", where
        assert rec.duration_seconds is not None and rec.duration_seconds > 0, where
        assert rec.completed_at is not None and rec.completed_at >= rec.started_at, where
        assert rec.result_path == f"s3://{s3view.name}/{key}", where
        assert head["Metadata"]["amgmt-source-sha256"] == rec.checksum_original, where
        assert head["Metadata"]["amgmt-source-size"] == str(rec.original_size), where
        assert head["Metadata"]["amgmt-archive-sha256"] == rec.checksum_compressed, where
        # The record's path is display text: for an undecodable name it is not the on-disk path (see the report).
        assert rec.completed_dir_path == display(settings.completed_dir / on_disk), where
        assert (settings.completed_dir / on_disk).exists(), where
        if on_disk != NON_UTF8:
            assert Path(rec.completed_dir_path).exists(), where

        files_ = rec.file_records()
        assert {str(role): f.location for role, f in files_.items()} == {
            "source": "local", "compressed": "local", "s3": "s3", "completed": "completed"
        }, where
        assert files_["compressed"].status == "deleted", where
        assert files_["s3"].status == "completed" and files_["completed"].status == "completed", where
        assert files_["source"].size == rec.original_size and files_["source"].is_directory == original.is_dir()
        assert files_["compressed"].size == files_["s3"].size == rec.compressed_size, where
        assert files_["s3"].path == key and files_["s3"].checksum == f"etag:{rec.checksum_s3_etag}", where
        assert files_["completed"].path == rec.completed_dir_path, where
        assert not Path(files_["compressed"].path).exists(), where
        if original.is_file():
            assert files_["source"].checksum == f"sha256:{rec.checksum_original}", where


def _cli(cli_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amgmt", *args], env=cli_env, capture_output=True, text=True, timeout=60
    )


async def test_history_and_show_json(uploaded, cli_env) -> None:
    settings, report, _ = uploaded
    done = _cli(cli_env, "history", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == len(EXPECTED_KEYS)
    by_id = {r.operation_id: r for r in report.records}
    assert sorted(row["operation_id"] for row in rows) == sorted(by_id)
    for row in rows:
        missing = [f for f in SEED_FIELDS if f not in row]
        assert not missing, missing
        rec = by_id[row["operation_id"]]
        assert row["operation_type"] == "upload" and row["status"] == "success"
        for name in ("target_name", "target_path", "s3_bucket", "s3_object_key", "original_size",
                     "compressed_size", "checksum_original", "checksum_compressed", "checksum_s3_etag",
                     "completed_dir_path"):
            assert row[name] == getattr(rec, name), name

    big = next(r for r in report.records if r.target_name == "big.bin")
    shown = _cli(cli_env, "show", big.operation_id[:8], "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["operation_id"] == big.operation_id and data["part_count"] == big.part_count
    assert {role: data[f"{role}_file_record"]["location"] for role in ("source", "compressed", "s3", "completed")} \
        == {"source": "local", "compressed": "local", "s3": "s3", "completed": "completed"}
