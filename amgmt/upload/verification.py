"""Stage 5's proof that the object at the key holds this very archive, by the cheapest proof the endpoint gives: the
whole-object checksum it stores (checked or computed by the server: probe.py), else the ETag predicted from the part
MD5s, else the object read back and hashed. Never says verified on anything less. No records, no saving: the
pipeline does those.
"""

from __future__ import annotations

from dataclasses import dataclass

from amgmt import checksums
from amgmt.checksums import StoredChecksum
from amgmt.errors import VerificationError
from amgmt.local.archive import ArchiveResult
from amgmt.parts import expected_etag
from amgmt.s3 import METADATA_SOURCE_SHA256, ObjectInfo, S3Bucket

ETAG = "etag"
READBACK = "sha256-readback"


@dataclass(frozen=True)
class Verified:
    info: ObjectInfo  # the HEAD that proved it
    method: str  # "crc64nvme" | "crc32c" | "sha256" (the stored checksum), "etag" or "sha256-readback"


def local_checksum(archive: ArchiveResult, algorithm: str | None) -> StoredChecksum | None:
    """The whole archive's checksum of `algorithm` as the packing pass gives it without reading anything again
    (CRC64NVME; SHA-256 for a single part), else None (the upload computes it: UploadResult.checksum)."""
    if algorithm == checksums.CRC64NVME:
        return StoredChecksum(algorithm, archive.archive_crc64nvme, checksums.FULL_OBJECT)
    if algorithm == checksums.SHA256 and archive.part_count == 1:
        return StoredChecksum(algorithm, checksums.sha256_value(archive.archive_sha256), checksums.FULL_OBJECT)
    return None


async def verify_object(
    s3: S3Bucket, bucket: str, key: str, archive: ArchiveResult, *, sent: StoredChecksum | None
) -> Verified:
    """HEAD the key (with its stored checksum where the endpoint keeps one that proves the bytes) and prove the
    object is `archive`: size, source checksum metadata, then the stored checksum equal to ours (`sent` by this
    run's upload, or the packing pass's), else the predicted ETag, else a read-back's SHA-256. VerificationError
    when the object is missing, differs, or its stored checksum is not ours (no weaker proof is tried then)."""
    url = f"s3://{bucket}/{key}"
    support = await s3.checksum_support()
    algorithm = support.sends(multipart=archive.part_count > 1)
    info = await s3.head_object(key, checksum=algorithm)
    if info is None:
        raise VerificationError(f"{url} is missing after the upload")
    if info.size != archive.archive_size:
        raise VerificationError(f"{url} has {info.size} bytes, the archive {archive.archive_size}")
    claimed = info.metadata.get(METADATA_SOURCE_SHA256)
    if claimed is not None and claimed != archive.source_sha256:
        raise VerificationError(f"{url} carries another source checksum")
    expected = sent if sent is not None and sent.algorithm == algorithm else local_checksum(archive, algorithm)
    stored = info.checksum
    if expected is not None and stored is not None and stored.type == expected.type:
        if not stored.same_value(expected):
            raise VerificationError(
                f"{url} does not match the archive (its stored {expected.algorithm.upper()} {stored.value},"
                f" the archive's {expected.value})"
            )
        return Verified(info, expected.algorithm)
    parts = archive.part_md5s  # () when packed without MD5s: the stored checksum above was the proof expected
    if parts and info.etag == expected_etag(parts, multipart=len(parts) > 1):
        return Verified(info, ETAG)
    # No stored checksum to compare, and the ETag is not the predicted MD5 scheme (other part size, SSE-KMS, R2...):
    # read it back. Read exactly the object just HEADed (If-Match): one written meanwhile fails the read, not the check.
    digest = await s3.object_sha256(key, if_match=info.etag)
    if digest != archive.archive_sha256:
        raise VerificationError(f"{url} does not match the archive (read-back SHA-256 differs)")
    return Verified(info, READBACK)
