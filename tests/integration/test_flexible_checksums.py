"""S3's flexible checksums against the real servers: what the probe finds on each (moto 5.2 keeps a CRC64NVME it
computes itself for a multipart upload, but stores a single PUT's value as sent; Ceph radosgw 16.2 keeps none),
and the verification that follows from it, recorded. tests/faults/test_checksum_faults.py has the AWS-like behaviour
(checksums checked on every body, SSE-KMS ETags) through a proxy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

import amgmt.s3.client
import amgmt.upload.records
from amgmt import checksums
from amgmt.errors import ExitCode
from amgmt.local.archive import ArchiveResult
from amgmt.local.entries import list_entries
from amgmt.models import OperationStatus
from amgmt.parts import MiB
from amgmt.s3.values import probe_key_base
from amgmt.store import MetadataStore
from amgmt.upload.batch import upload_batch
from amgmt.upload.compressor import CompressionPool, Compressor
from amgmt.upload.report import BatchReport

ENTRIES: dict[str, int | bytes | None] = {"big.bin": 12 * MiB, "clip.mp4": 30_000, "notes.txt": b"shot list\n" * 40}


def crc64nvme(data: bytes) -> str:
    return checksums.of_bytes(checksums.CRC64NVME, data)


def keys(client: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def by_name(report: BatchReport) -> dict[str, Any]:
    return {r.target_name: r for r in report.records}


async def test_auto_verifies_by_the_stored_crc64nvme_where_the_server_computes_it_else_by_the_etag(
    real_s3, real_client, real_bucket, make_real_settings, make_media
) -> None:
    """moto: the multipart upload by its stored CRC64NVME (moto computes it from the bytes), the single PUTs by
    their ETag (moto would store any value it is sent for them). radosgw: every object by its ETag, no checksum
    sent or recorded. Either way nothing is read back, and the probe leaves no object behind."""
    make_media(ENTRIES)
    settings = make_real_settings(part_size="5MiB")

    report = await upload_batch(settings, list_entries(settings)[0])

    assert report.counts() == {"success": 3}, report.to_dict()["failures"]
    records = by_name(report)
    big = records["big.bin"]
    data = real_client.get_object(Bucket=real_bucket, Key=big.s3_object_key)["Body"].read()
    if real_s3.name == "moto":
        assert big.verification_method == "crc64nvme"
        assert big.checksum_s3 == f"crc64nvme:{crc64nvme(data)}"
        head = real_client.head_object(Bucket=real_bucket, Key=big.s3_object_key, ChecksumMode="ENABLED")
        assert head["ChecksumType"] == "FULL_OBJECT"  # created for it, completed with it
    else:
        assert big.verification_method == "etag" and big.checksum_s3 is None
    for name in ("clip.mp4", "notes.txt"):
        assert records[name].verification_method == "etag" and records[name].checksum_s3 is None, name
    async with MetadataStore(settings.db_path) as store:
        stored = await store.get_operation(big.operation_id)
    assert (stored.verification_method, stored.checksum_s3) == (big.verification_method, big.checksum_s3)
    assert keys(real_client, real_bucket) == sorted(f"{name}.tar.gz" for name in ENTRIES)


async def test_an_explicit_algorithm_the_server_does_not_keep_stops_the_run_in_one_line(
    real_s3, real_client, real_bucket, make_media, local_dir: Path
) -> None:
    make_media({"a.txt": b"a" * 100})
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGMT_")}
    env.update(MGMT_BUCKET=real_bucket, MGMT_LOCAL_DIR=str(local_dir), MGMT_ENDPOINT_URL=real_s3.endpoint_url,
               HOME=str(local_dir.parent), MGMT_CHECKSUM_ALGORITHM="crc64nvme")
    proc = subprocess.run(
        [sys.executable, "-m", "amgmt", "upload", "all", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    if real_s3.name == "moto":
        assert proc.returncode == 0, output
        return
    assert proc.returncode == int(ExitCode.STORAGE), output
    lines = [x for x in output.splitlines() if "CRC64NVME" in x]
    assert lines and all("MGMT_CHECKSUM_ALGORITHM" in line for line in lines), output
    assert keys(real_client, real_bucket) == [] and (local_dir / "a.txt").exists()


async def test_sha256_is_honoured_as_s3s_composite_checksum(
    make_settings, make_media, s3_client: Any, bucket: str
) -> None:
    make_media({"big.bin": 12 * MiB})
    settings = make_settings(part_size="5MiB", checksum_algorithm="sha256")

    [record] = (await upload_batch(settings, list_entries(settings)[0])).records

    assert record.status == OperationStatus.SUCCESS, record.error_message
    assert record.verification_method == "sha256"
    data = s3_client.get_object(Bucket=bucket, Key=record.s3_object_key)["Body"].read()
    parts = [hashlib.sha256(data[i : i + 5 * MiB]).digest() for i in range(0, len(data), 5 * MiB)]
    composite = checksums.encode(checksums.SHA256, hashlib.sha256(b"".join(parts)).digest())
    assert record.checksum_s3 is not None and record.checksum_s3.startswith(f"sha256:{composite}")
    head = s3_client.head_object(Bucket=bucket, Key=record.s3_object_key, ChecksumMode="ENABLED")
    assert head["ChecksumType"] == "COMPOSITE"


def wrong_part_checksum(real: Compressor, names: set[str]) -> Compressor:
    """The real compressor, except that the second part's CRC64NVME of `names` is wrong (the bytes are right)."""
    async def compress(source: str, archive_path: str, part_size: int, level: int, md5: bool = True) -> ArchiveResult:
        result = await real(source, archive_path, part_size, level, md5)
        if os.path.basename(source) not in names:
            return result
        crcs = list(result.part_crc64nvmes)
        crcs[1] = crc64nvme(b"not the bytes of this part")
        return dataclasses.replace(result, part_crc64nvmes=tuple(crcs))

    return compress


