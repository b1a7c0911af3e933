"""S3's flexible checksums on the wire, through a proxy that treats them as AWS S3 does (faultproxy: a body whose
x-amz-checksum-* header does not match it is refused with 400 BadDigest; SSE-KMS objects get an ETag that is not
their MD5), which the moto server behind it does not.

What amgmt must make of it: every PUT and part carries the CRC64NVME of the packing pass, a part whose bytes do not
match it is refused (and its upload aborted), a body corrupted in transit is caught by the checksum alone, an SSE-KMS
object is verified by its stored checksum without being read back, and MGMT_CHECKSUM_ALGORITHM=md5 sends none (and
probes nothing). Setup and inspection go straight to moto (`s3_client`), never through the proxy.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import amgmt.s3.client
from amgmt import checksums
from amgmt.bench.localserver import LocalS3Server
from amgmt.errors import ExitCode
from amgmt.local.archive import ArchiveResult
from amgmt.local.entries import list_entries
from amgmt.models import OperationStatus
from amgmt.s3 import RETRY_POLICY
from amgmt.upload.batch import upload_batch
from amgmt.upload.compressor import CompressionPool, Compressor
from faultkit import object_keys, open_multipart_uploads, stored_records
from faultproxy import Fault, FaultProxy, Injection, ProxyRequest

MiB = 1024 * 1024
ENTRIES = {"big.mov": 11 * MiB, "clip.mp4": 40_000, "notes.txt": b"shot list\n" * 20}
SENDS_DATA = ("PutObject", "UploadPart")


@pytest.fixture
def aws_like(s3_server: LocalS3Server) -> Iterator[FaultProxy]:
    """The proxy checking checksums as S3 does (Content-MD5 too), with no faults of its own."""
    with FaultProxy(s3_server.endpoint_url, seed=11, check_checksums=True) as running:
        yield running


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amgmt.s3.client, "RETRY_POLICY", dataclasses.replace(RETRY_POLICY, backoff_base=0.01))


def entry_events(proxy: FaultProxy, operations: tuple[str, ...]) -> list[Any]:
    """The proxy's events of `operations` on the entries' keys (the probe's short-lived key left out)."""
    return [e for e in proxy.events if e.operation in operations and e.key and ".amgmt-probe-" not in e.key]


def crc64nvme(data: bytes) -> str:
    return checksums.of_bytes(checksums.CRC64NVME, data)


def wrong_part_checksum(real: Compressor, names: set[str]) -> Compressor:
    """The real compressor, except that the archives of `names` come back with a wrong CRC64NVME for their second
    part (or their only one): the bytes amgmt sends, and their MD5, are right; the checksum it sends is not."""
    async def compress(source: str, archive_path: str, part_size: int, level: int, md5: bool = True) -> ArchiveResult:
        result = await real(source, archive_path, part_size, level, md5)
        if source.rsplit("/", 1)[-1] not in names:
            return result
        crcs = list(result.part_crc64nvmes)
        crcs[min(1, len(crcs) - 1)] = crc64nvme(b"not the bytes of this part")
        return dataclasses.replace(result, part_crc64nvmes=tuple(crcs))

    return compress


async def test_every_put_and_part_carries_the_checksum_the_server_checks(
    make_settings, make_media, aws_like: FaultProxy, s3_client: Any, bucket: str
) -> None:
    make_media(ENTRIES)
    settings = make_settings(endpoint_url=aws_like.url, part_size="5MiB", payload_signing=True)
    content_md5s: list[tuple[str, str | None]] = []  # (operation, key) of the entries' bodies sent with Content-MD5

    def note_content_md5(req: Any) -> None:
        if req.operation in SENDS_DATA and "Content-MD5" in req.headers and int(req.headers["Content-Length"]):
            content_md5s.append((req.operation, req.key))

    aws_like.rules.append(note_content_md5)

    report = await upload_batch(settings, list_entries(settings)[0])

    assert report.counts() == {"success": 3}, report.to_dict()["failures"]
    sent = entry_events(aws_like, SENDS_DATA)
    checked = sorted((e.operation, e.key, e.part_number or 0) for e in sent if e.outcome == "checksum_checked")
    assert checked == [("PutObject", "clip.mp4.tar.gz", 0), ("PutObject", "notes.txt.tar.gz", 0)] + [
        ("UploadPart", "big.mov.tar.gz", n) for n in (1, 2, 3)
    ]
    # Besides those, only the key reservation of big.mov (an empty object) was sent, without a checksum.
    assert [(e.operation, e.key) for e in sent if e.outcome != "checksum_checked"] == [("PutObject", "big.mov.tar.gz")]
    records = await stored_records(settings)
    for name, record in records.items():
        data = s3_client.get_object(Bucket=bucket, Key=record.s3_object_key)["Body"].read()
        # The server checked each body against its checksum: the stored whole-object CRC64NVME proves the object.
        assert record.verification_method == "crc64nvme", name
        assert record.checksum_s3 == f"crc64nvme:{crc64nvme(data)}", name
        assert hashlib.sha256(data).hexdigest() == record.checksum_compressed, name
    head = s3_client.head_object(Bucket=bucket, Key="big.mov.tar.gz", ChecksumMode="ENABLED")
    assert head["ChecksumType"] == "FULL_OBJECT"  # the multipart upload was created for it
    assert object_keys(s3_client, bucket) == sorted(f"{n}.tar.gz" for n in ENTRIES)  # the probe left nothing
    # The endpoint proves every upload by its checksum: no body of an entry was sent with a Content-MD5 (no MD5
    # was computed for it), only the probe's own requests may carry one.
    assert [(op, key) for op, key in content_md5s if key and ".amgmt-probe-" not in key] == []


async def test_a_part_whose_checksum_does_not_match_is_refused_and_its_upload_aborted(
    make_settings, make_media, aws_like: FaultProxy, s3_client: Any, bucket: str, local_dir, quick_retries: None
) -> None:
    # The bytes and their Content-MD5 are right: only the x-amz-checksum-crc64nvme header can refuse them.
    make_media(ENTRIES)
    settings = make_settings(endpoint_url=aws_like.url, part_size="5MiB")

    async with CompressionPool(anyio.CapacityLimiter(2)) as real:
        report = await upload_batch(
            settings, list_entries(settings)[0], compressor=wrong_part_checksum(real, {"big.mov", "notes.txt"})
        )

    records = {r.target_name: r for r in report.records}
    assert report.aborted is None
    assert records["clip.mp4"].status == OperationStatus.SUCCESS
    for name, action in (("big.mov", "upload part 2 of"), ("notes.txt", "PUT")):
        record = records[name]
        assert record.status == OperationStatus.FAILED and str(record.stage) == "upload", name
        assert action in (record.error_message or "") and "BadDigest" in (record.error_message or ""), name
        assert "Traceback" not in (record.error_message or "")
        assert (local_dir / name).exists()  # never moved
    assert [e.outcome for e in entry_events(aws_like, ("UploadPart",)) if e.part_number == 2] == (
        ["bad_checksum"] * RETRY_POLICY.attempts
    )
    assert open_multipart_uploads(s3_client, bucket) == []  # aborted
    assert object_keys(s3_client, bucket) == ["clip.mp4.tar.gz"]


async def test_a_body_corrupted_in_transit_is_refused_by_its_checksum_alone(
    make_settings, make_media, s3_server: LocalS3Server, s3_client: Any, bucket: str
) -> None:
    # Content-MD5 is not checked here: without the checksum, moto would store the flipped byte.
    make_media({"big.mov": 11 * MiB, "clip.mp4": 40_000})
    corrupted: list[str] = []

    def corrupt_once(req: ProxyRequest) -> Injection | None:
        has_body = int(req.headers.get("Content-Length") or 0) > 0  # not a key reservation's empty PUT
        if req.operation in SENDS_DATA and has_body and req.key and ".amgmt-probe-" not in req.key \
                and req.key not in corrupted:
            corrupted.append(req.key)
            return Injection(Fault.CORRUPT)
        return None

    with FaultProxy(s3_server.endpoint_url, check_content_md5=False, check_checksums=True,
                    rules=[corrupt_once]) as proxy:
        settings = make_settings(endpoint_url=proxy.url, part_size="5MiB")
        report = await upload_batch(settings, list_entries(settings)[0])

    assert report.counts() == {"success": 2}, report.to_dict()["failures"]
    assert sorted(corrupted) == ["big.mov.tar.gz", "clip.mp4.tar.gz"]
    refused = [e.key for e in entry_events(proxy, SENDS_DATA) if e.outcome == "bad_checksum"]
    assert sorted(refused) == sorted(corrupted)
    for record in report.records:
        assert record.metadata["retries"] == 1 and record.verification_method == "crc64nvme", record.target_name
        data = s3_client.get_object(Bucket=bucket, Key=record.s3_object_key)["Body"].read()
        assert hashlib.sha256(data).hexdigest() == record.checksum_compressed


async def test_sse_kms_objects_are_verified_by_their_checksum_without_a_read_back(
    make_settings, make_media, s3_server: LocalS3Server, s3_client: Any, bucket: str
) -> None:
    # Under SSE-KMS the ETag is not the MD5 of the data (the proxy makes moto's look so, as on AWS): without a
    # stored checksum the only proof would be reading every object back.
    s3_client.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": {
            "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/amgmt-test"}}]},
    )
    make_media(ENTRIES)
    with FaultProxy(s3_server.endpoint_url, check_checksums=True, kms_etags=True) as proxy:
        settings = make_settings(endpoint_url=proxy.url, part_size="5MiB")
        report = await upload_batch(settings, list_entries(settings)[0])

    assert report.counts() == {"success": 3}, report.to_dict()["failures"]
    assert proxy.seen("GetObject") == []  # nothing read back
    for record in report.records:
        assert record.verification_method == "crc64nvme", record.target_name
        head = s3_client.head_object(Bucket=bucket, Key=record.s3_object_key)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert record.checksum_s3_etag != head["ETag"].strip('"')  # the ETag it was shown, not moto's MD5


