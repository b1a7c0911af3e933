"""amgmt.checksums: header values as S3 computes them, and a whole object's from its parts' without reading it again."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from awscrt import checksums as crt

from amgmt import checksums
from amgmt.checksums import COMPOSITE, FULL_OBJECT, StoredChecksum

DATA = os.urandom(3 * 65536 + 17)
SIZES = [65536, 65536, 65536, 17]


def slices(data: bytes, sizes: list[int]) -> list[bytes]:
    out, at = [], 0
    for size in sizes:
        out.append(data[at : at + size])
        at += size
    return out


@pytest.mark.parametrize(("algorithm", "whole"), [
    ("crc64nvme", lambda d: base64.b64encode(crt.crc64nvme(d).to_bytes(8, "big")).decode()),
    ("crc32c", lambda d: base64.b64encode(crt.crc32c(d).to_bytes(4, "big")).decode()),
])
def test_a_crc_of_the_whole_object_is_combined_from_its_parts(algorithm, whole) -> None:
    parts = [checksums.of_bytes(algorithm, s) for s in slices(DATA, SIZES)]
    assert checksums.combine(algorithm, parts, SIZES) == whole(DATA) == checksums.of_bytes(algorithm, DATA)
    running = checksums.RunningCrc(algorithm)
    for piece in slices(DATA, [1, 100, len(DATA) - 101]):
        running.update(piece)
    assert running.encoded == whole(DATA)


def test_sha256_of_many_parts_is_s3s_composite() -> None:
    parts = [checksums.of_bytes("sha256", s) for s in slices(DATA, SIZES)]
    joined = b"".join(hashlib.sha256(s).digest() for s in slices(DATA, SIZES))
    assert checksums.combine("sha256", parts, SIZES) == f"{base64.b64encode(hashlib.sha256(joined).digest()).decode()}-4"
    assert checksums.sha256_value(hashlib.sha256(DATA).hexdigest()) == checksums.of_bytes("sha256", DATA)


def test_stored_checksums_from_a_head_answer() -> None:
    assert checksums.from_response({"ChecksumCRC64NVME": "AAAA", "ChecksumType": "FULL_OBJECT"}, "crc64nvme") == (
        StoredChecksum("crc64nvme", "AAAA", FULL_OBJECT)
    )
    assert checksums.from_response({"ChecksumSHA256": "QQ==-3"}, "sha256") == StoredChecksum("sha256", "QQ==-3", COMPOSITE)
    assert checksums.from_response({"ChecksumCRC32C": "AAAA"}, "crc64nvme") is None
    composite = StoredChecksum("sha256", "QQ==-3", COMPOSITE)
    assert composite.same_value(StoredChecksum("sha256", "QQ==", COMPOSITE))  # moto's HEAD leaves out the count
    assert not composite.same_value(StoredChecksum("sha256", "QQ==-2", COMPOSITE))
    assert not composite.same_value(StoredChecksum("sha256", "Qg==-3", COMPOSITE))
    assert composite.text == "sha256:QQ==-3"
    assert checksums.request_fields("crc64nvme", "AAAA") == {"ChecksumAlgorithm": "CRC64NVME", "ChecksumCRC64NVME": "AAAA"}
