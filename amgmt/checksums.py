"""S3's flexible checksums as amgmt computes them: the algorithms, their header values, a part's checksum and the
whole object's (CRCs combined from the parts', SHA-256 as S3's composite). Pure functions, no I/O.

The CRCs come from awscrt (the library botocore itself needs for CRC64NVME). Per GiB on the 2-core machine
(`python -c` timing, docs/reliability.md): CRC64NVME 0.17 CPU-s, CRC32C 0.26, SHA-256 0.79, MD5 1.87.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from awscrt import checksums as _crt

CRC64NVME = "crc64nvme"
CRC32C = "crc32c"
SHA256 = "sha256"
MD5 = "md5"  # no flexible checksum: Content-MD5 and the ETag (radosgw 16.2 and other stores without them)
FLEXIBLE = (CRC64NVME, CRC32C, SHA256)  # in the order `auto` would prefer them: fastest first
FULL_OBJECT = "FULL_OBJECT"
COMPOSITE = "COMPOSITE"
_WIDTH = {CRC64NVME: 8, CRC32C: 4}


def checksum_type(algorithm: str) -> str:
    """The multipart checksum type amgmt asks for: the whole object's CRC where S3 keeps one (CRC64NVME supports
    only that, CRC32C both), SHA-256 only as a checksum of the parts' checksums."""
    return COMPOSITE if algorithm == SHA256 else FULL_OBJECT


def header(algorithm: str) -> str:
    """`x-amz-checksum-crc64nvme`."""
    return f"x-amz-checksum-{algorithm}"


def api_name(algorithm: str) -> str:
    """botocore's parameter and response key: `ChecksumCRC64NVME`."""
    return f"Checksum{algorithm.upper()}"


def request_fields(algorithm: str, value: str) -> dict[str, str]:
    """botocore's parameters for a body's checksum: `ChecksumAlgorithm=CRC64NVME, ChecksumCRC64NVME=...`."""
    return {"ChecksumAlgorithm": algorithm.upper(), api_name(algorithm): value}


def _crc(algorithm: str, data: bytes | bytearray | memoryview, previous: int = 0) -> int:
    if algorithm == CRC64NVME:
        return int(_crt.crc64nvme(data, previous))
    if algorithm == CRC32C:
        return int(_crt.crc32c(data, previous))
    raise ValueError(f"not a CRC: {algorithm}")


def encode(algorithm: str, digest: int | bytes) -> str:
    """The base64 header value of a CRC (an int, big-endian) or a SHA-256 (its bytes)."""
    raw = digest.to_bytes(_WIDTH[algorithm], "big") if isinstance(digest, int) else digest
    return base64.b64encode(raw).decode("ascii")


def of_bytes(algorithm: str, data: bytes | bytearray | memoryview) -> str:
    """The checksum header value of `data`."""
    if algorithm == SHA256:
        return encode(SHA256, hashlib.sha256(data).digest())
    return encode(algorithm, _crc(algorithm, data))


def sha256_value(hex_digest: str) -> str:
    """The header value of a SHA-256 already computed (the archive's, for a single PUT: no second pass)."""
    return encode(SHA256, bytes.fromhex(hex_digest))


class RunningCrc:
    """A CRC fed in order, chunk by chunk (the archive as it is written)."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.value = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.value = _crc(self.algorithm, data, self.value)

    @property
    def encoded(self) -> str:
        return encode(self.algorithm, self.value)


def combine(algorithm: str, parts: Sequence[str], sizes: Sequence[int]) -> str:
    """The whole object's checksum from its parts' (header values) and sizes: for a CRC, the CRC of all the bytes
    (combined, nothing read again); for SHA-256, S3's composite `SHA-256(part digests)-N`."""
    if len(parts) != len(sizes) or not parts:
        raise ValueError("one checksum and one size per part")
    if algorithm == SHA256:
        joined = b"".join(base64.b64decode(p) for p in parts)
        return f"{encode(SHA256, hashlib.sha256(joined).digest())}-{len(parts)}"
    join = _crt.combine_crc64nvme if algorithm == CRC64NVME else _crt.combine_crc32c
    value = int.from_bytes(base64.b64decode(parts[0]), "big")
    for part, size in zip(parts[1:], sizes[1:], strict=True):
        value = int(join(value, int.from_bytes(base64.b64decode(part), "big"), size))
    return encode(algorithm, value)


@dataclass(frozen=True)
class StoredChecksum:
    """A checksum as S3 reports it for an object (HEAD with checksum mode): `value` is the header value, with
    `-N` for a composite one."""

    algorithm: str
    value: str
    type: str  # FULL_OBJECT | COMPOSITE

    def same_value(self, other: StoredChecksum) -> bool:
        """Equal values: a composite's `-N` part count is compared only where both say it (moto's HEAD leaves it
        out; base64 has no `-`)."""
        mine, _, my_count = self.value.partition("-")
        theirs, _, their_count = other.value.partition("-")
        return mine == theirs and (not my_count or not their_count or my_count == their_count)

    @property
    def text(self) -> str:
        """As recorded (`checksum_s3`): `crc64nvme:BASE64`, `sha256:BASE64-3`."""
        return f"{self.algorithm}:{self.value}"


def from_response(resp: dict[str, object], algorithm: str) -> StoredChecksum | None:
    """The object's checksum of `algorithm` from a HEAD answer (botocore's keys), None when it reports none."""
    value = resp.get(api_name(algorithm))
    if not isinstance(value, str) or not value:
        return None
    kind = resp.get("ChecksumType")
    default = COMPOSITE if "-" in value else FULL_OBJECT
    return StoredChecksum(algorithm, value, kind if isinstance(kind, str) and kind else default)
