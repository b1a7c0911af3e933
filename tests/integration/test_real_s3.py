"""The same uploads against moto and against a real S3 implementation (a single-node Ceph radosgw).

Each test runs twice through the `real_s3` fixture (tests/conftest.py): `[moto]` and `[rgw]`. Where the two servers
behave differently the test says what each one does and asserts what amgmt should make of it:

- Content-MD5: radosgw checks it (BadDigest), moto ignores it.
- CompleteMultipartUpload: radosgw answers with an empty ETag; HEAD then gives the right `md5-of-md5s-N`.
- Storage classes: radosgw refuses one it has no placement for (InvalidArgument, with no message); moto takes any.
- ListParts of an upload id the server does not know: radosgw says NoSuchKey, moto (and AWS) NoSuchUpload.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import amgmt.upload.pipeline
import amgmt.upload.records
from amgmt.local.archive import ArchiveResult
from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.upload.report import BatchReport
from amgmt.errors import ExitCode
from amgmt.models import OperationStatus, UploadRecord
from amgmt.parts import MiB, expected_etag
from amgmt.upload.compressor import CompressionPool, Compressor
from amgmt.s3 import RETRY_POLICY

PART_ATTEMPTS = RETRY_POLICY.attempts
from amgmt.store import MetadataStore

# A small mixed local dir: files, a nested directory (with an empty file and an empty dir), an empty file, and one
# entry big enough for three 5 MiB parts.
MIXED: dict[str, int | bytes | None] = {
    "notes.txt": b"shot list\n" * 50,
    "clip.mp4": 3000,
    "empty.dat": b"",
    "project/readme.md": b"# project\n",
    "project/raw/take1.bin": 50_000,
    "project/raw/deeper/empty.txt": b"",
    "project/empty-dir/": None,
    "big.bin": 12 * MiB,
}
PART_SIZE = "5MiB"
# The tests below that are about Content-MD5 and the ETag keep to that path (radosgw's, and
# MGMT_CHECKSUM_ALGORITHM=md5's) on moto too, where `auto` would verify multipart uploads by their stored CRC64NVME
# instead: tests/integration/test_flexible_checksums.py covers that path.
ETAG_PATH = "md5"


# -- helpers --------------------------------------------------------------------------------------------------


def tree(path: Path) -> dict[str, bytes | None]:
    """Relative path -> file bytes (None for a directory) of everything below `path`, `path` itself included."""
    out: dict[str, bytes | None] = {}
    root = path.parent
    out[path.name] = None if path.is_dir() else path.read_bytes()
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames:
                out[os.path.relpath(os.path.join(dirpath, name), root)] = None
            for name in filenames:
                out[os.path.relpath(os.path.join(dirpath, name), root)] = Path(dirpath, name).read_bytes()
    return out


def extract(data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")


def etag_of(data: bytes, part_size: int) -> str:
    """The ETag S3 gives `data` uploaded in parts of `part_size` (one part: its plain MD5)."""
    parts = [hashlib.md5(data[i : i + part_size]).hexdigest() for i in range(0, max(len(data), 1), part_size)]
    return expected_etag(parts, multipart=len(parts) > 1)


def by_name(report: BatchReport) -> dict[str, UploadRecord]:
    return {r.target_name: r for r in report.records}


def open_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def keys(client: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def corrupting_compressor(real: Compressor, names: set[str]) -> Compressor:
    """The pipeline's real compressor, except that the archives of `names` come back with a wrong MD5 for their
    second part (or their only one): the bytes amgmt sends are right, the Content-MD5 it sends with them is not."""

    async def compress(source: str, archive_path: str, part_size: int, level: int, md5: bool = True) -> ArchiveResult:
        result = await real(source, archive_path, part_size, level, md5)
        if os.path.basename(source) not in names:
            return result
        md5s = list(result.part_md5s)
        md5s[min(1, len(md5s) - 1)] = hashlib.md5(b"not the bytes of this part").hexdigest()
        return dataclasses.replace(result, part_md5s=tuple(md5s))

    return compress


# -- tests ----------------------------------------------------------------------------------------------------


async def test_mixed_dir_round_trips_and_is_verified_by_etag(
    real_s3, real_client, real_bucket, make_real_settings, make_media, local_dir: Path, tmp_path: Path
) -> None:
    make_media(MIXED)
    before = tmp_path / "before"
    shutil.copytree(local_dir, before)
    settings = make_real_settings(part_size=PART_SIZE, checksum_algorithm=ETAG_PATH)
    entries, _ = list_entries(settings)
    assert sorted(e.name for e in entries) == ["big.bin", "clip.mp4", "empty.dat", "notes.txt", "project"]

    report = await upload_batch(settings, entries)

    assert report.counts() == {"success": 5}, report.to_dict()["failures"]
    records = by_name(report)
    # Both servers give the MD5-scheme ETag on HEAD (radosgw too, although its CompleteMultipartUpload answer has
    # an empty ETag: amgmt only trusts HEAD), so no object needs reading back.
    assert {r.target_name: r.verification_method for r in report.records} == dict.fromkeys(records, "etag")
    big = records["big.bin"]
    assert big.part_count == 3 and big.metadata["multipart"] is True
    assert big.checksum_s3_etag and big.checksum_s3_etag.endswith("-3")
    assert records["empty.dat"].metadata["multipart"] is False
    async with MetadataStore(settings.db_path) as store:
        stored = await store.get_operation(big.operation_id)
    assert stored.verification_method == "etag" and stored.status == OperationStatus.SUCCESS

    # Byte for byte: every object unpacks to exactly the entry that was uploaded.
    assert keys(real_client, real_bucket) == sorted(f"{e.name}.tar.gz" for e in entries)
    for entry in entries:
        data = real_client.get_object(Bucket=real_bucket, Key=f"{entry.name}.tar.gz")["Body"].read()
        dest = tmp_path / "out" / entry.name
        extract(data, dest)
        assert tree(dest / entry.name) == tree(before / entry.name), entry.name
        assert real_client.head_object(Bucket=real_bucket, Key=f"{entry.name}.tar.gz")["ETag"].strip('"') == (
            etag_of(data, settings.part_size)
        )
    assert not (local_dir / "big.bin").exists() and (settings.completed_dir / "big.bin").exists()
    assert open_uploads(real_client, real_bucket) == []

    # The difference amgmt copes with above, seen from a plain client: the empty ETag of radosgw's complete.
    created = real_client.create_multipart_upload(Bucket=real_bucket, Key="probe")
    part = real_client.upload_part(Bucket=real_bucket, Key="probe", UploadId=created["UploadId"], PartNumber=1,
                                   Body=b"x")
    done = real_client.complete_multipart_upload(
        Bucket=real_bucket, Key="probe", UploadId=created["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    head = real_client.head_object(Bucket=real_bucket, Key="probe")["ETag"].strip('"')
    assert head == expected_etag([hashlib.md5(b"x").hexdigest()], multipart=True)
    assert done.get("ETag", "").strip('"') == ("" if real_s3.name == "rgw" else head)


async def test_storage_class_the_server_does_not_offer(
    real_s3, real_client, real_bucket, make_real_settings, make_media, local_dir: Path
) -> None:
    """radosgw refuses STANDARD_IA (no placement for it) with a bare InvalidArgument; moto stores it.

    A storage class is one setting for the whole run, so every entry would fail the same way (after compressing
    each one for nothing): amgmt stops the run with one message naming the setting, exit code 3 (S3 unusable),
    and no traceback. Nothing is left on the server and every original stays where it was."""
    make_media({"a.txt": b"a" * 100, "big.bin": 12 * MiB, "c.txt": b"c"})
    settings = make_real_settings(part_size=PART_SIZE, storage_class="STANDARD_IA", concurrency=2)
    entries, _ = list_entries(settings)

    report = await upload_batch(settings, entries)

    if real_s3.name == "moto":
        assert report.counts() == {"success": 3}, report.to_dict()["failures"]
        assert report.aborted is None
        for record in report.records:
            assert record.s3_storage_class == "STANDARD_IA"
            assert real_client.head_object(Bucket=real_bucket, Key=record.s3_object_key)["StorageClass"] == (
                "STANDARD_IA"
            )
        return
    assert report.exit_code == ExitCode.STORAGE
    assert report.aborted is not None
    assert "storage class STANDARD_IA" in report.aborted and "InvalidArgument" in report.aborted
    assert "MGMT_STORAGE_CLASS" in report.aborted
    assert report.counts().get("success", 0) == 0
    failed = [r for r in report.records if r.status == OperationStatus.FAILED]
    assert failed and all("storage class STANDARD_IA" in (r.error_message or "") for r in failed)
    assert all("Traceback" not in (r.error_message or "") for r in report.records)
    assert keys(real_client, real_bucket) == [] and open_uploads(real_client, real_bucket) == []
    assert sorted(p.name for p in local_dir.iterdir() if p.name != "completed") == ["a.txt", "big.bin", "c.txt"]
    assert not any(settings.staging_dir.iterdir())


async def test_storage_class_refused_on_the_command_line(
    real_s3, real_client, real_bucket, make_media, local_dir: Path
) -> None:
    """The same through `amgmt upload all`: a readable message and exit code 3 on radosgw, success on moto."""
    make_media({"a.txt": b"a" * 100, "b.txt": b"b"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGMT_")}
    env.update(MGMT_BUCKET=real_bucket, MGMT_LOCAL_DIR=str(local_dir), MGMT_ENDPOINT_URL=real_s3.endpoint_url,
               HOME=str(local_dir.parent))
    proc = subprocess.run(
        [sys.executable, "-m", "amgmt", "upload", "all", "--storage-class", "STANDARD_IA", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    if real_s3.name == "moto":
        assert proc.returncode == 0, output
        assert keys(real_client, real_bucket) == ["a.txt.tar.gz", "b.txt.tar.gz"]
    else:
        assert proc.returncode == int(ExitCode.STORAGE), output
        assert "storage class STANDARD_IA" in output and "MGMT_STORAGE_CLASS" in output, output
        assert keys(real_client, real_bucket) == []


async def test_wrong_content_md5_is_rejected_by_radosgw_and_caught_by_verify_on_moto(
    real_s3, real_client, real_bucket, make_real_settings, make_media, local_dir: Path
) -> None:
    """amgmt sends Content-MD5 with every part (and every single PUT). To prove it reaches the server, the MD5s it
    sends for two entries are made wrong while the bytes stay right:

    - radosgw checks Content-MD5 and answers BadDigest. amgmt takes BadDigest as transient (a body corrupted in
      transit), tries PART_ATTEMPTS times, then fails the entry at the upload stage and aborts its multipart
      upload. The original stays; the third, untouched entry is not affected (nor slowed down by a stalled
      connection after the rejected PUTs: see the time bound).
    - moto ignores Content-MD5 and stores the (correct) bytes. The upload passes; its ETag (computed by moto
      from the bytes) differs from the one amgmt predicts from its wrong MD5s, so verify falls back to reading
      the object back: its SHA-256 is the archive's (the bytes were never wrong), so the entry SUCCEEDS, verified
      by "sha256-readback" rather than "etag". Verification does not fail: it proves the data, not the header.
    """
    make_media({"big.bin": 12 * MiB, "small.txt": b"small\n" * 10, "ok.txt": b"untouched"})
    settings = make_real_settings(part_size=PART_SIZE, concurrency=3, checksum_algorithm=ETAG_PATH)
    entries, _ = list_entries(settings)
    started = time.monotonic()

    async with CompressionPool(anyio.CapacityLimiter(2)) as real:
        report = await upload_batch(settings, entries, compressor=corrupting_compressor(real, {"big.bin", "small.txt"}))

    elapsed = time.monotonic() - started
    records = by_name(report)
    assert report.aborted is None
    ok = records["ok.txt"]
    assert ok.status == OperationStatus.SUCCESS and ok.verification_method == "etag"
    if real_s3.name == "moto":
        assert report.counts() == {"success": 3}, report.to_dict()["failures"]
        for name in ("big.bin", "small.txt"):
            record = records[name]
            assert record.verification_method == "sha256-readback", name
            data = real_client.get_object(Bucket=real_bucket, Key=record.s3_object_key)["Body"].read()
            # moto's ETag is that of the bytes it received: it did not look at the Content-MD5 header.
            assert record.checksum_s3_etag == etag_of(data, settings.part_size), name
            assert hashlib.sha256(data).hexdigest() == record.checksum_compressed
        assert records["big.bin"].checksum_s3_etag.endswith("-3")
        return

    assert report.counts() == {"failed": 2, "success": 1}, report.to_dict()["failures"]
    big, small = records["big.bin"], records["small.txt"]
    assert big.error_message and "upload part 2 of" in big.error_message and "BadDigest" in big.error_message
    assert small.error_message and "PUT" in small.error_message and "BadDigest" in small.error_message
    for record in (big, small):
        assert str(record.stage) == "upload"
        assert record.metadata["retries"] >= PART_ATTEMPTS - 1  # tried again, as for a body corrupted in transit
        assert (local_dir / record.target_name).exists()  # never moved
    assert open_uploads(real_client, real_bucket) == []  # the multipart upload of big.bin was aborted
    assert keys(real_client, real_bucket) == ["ok.txt.tar.gz"]
    async with MetadataStore(settings.db_path) as store:
        assert await store.open_multiparts(bucket=real_bucket) == []
    assert not any(settings.staging_dir.iterdir())
    # Five attempts with backoff take a few seconds; a connection stalled after a rejected PUT would add ~60 s.
    assert elapsed < 45, f"{elapsed:.1f} s"


async def _interrupted_upload(
    monkeypatch: pytest.MonkeyPatch, settings: Any, entries: list[Path]
) -> BatchReport:
    """upload_batch, cancelled (as by Ctrl-C) as soon as the first part of its multipart upload is journaled."""
    report = BatchReport()
    original = amgmt.upload.records.StoreJournal.part_done
    journaled: list[int] = []
    with anyio.move_on_after(120) as scope:

        async def part_done(self: amgmt.upload.records.StoreJournal, upload_id: str, part: Any) -> None:
            await original(self, upload_id, part)
            journaled.append(part.number)
            scope.cancel()  # a no-op once the scope is left: the re-run is not interrupted

        monkeypatch.setattr(amgmt.upload.records.StoreJournal, "part_done", part_done)
        await upload_batch(settings, entries, report=report)
    assert journaled and scope.cancelled_caught, "the upload was not interrupted after its first part"
    return report


async def test_interrupted_multipart_upload_resumes_from_list_parts(
    real_s3, real_client, real_bucket, make_real_settings, make_media, local_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_media({"big.bin": 12 * MiB})
    original = (local_dir / "big.bin").read_bytes()
    settings = make_real_settings(part_size=PART_SIZE, parts_in_flight=1, concurrency=1, checksum_algorithm=ETAG_PATH)
    entries, _ = list_entries(settings)

    first = await _interrupted_upload(monkeypatch, settings, entries)

    [cancelled] = first.records
    assert cancelled.status == OperationStatus.CANCELLED
    [left_open] = open_uploads(real_client, real_bucket)
    on_server = real_client.list_parts(Bucket=real_bucket, Key=left_open["Key"], UploadId=left_open["UploadId"])
    assert len(on_server.get("Parts", [])) >= 1

    second = await upload_batch(settings, entries)

    [record] = second.records
    assert record.status == OperationStatus.SUCCESS, record.error_message
    assert record.metadata["resumed_upload_id"] == left_open["UploadId"]
    assert record.metadata["parts_reused"] >= 1
    assert record.metadata["parts_reused"] + record.metadata["parts_sent"] == 3
    assert record.verification_method == "etag"
    assert open_uploads(real_client, real_bucket) == []
    data = real_client.get_object(Bucket=real_bucket, Key="big.bin.tar.gz")["Body"].read()
    extract(data, tmp_path / "out")
    assert (tmp_path / "out" / "big.bin").read_bytes() == original


async def test_resume_of_an_upload_the_server_no_longer_has_starts_afresh(
    real_s3, real_client, real_bucket, make_real_settings, make_media, local_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The journal says an upload is open, but it was aborted on the server meanwhile (another client, a lifecycle
    rule). ListParts then fails: NoSuchUpload on moto and AWS, NoSuchKey on radosgw. Either way amgmt starts a new
    upload instead of failing the entry (and every later run of it)."""
    make_media({"big.bin": 12 * MiB})
    settings = make_real_settings(part_size=PART_SIZE, parts_in_flight=1, concurrency=1, checksum_algorithm=ETAG_PATH)
    entries, _ = list_entries(settings)

    await _interrupted_upload(monkeypatch, settings, entries)
    [left_open] = open_uploads(real_client, real_bucket)
    real_client.abort_multipart_upload(Bucket=real_bucket, Key=left_open["Key"], UploadId=left_open["UploadId"])

    second = await upload_batch(settings, entries)

    [record] = second.records
    assert record.status == OperationStatus.SUCCESS, record.error_message
    assert "resumed_upload_id" not in record.metadata
    assert record.metadata["parts_reused"] == 0 and record.metadata["parts_sent"] == 3
    assert record.verification_method == "etag"
    assert keys(real_client, real_bucket) == ["big.bin.tar.gz"] and open_uploads(real_client, real_bucket) == []


