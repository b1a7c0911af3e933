"""The reservation of a key (METADATA_RESERVATION): an empty object made create-if-absent that holds the key for one
operation while its multipart upload runs. Must not upload parts; multipart.py decides when to reserve and release."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from amgmt.errors import UploadError
from amgmt.parts import md5_base64
from amgmt.s3.values import METADATA_RESERVATION, UploadStats

if TYPE_CHECKING:
    from amgmt.s3.client import S3Bucket

EMPTY_MD5 = hashlib.md5(b"").hexdigest()


async def reserve_key(s3: S3Bucket, key: str, owner: str, stats: UploadStats) -> None:
    """Hold `key` for `owner` with an empty object made create-if-absent; ObjectExistsError when it is taken."""
    await s3.put_bytes(
        key,
        bytearray(),
        md5_base64(EMPTY_MD5),
        {"Metadata": {METADATA_RESERVATION: owner}},
        storage_class=None,
        stats=stats,
        if_absent=True,
    )


async def reservation_etag(s3: S3Bucket, key: str, owners: set[str]) -> str:
    """The ETag of the reservation of one of `owners` at `key`; UploadError when the key holds anything else
    (another client wrote it while our parts were sent: it is not overwritten)."""
    head = await s3.head(key)  # not counted in the upload's retries: those are of the upload's own requests
    holder = ((head or {}).get("Metadata") or {}).get(METADATA_RESERVATION)
    if head is None or holder not in owners or int(head.get("ContentLength", 0)) != 0:
        raise UploadError(
            f"s3://{s3.bucket}/{key} was written by another client while this upload ran; it is not"
            " overwritten (use --overwrite to replace it)"
        )
    return str(head.get("ETag") or "")


async def release(s3: S3Bucket, key: str, owners: set[str]) -> None:
    """Remove the reservation of `key` by one of `owners` (after a failed or cancelled upload; `amgmt cleanup`
    after a crash), only if the key still holds it."""
    if not owners:
        return
    head = await s3.head(key)
    holder = ((head or {}).get("Metadata") or {}).get(METADATA_RESERVATION)
    if head is not None and holder in owners and int(head.get("ContentLength", 0)) == 0:
        await s3.delete_object(key)
