"""S3 multipart arithmetic: the service limits, part sizing and the ETag S3 computes. Pure functions, no I/O."""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Sequence

MiB = 1024 * 1024
GiB = 1024 * MiB

MIN_PART_SIZE = 5 * MiB  # every part but the last
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_SINGLE_PUT = 5 * GiB

_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-[0-9]+)?$")


def plan_part_size(expected_size: int, configured: int) -> int:
    """The part size to use for an object of about `expected_size` bytes.

    The configured size, raised (to a whole MiB) so that the object fits in MAX_PARTS parts. The archive size is
    only known after compression, so callers pass an upper bound (source size plus tar/gzip overhead).
    """
    size = max(configured, MIN_PART_SIZE)
    needed = math.ceil(max(expected_size, 0) / MAX_PARTS)
    if needed > size:
        size = math.ceil(needed / MiB) * MiB
    return min(size, MAX_PART_SIZE)


def archive_size_bound(source_size: int, file_count: int) -> int:
    """An upper bound for the tar.gz of a source: stored (incompressible) deflate blocks plus tar headers."""
    tar = source_size + (file_count + 2) * 1536 + 10240
    return tar + tar // 1000 + 64 * 1024


def part_ranges(total_size: int, part_size: int) -> list[tuple[int, int, int]]:
    """(part_number, offset, length) for every part of an object; at least one part, even when empty."""
    if total_size <= 0:
        return [(1, 0, 0)]
    count = math.ceil(total_size / part_size)
    return [(i + 1, i * part_size, min(part_size, total_size - i * part_size)) for i in range(count)]


def expected_etag(part_md5s: Sequence[str], *, multipart: bool) -> str:
    """The ETag S3 reports: the body's MD5 for one PUT, MD5 of the binary part MD5s then `-N` for multipart."""
    if not multipart:
        if len(part_md5s) != 1:
            raise ValueError("a single PUT has exactly one MD5")
        return part_md5s[0]
    joined = b"".join(bytes.fromhex(m) for m in part_md5s)
    return f"{hashlib.md5(joined).hexdigest()}-{len(part_md5s)}"


def normalise_etag(etag: str | None) -> str:
    return (etag or "").strip().strip('"').lower()


def is_md5_style_etag(etag: str | None) -> bool:
    """True when an ETag looks like S3's MD5 scheme (so it can be predicted and compared)."""
    return bool(_MD5_ETAG.match(normalise_etag(etag)))


def md5_base64(hex_md5: str) -> str:
    """The Content-MD5 header value for a hex MD5."""
    return base64.b64encode(bytes.fromhex(hex_md5)).decode("ascii")