def racing_compressor(real: Compressor, real_client: Any, bucket: str, writes: dict[str, bytes | None]) -> Compressor:
    """The real compressor, after which "somebody else" writes to the entry's key: after the run's listing and
    before amgmt's PUT. A None value writes amgmt's own archive (as an earlier attempt whose answer was lost)."""

    async def compress(source: str, archive_path: str, part_size: int, level: int, md5: bool = True) -> ArchiveResult:
        result = await real(source, archive_path, part_size, level, md5)
        name = os.path.basename(source)
        if name in writes:
            body = writes[name]
            extra: dict[str, Any] = {}
            if body is None:
                body = Path(archive_path).read_bytes()
                extra["Metadata"] = {"amgmt-archive-sha256": result.archive_sha256,
                                     "amgmt-source-sha256": result.source_sha256}
            await anyio.to_thread.run_sync(
                lambda: real_client.put_object(Bucket=bucket, Key=f"{name}.tar.gz", Body=body, **extra)
            )
        return result

    return compress


async def test_a_key_taken_after_the_listing_is_never_overwritten(
    real_client, real_bucket, make_real_settings, make_media, local_dir: Path
) -> None:
    # 25 entries: enough for the run to list its prefix once instead of a HEAD per entry. Two keys are written
    # between that listing and amgmt's PUT: one with other content (amgmt's create-if-absent PUT must fail, the
    # object and the original stay), one with amgmt's own archive (recognised and reused, not sent again).
    make_media({f"photo{i:02d}.jpg": 2000 + i for i in range(25)})
    settings = make_real_settings()
    entries, _ = list_entries(settings)
    writes: dict[str, bytes | None] = {"photo03.jpg": b"somebody else's photo", "photo07.jpg": None}

    async with CompressionPool(anyio.CapacityLimiter(2)) as real:
        racing = racing_compressor(real, real_client, real_bucket, writes)
        report = await upload_batch(settings, entries, compressor=racing)

    records = by_name(report)
    taken = records["photo03.jpg"]
    assert taken.status == OperationStatus.FAILED and "already exists with other content" in taken.error_message
    get = real_client.get_object(Bucket=real_bucket, Key="photo03.jpg.tar.gz")["Body"].read()
    assert get == b"somebody else's photo"
    assert (local_dir / "photo03.jpg").is_file()
    ours = records["photo07.jpg"]
    assert ours.status == OperationStatus.SUCCESS and ours.metadata["reused_existing_object"] is True
    assert ours.metadata["parts_sent"] == 0 and ours.verification_method == "etag"
    others = [r for name, r in records.items() if name not in writes]
    assert len(others) == 23 and all(r.status == OperationStatus.SUCCESS for r in others)
    assert all("reused_existing_object" not in r.metadata for r in others)
    assert len(keys(real_client, real_bucket)) == 25
