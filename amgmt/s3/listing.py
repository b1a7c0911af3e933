"""Listings of one bucket: objects (with restore state where the server gives it), keys under a prefix, and
unfinished multipart uploads. A mixin of S3Bucket: it sends through the bucket's `request` (the one retry policy)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ParamValidationError

from amgmt.errors import StorageError, UploadError
from amgmt.parts import normalise_etag
from amgmt.s3.errors import RUN_WIDE_CODES, TRANSIENT_CODES, S3StorageError, answer_of
from amgmt.s3.values import LIST_PAGE_SIZE, ObjectHead, RestoreState, UploadStats

_T = TypeVar("_T")


class BucketListings:
    """The listing calls of S3Bucket (which provides `bucket`, `client` and `request`)."""

    bucket: str
    client: Any

    if TYPE_CHECKING:  # provided by S3Bucket

        async def request(
            self, action: str, key: str | None, call: Callable[[], Awaitable[_T]], *, stats: UploadStats | None = None
        ) -> _T: ...

    async def list_multipart_uploads(self, prefix: str = "") -> list[dict[str, Any]]:
        """Unfinished multipart uploads under a prefix: [{"key", "upload_id", "initiated"}]."""
        found: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            resp = await self.request(
                "list multipart uploads in", None, lambda: self.client.list_multipart_uploads(**kwargs)
            )
            for item in resp.get("Uploads", []):
                found.append({"key": item["Key"], "upload_id": item["UploadId"], "initiated": item.get("Initiated")})
            if not resp.get("IsTruncated"):
                return found
            kwargs["KeyMarker"] = resp.get("NextKeyMarker")
            kwargs["UploadIdMarker"] = resp.get("NextUploadIdMarker")

    # -- listings ----------------------------------------------------------------------------------------------

    async def list_objects(
        self, prefix: str = "", *, limit: int | None = None, page_size: int = LIST_PAGE_SIZE
    ) -> list[ObjectHead]:
        """The objects under `prefix` in key order (at most `limit`), one ListObjectsV2 page after another: never a
        request per object, so `metadata` and `content_type` stay empty.

        The restore state comes with the listing where the server offers it (AWS: OptionalObjectAttributes
        RestoreStatus); a server that refuses that attribute is asked again without it. moto and radosgw ignore
        it, so their objects carry no restore state. Any failure stops the listing (StorageError).
        """
        if not 1 <= page_size <= LIST_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{LIST_PAGE_SIZE}, not {page_size}")
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": prefix,
            "MaxKeys": page_size,
            "OptionalObjectAttributes": ["RestoreStatus"],
        }
        try:
            resp = await self._list_page(kwargs)
        except StorageError as exc:
            if not _refused_optional_attributes(exc):
                raise
            del kwargs["OptionalObjectAttributes"]
            resp = await self._list_page(kwargs)
        found: list[ObjectHead] = []
        while True:
            found.extend(_listed_object(item) for item in resp.get("Contents", []))
            token = resp.get("NextContinuationToken")
            if (limit is not None and len(found) >= limit) or not resp.get("IsTruncated") or not token:
                return found if limit is None else found[:limit]
            kwargs["ContinuationToken"] = token
            resp = await self._list_page(kwargs)

    async def list_keys(self, prefix: str, *, max_pages: int) -> frozenset[str] | None:
        """Every key under `prefix`, or None when there are more than `max_pages` listing pages of them."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": LIST_PAGE_SIZE}
        keys: set[str] = set()
        for _ in range(max_pages):
            resp = await self._list_page(kwargs)
            keys.update(item["Key"] for item in resp.get("Contents", []))
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                return frozenset(keys)
            kwargs["ContinuationToken"] = token
        return None

    async def _list_page(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        page = dict(kwargs)
        try:
            return await self.request("list objects in", None, lambda: self.client.list_objects_v2(**page))
        except UploadError as exc:
            # Nothing of a listing can be skipped and go on: whatever stopped it stops the command.
            raise S3StorageError(str(exc), answer=answer_of(exc)) from exc.__cause__


def _refused_optional_attributes(exc: StorageError) -> bool:
    """Whether a failed listing with OptionalObjectAttributes is worth asking again without it: an old botocore
    that does not know the parameter, or a server that refuses it; not a missing bucket or bad credentials."""
    if isinstance(exc.__cause__, ParamValidationError):
        return True
    answer = answer_of(exc)
    if answer is None:
        return False
    if answer.code in TRANSIENT_CODES or answer.status >= 500:
        return False  # the retries are spent: asking again differently would not help
    return answer.code == "AccessDenied" or answer.status == 403 or answer.code not in RUN_WIDE_CODES


def _listed_object(item: Mapping[str, Any]) -> ObjectHead:
    status = item.get("RestoreStatus")
    restore = None
    if status:
        restore = RestoreState(ongoing=bool(status.get("IsRestoreInProgress")), expiry=status.get("RestoreExpiryDate"))
    return ObjectHead(
        key=item["Key"],
        size=int(item.get("Size", 0)),
        etag=normalise_etag(item.get("ETag")),
        storage_class=item.get("StorageClass") or "STANDARD",
        last_modified=item.get("LastModified"),
        restore=restore,
    )
