"""Object options (MGMT_SSE, MGMT_SSE_KMS_KEY_ID, MGMT_ACL, MGMT_TAGS, MGMT_METADATA): sent with a single PUT over
both transports (the own direct one, whose headers are signed, and botocore's) and with CreateMultipartUpload;
recorded; and verification still needs no read-back under SSE-KMS (the stored checksum proves the bytes)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import boto3
import pytest

import amgmt.s3.direct
from amgmt.local.entries import list_entries
from amgmt.models import OperationStatus
from amgmt.parts import MiB
from amgmt.s3 import METADATA_SOURCE_SHA256
from amgmt.store import MetadataStore
from amgmt.upload.batch import upload_batch

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


@pytest.fixture
def kms_key(s3_server: Any) -> str:
    """A KMS key made on the moto server's own KMS endpoint."""
    kms = boto3.client(
        "kms",
        endpoint_url=s3_server.endpoint_url,
        region_name=os.environ["AWS_DEFAULT_REGION"],
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    )
    return str(kms.create_key(Description="amgmt test")["KeyMetadata"]["Arn"])


def _media(local_dir: Path) -> None:
    (local_dir / "small.mp4").write_bytes(random.Random(1).randbytes(200_000))  # one single PUT
    (local_dir / "big.mp4").write_bytes(random.Random(2).randbytes(11 * MiB))  # a multipart upload of 3 parts


@pytest.mark.parametrize("transport", ["direct", "botocore"])
async def test_sse_kms_tags_metadata_and_acl_reach_every_object(
    transport: str, make_settings, local_dir: Path, s3_client, bucket: str, kms_key: str, monkeypatch
) -> None:
    direct_puts: list[dict[str, Any]] = []
    original_put = amgmt.s3.direct.DirectRequests.put

    async def counting_put(self: Any, key: str, body: Any, content_md5: str, extra: Any, **kw: Any) -> Any:
        direct_puts.append(dict(extra))
        return await original_put(self, key, body, content_md5, extra, **kw)

    monkeypatch.setattr(amgmt.s3.direct.DirectRequests, "put", counting_put)
    if transport == "botocore":

        async def unusable(self: Any) -> bool:
            return False

        monkeypatch.setattr(amgmt.s3.direct.DirectRequests, "usable", unusable)
    _media(local_dir)
    settings = make_settings(
        part_size="5MiB",
        sse="aws:kms",
        sse_kms_key_id=kms_key,
        tags=("project=gopro", "card=2"),
        metadata=("Camera=HERO12", "shot-by=anna"),
        acl="public-read",
    )

    report = await upload_batch(settings, list_entries(settings)[0])

    assert report.counts() == {"success": 2}, report.to_dict()["failures"]
    records = {r.target_name: r for r in report.records}
    if transport == "direct":
        assert any(put.get("SSEKMSKeyId") == kms_key for put in direct_puts), "the single PUT went direct"
    else:
        assert not direct_puts
    for name, record in records.items():
        key = record.s3_object_key
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms", name
        assert head["SSEKMSKeyId"] == kms_key, name
        assert head["Metadata"]["camera"] == "HERO12" and head["Metadata"]["shot-by"] == "anna", name
        assert head["Metadata"][METADATA_SOURCE_SHA256] == record.checksum_original, "amgmt's own metadata stays"
        tags = s3_client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        assert {t["Key"]: t["Value"] for t in tags} == {"project": "gopro", "card": "2"}, name
        grants = s3_client.get_object_acl(Bucket=bucket, Key=key)["Grants"]
        assert any(g["Grantee"].get("URI") == ALL_USERS and g["Permission"] == "READ" for g in grants), name
        assert record.metadata["object_options"] == {
            "sse": "aws:kms",
            "sse_kms_key_id": kms_key,
            "acl": "public-read",
            "tags": {"project": "gopro", "card": "2"},
            "metadata": {"camera": "HERO12", "shot-by": "anna"},
        }
        assert record.verification_method != "sha256-readback", name
    # The multipart object is proven by the CRC64NVME moto computes from the bytes, not by its ETag or a read-back.
    assert records["big.mp4"].verification_method == "crc64nvme"
    async with MetadataStore(settings.db_path) as store:
        stored = await store.get_operation(records["big.mp4"].operation_id)
    assert stored.metadata["object_options"]["sse"] == "aws:kms"
    assert stored.status == OperationStatus.SUCCESS


async def test_sse_aes256_alone(make_settings, local_dir: Path, s3_client, bucket: str) -> None:
    (local_dir / "clip.mp4").write_bytes(b"clip" * 1000)
    settings = make_settings(sse="aes256")

    report = await upload_batch(settings, list_entries(settings)[0])

    [record] = report.records
    assert record.status == OperationStatus.SUCCESS, record.error_message
    assert s3_client.head_object(Bucket=bucket, Key="clip.mp4.tar.gz")["ServerSideEncryption"] == "AES256"
    assert record.metadata["object_options"] == {"sse": "AES256"}


@pytest.mark.parametrize("transport", ["direct", "botocore"])
async def test_every_body_byte_goes_through_the_one_bandwidth_limit(
    transport: str, make_settings, local_dir: Path, monkeypatch
) -> None:
    """MGMT_BWLIMIT: the single PUT and every part, over either transport, are handed to the socket through the
    run's one bucket, chunk by chunk (the rate itself is measured by benchmarks/bwlimit.py, not here)."""
    import amgmt.s3.bandwidth

    taken: list[tuple[int, int]] = []
    original_take = amgmt.s3.bandwidth.Bandwidth.take

    async def counting_take(self: Any, nbytes: int) -> None:
        taken.append((id(self), nbytes))
        await original_take(self, nbytes)

    monkeypatch.setattr(amgmt.s3.bandwidth.Bandwidth, "take", counting_take)
    if transport == "botocore":

        async def unusable(self: Any) -> bool:
            return False

        monkeypatch.setattr(amgmt.s3.direct.DirectRequests, "usable", unusable)
    _media(local_dir)
    settings = make_settings(part_size="5MiB", bwlimit="200M")

    report = await upload_batch(settings, list_entries(settings)[0])

    assert report.counts() == {"success": 2}, report.to_dict()["failures"]
    assert sum(n for _, n in taken) == sum(r.compressed_size for r in report.records)
    assert len({bucket for bucket, _ in taken}) == 1, "one bucket for the whole run"
    assert max(n for _, n in taken) <= amgmt.s3.bandwidth.CHUNK