async def test_md5_sends_no_checksum_and_probes_nothing(
    make_settings, make_media, aws_like: FaultProxy, s3_client: Any, bucket: str
) -> None:
    make_media(ENTRIES)
    settings = make_settings(endpoint_url=aws_like.url, part_size="5MiB", checksum_algorithm="md5")

    report = await upload_batch(settings, list_entries(settings)[0])

    assert report.exit_code == ExitCode.OK, report.to_dict()["failures"]
    assert not [e for e in aws_like.events if e.key and ".amgmt-probe-" in e.key]
    assert aws_like.counts["checksum_checked"] == 0
    assert {r.verification_method for r in report.records} == {"etag"}
    assert {r.checksum_s3 for r in report.records} == {None}


async def test_the_probe_runs_once_per_run(make_settings, make_media, aws_like: FaultProxy) -> None:
    make_media({f"clip{i}.mp4": 3000 + i for i in range(6)})
    settings = make_settings(endpoint_url=aws_like.url, concurrency=6)

    report = await upload_batch(settings, list_entries(settings)[0])

    assert report.counts() == {"success": 6}, report.to_dict()["failures"]
    probes = [e for e in aws_like.events if e.key and ".amgmt-probe-" in e.key]
    assert len({e.key for e in probes}) == 1
    # the right value, then a wrong one (refused); one multipart upload, its part's wrong value refused first
    assert [e.outcome for e in probes if e.operation == "PutObject"] == ["checksum_checked", "bad_checksum"]
    assert [e.outcome for e in probes if e.operation == "UploadPart"] == ["bad_checksum", "checksum_checked"]
    assert {r.verification_method for r in report.records} == {"crc64nvme"}