async def test_a_checksum_the_server_did_not_check_is_never_taken_for_a_proof(
    make_settings, make_media, local_dir: Path, s3_client: Any, bucket: str
) -> None:
    """moto takes a part with a wrong checksum (AWS would refuse it: tests/faults/test_checksum_faults.py) and keeps the
    CRC64NVME it computes itself: the object is then not what amgmt's checksums say, and the entry fails at
    verify, with the original left in place, instead of being verified by a weaker proof."""
    make_media({"big.bin": 12 * MiB, "ok.bin": 11 * MiB})
    settings = make_settings(part_size="5MiB")

    async with CompressionPool(anyio.CapacityLimiter(2)) as real:
        report = await upload_batch(
            settings, list_entries(settings)[0], compressor=wrong_part_checksum(real, {"big.bin"})
        )

    records = by_name(report)
    big = records["big.bin"]
    assert big.status == OperationStatus.FAILED and str(big.stage) == "verify"
    assert "does not match the archive (its stored CRC64NVME" in (big.error_message or "")
    assert big.verification_method is None
    assert (local_dir / "big.bin").exists()
    assert records["ok.bin"].status == OperationStatus.SUCCESS and records["ok.bin"].verification_method == "crc64nvme"


async def test_a_reused_object_of_another_part_size_is_verified_by_its_checksum_without_a_read_back(
    make_settings, make_media, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the ETag path this takes a read-back (test_duplicates.py): the whole-object CRC64NVME does not depend
    # on the part size.
    make_media({"big.bin": 11 * MiB})
    first = await upload_batch(make_settings(completed_enabled=False, part_size="5MiB"),
                               list_entries(make_settings())[0])
    assert first.records[0].part_count == 3
    settings = make_settings(db_path=str(tmp_path / "db2" / "ops.db"), part_size="6MiB")
    read_backs: list[str] = []

    async def no_read_back(self: Any, key: str, **kwargs: Any) -> str:
        read_backs.append(key)
        raise AssertionError("read back")

    monkeypatch.setattr(amgmt.s3.client.S3Bucket, "object_sha256", no_read_back)
    [record] = (await upload_batch(settings, list_entries(settings)[0])).records

    assert record.status == OperationStatus.SUCCESS, record.error_message
    assert record.metadata.get("reused_existing_object") is True and not record.metadata.get("parts_sent")
    assert record.verification_method == "crc64nvme" and read_backs == []


async def test_an_interrupted_upload_resumes_with_its_checksums(
    make_settings, make_media, local_dir: Path, monkeypatch: pytest.MonkeyPatch, s3_client: Any, bucket: str
) -> None:
    make_media({"big.bin": 12 * MiB})
    settings = make_settings(part_size="5MiB", parts_in_flight=1, concurrency=1)
    entries = list_entries(settings)[0]
    original = amgmt.upload.records.StoreJournal.part_done
    with anyio.move_on_after(120) as scope:

        async def part_done(self: Any, upload_id: str, part: Any) -> None:
            await original(self, upload_id, part)
            scope.cancel()

        monkeypatch.setattr(amgmt.upload.records.StoreJournal, "part_done", part_done)
        await upload_batch(settings, entries)
    assert scope.cancelled_caught
    async with MetadataStore(settings.db_path) as store:
        [journaled] = await store.open_multiparts(bucket=bucket)
    assert journaled.checksum_algorithm == "crc64nvme" and journaled.parts[0].checksum
    assert journaled.parts[0].md5 == ""  # sent without Content-MD5: moto proves multipart uploads by the CRC

    [record] = (await upload_batch(settings, entries)).records

    assert record.status == OperationStatus.SUCCESS, record.error_message
    assert record.metadata["resumed_upload_id"] == journaled.upload_id
    assert record.metadata["parts_reused"] >= 1
    assert record.verification_method == "crc64nvme"
    data = s3_client.get_object(Bucket=bucket, Key=record.s3_object_key)["Body"].read()
    assert record.checksum_s3 == f"crc64nvme:{crc64nvme(data)}"


async def test_what_a_killed_runs_probe_left_is_removed_by_the_next_run(
    make_settings, make_media, s3_client: Any, bucket: str
) -> None:
    # A run killed during its probe leaves a probe object or upload; the probe keys carry the local dir's hash,
    # whose run lock makes any earlier one a leftover. Another local dir's probe keys are not touched.
    make_media({"clip.mp4": 30_000})
    settings = make_settings(object_prefix="media")
    base = probe_key_base(settings.object_prefix, settings.local_dir)
    other = probe_key_base(settings.object_prefix, settings.local_dir.parent / "elsewhere")
    assert base.startswith("media/.amgmt-probe-") and base != other
    s3_client.put_object(Bucket=bucket, Key=f"{base}0123456789abcdef", Body=b"left by a killed run")
    s3_client.create_multipart_upload(Bucket=bucket, Key=f"{base}fedcba9876543210")
    s3_client.put_object(Bucket=bucket, Key=f"{other}0123456789abcdef", Body=b"another local dir's, running")

    report = await upload_batch(settings, list_entries(settings)[0])

    assert report.counts() == {"success": 1}, report.to_dict()["failures"]
    assert keys(s3_client, bucket) == sorted([f"{other}0123456789abcdef", "media/clip.mp4.tar.gz"])
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def recording(real: Compressor, packed: dict[str, tuple[bool, ArchiveResult]]) -> Compressor:
    """The real compressor, noting for each entry whether it was asked for part MD5s, and what it gave."""

    async def compress(source: str, archive_path: str, part_size: int, level: int, md5: bool = True) -> ArchiveResult:
        result = await real(source, archive_path, part_size, level, md5)
        packed[os.path.basename(source)] = (md5, result)
        return result

    return compress


async def test_part_md5s_are_computed_only_where_the_endpoint_needs_them(
    real_s3, real_client, real_bucket, make_real_settings, make_media
) -> None:
    """moto proves a multipart upload by its CRC64NVME, not a single PUT: the multipart archive is packed without
    MD5s (no Content-MD5, no ETag check), the single-part ones with them. radosgw keeps no checksum: MD5s for all."""
    make_media(ENTRIES)
    settings = make_real_settings(part_size="5MiB")
    packed: dict[str, tuple[bool, ArchiveResult]] = {}

    async with CompressionPool(anyio.CapacityLimiter(2)) as real:
        report = await upload_batch(settings, list_entries(settings)[0], compressor=recording(real, packed))

    assert report.counts() == {"success": 3}, report.to_dict()["failures"]
    records = by_name(report)
    for name, (asked, result) in packed.items():
        multipart = result.part_count > 1
        wanted = not (multipart and real_s3.name == "moto")
        assert asked is wanted and bool(result.part_md5s) is wanted, name
        assert records[name].verification_method == ("crc64nvme" if not wanted else "etag"), name
    assert packed["big.bin"][1].part_count == 3
    assert packed["big.bin"][1].cpu_seconds.get("crc64nvme", 0) > 0  # the steps were measured
    assert ("md5" in packed["big.bin"][1].cpu_seconds) is (real_s3.name != "moto")


async def test_an_archive_packed_without_md5s_that_ends_in_one_part_gets_them_for_its_single_put(
    make_settings, make_media, s3_client: Any, bucket: str
) -> None:
    """12 MiB of zeros is planned as a multipart upload (packed without MD5s on moto) but compresses into one part:
    moto does not prove a single PUT's checksum, so its MD5 is computed from the staging archive (once) and the
    object is verified by its ETag."""
    make_media({"zeros.bin": b"\0" * (12 * MiB)})
    settings = make_settings(part_size="5MiB")
    packed: dict[str, tuple[bool, ArchiveResult]] = {}

    async with CompressionPool(anyio.CapacityLimiter(1)) as real:
        report = await upload_batch(settings, list_entries(settings)[0], compressor=recording(real, packed))

    [record] = report.records
    assert record.status == OperationStatus.SUCCESS, record.error_message
    asked, result = packed["zeros.bin"]
    assert asked is False and result.part_count == 1 and result.part_md5s == ()
    assert record.part_count == 1 and record.verification_method == "etag"
    data = s3_client.get_object(Bucket=bucket, Key=record.s3_object_key)["Body"].read()
    assert record.checksum_s3_etag == hashlib.md5(data).hexdigest()
