"""Parts sent from the staging archive to the socket by os.sendfile (the direct transport), never read into memory,
on moto and on radosgw; read into memory and sent by botocore where a signed payload needs their SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

import amgmt.s3.bodies
from amgmt.local.entries import list_entries
from amgmt.models import OperationStatus
from amgmt.parts import MiB
from amgmt.upload.batch import upload_batch


def part_reads(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(reads into memory, opens for sendfile) of staging archive ranges: (file name, offset)."""
    reads: list[tuple[str, int]] = []
    opens: list[tuple[str, int]] = []
    real_read, real_open = amgmt.s3.bodies.read_file_range, amgmt.s3.bodies.open_file_range

    def read(path: str, offset: int, length: int) -> bytearray:
        reads.append((Path(path).name, offset))
        return real_read(path, offset, length)

    def open_range(path: str, offset: int, length: int) -> Any:
        opens.append((Path(path).name, offset))
        return real_open(path, offset, length)

    monkeypatch.setattr(amgmt.s3.bodies, "read_file_range", read)
    monkeypatch.setattr(amgmt.s3.bodies, "open_file_range", open_range)
    return reads, opens


async def test_parts_go_from_the_file_to_the_socket_and_the_object_is_the_archive(
    real_s3, real_client, real_bucket, make_real_settings, make_media, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto: parts with their CRC64NVME and no Content-MD5; radosgw: with their Content-MD5. Either way the
    server took every byte (it checks the one or the other) and nothing was read into memory for a part."""
    make_media({"big.bin": 12 * MiB, "small.txt": b"a few words\n" * 10})
    settings = make_real_settings(part_size="5MiB")
    reads, opens = part_reads(monkeypatch)

    report = await upload_batch(settings, list_entries(settings)[0])

    assert report.counts() == {"success": 2}, report.to_dict()["failures"]
    big = {r.target_name: r for r in report.records}["big.bin"]
    assert big.part_count == 3
    assert sorted(offset for name, offset in opens if "big.bin" in name) == [0, 5 * MiB, 10 * MiB]
    assert [name for name, _offset in reads if "big.bin" in name] == []  # only the single PUT was read
    data = real_client.get_object(Bucket=real_bucket, Key=big.s3_object_key)["Body"].read()
    assert hashlib.sha256(data).hexdigest() == big.checksum_compressed
    assert big.verification_method == ("crc64nvme" if real_s3.name == "moto" else "etag")


async def test_a_signed_payload_reads_its_parts_into_memory_once_each(
    make_settings, make_media, monkeypatch: pytest.MonkeyPatch, s3_client: Any, bucket: str
) -> None:
    make_media({"big.bin": 12 * MiB})
    settings = make_settings(part_size="5MiB", payload_signing=True)
    reads, opens = part_reads(monkeypatch)

    [record] = (await upload_batch(settings, list_entries(settings)[0])).records

    assert record.status == OperationStatus.SUCCESS, record.error_message
    assert opens == [] and sorted(offset for _name, offset in reads) == [0, 5 * MiB, 10 * MiB]
    data = s3_client.get_object(Bucket=bucket, Key=record.s3_object_key)["Body"].read()
    assert hashlib.sha256(data).hexdigest() == record.checksum_compressed
