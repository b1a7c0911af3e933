"""Verification of downloaded bytes: the digests one pass over them gives, what the upload record (or else the
object itself) says they must give, and the comparison. Reads only (one ListParts when a part size is unknown).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from amgmt.errors import VerificationError
from amgmt.parts import expected_etag, is_md5_style_etag
from amgmt.s3 import METADATA_ARCHIVE_SHA256, ObjectHead, S3Bucket

if TYPE_CHECKING:
    from amgmt.objects.resolve import Target


@dataclass(frozen=True)
class Digests:
    size: int
    sha256: str
    part_md5s: tuple[str, ...]


class StreamDigests:
    """The SHA-256 of a byte stream and the MD5 of each `part_size` slice of it (one MD5 of it all when None):
    what a multipart ETag is made of. Fed in order, from one thread at a time."""

    def __init__(self, part_size: int | None) -> None:
        self.part_size = part_size
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._in_part = 0
        self._md5s: list[str] = []

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._sha256.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            take = len(view) if self.part_size is None else min(len(view), self.part_size - self._in_part)
            self._md5.update(view[:take])
            self._in_part += take
            view = view[take:]
            if self.part_size is not None and self._in_part == self.part_size:
                self._md5s.append(self._md5.hexdigest())
                self._md5 = hashlib.md5(usedforsecurity=False)
                self._in_part = 0

    def finish(self) -> Digests:
        md5s = list(self._md5s)
        if self._in_part or not md5s:
            md5s.append(self._md5.hexdigest())
        return Digests(self.size, self._sha256.hexdigest(), tuple(md5s))


@dataclass(frozen=True)
class Expected:
    """What the downloaded bytes must give. The upload record wins over what the object says of itself: an object
    replaced behind amgmt's back would otherwise vouch for its own bytes."""

    size: int
    etag: str | None  # None: the ETag cannot be recomputed (not MD5-style, or its part size is unknown)
    etag_part_size: int | None  # for a multipart ETag; None: the MD5 of everything
    etag_part_size_from: str | None  # "record" | "server"
    sha256: str | None
    sha256_from: str | None  # "record" | "metadata"


def check_digests(url: str, expected: Expected, got: Digests) -> tuple[str, ...]:
    """Compare; the checks that passed, or VerificationError naming the first that did not."""
    if got.size != expected.size:
        raise VerificationError(f"{url}: downloaded {got.size} bytes, expected {expected.size}")
    passed = ["size"]
    if expected.etag is not None:
        computed = expected_etag(got.part_md5s, multipart="-" in expected.etag)
        if computed != expected.etag:
            how = " (with the part size the server reports)" if expected.etag_part_size_from == "server" else ""
            raise VerificationError(f"{url}: the downloaded bytes give ETag {computed}{how}, expected {expected.etag}")
        passed.append("etag")
    if expected.sha256 is not None:
        if got.sha256 != expected.sha256:
            raise VerificationError(
                f"{url}: the downloaded bytes have SHA-256 {got.sha256}, the {expected.sha256_from} says "
                f"{expected.sha256}"
            )
        passed.append("sha256")
    return tuple(passed)


async def expected_of(s3: S3Bucket, target: Target, head: ObjectHead) -> Expected:
    """What a download of `target` must give, from its upload record first and its HEAD (and parts) second;
    VerificationError when the record and the object already disagree (the object was replaced)."""
    upload = target.upload
    url = target.url
    if upload is not None:
        if upload.compressed_size is not None and upload.compressed_size != head.size:
            raise VerificationError(
                f"{url} has {head.size} bytes, the upload {upload.operation_id[:8]} recorded "
                f"{upload.compressed_size}: the object was replaced after amgmt uploaded it"
            )
        if upload.checksum_s3_etag and upload.checksum_s3_etag != head.etag:
            raise VerificationError(
                f"{url} has ETag {head.etag}, the upload {upload.operation_id[:8]} recorded "
                f"{upload.checksum_s3_etag}: the object was replaced after amgmt uploaded it"
            )
    claimed = head.metadata.get(METADATA_ARCHIVE_SHA256)
    recorded = upload.checksum_compressed if upload else None
    if claimed and recorded and claimed != recorded:
        raise VerificationError(f"{url} carries archive SHA-256 {claimed}, the upload recorded {recorded}")
    sha256, sha256_from = (recorded, "record") if recorded else (claimed, "metadata") if claimed else (None, None)

    etag: str | None = head.etag if is_md5_style_etag(head.etag) else None
    part_size: int | None = None
    part_size_from: str | None = None
    if etag and "-" in etag:
        count = int(etag.rsplit("-", 1)[1])
        if upload and upload.part_size and math.ceil(head.size / upload.part_size) == count:
            part_size, part_size_from = upload.part_size, "record"
        else:
            found = await s3.first_part_size(target.key)
            if found and found[1] == count and found[0] > 0 and math.ceil(head.size / found[0]) == count:
                part_size, part_size_from = found[0], "server"
        if part_size is None:
            etag = None  # a multipart ETag whose part size is unknown cannot be recomputed
    return Expected(head.size, etag, part_size, part_size_from, sha256, sha256_from)
