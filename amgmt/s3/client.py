"""S3Bucket: one bucket on one endpoint through one shared aiobotocore client (and the direct transport where it
works): connect, bucket checks, HEAD, read-back and ranged GETs, listings, restore, delete, single PUTs.

Every request goes through `request` (translate_errors + the RetryPolicy); botocore's own retries are off. Must not
know entries, records or the completed dir; the multipart loop is multipart.py's.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aioboto3
import anyio
from aiobotocore.config import AioConfig

from amgmt import checksums
from amgmt.errors import ConfigError, ObjectExistsError, StorageError, UploadError, VerificationError
from amgmt.parts import normalise_etag
from amgmt.s3 import reservation
from amgmt.s3.bandwidth import Bandwidth
from amgmt.s3.direct import DirectRequests
from amgmt.s3.errors import (
    NO_UPLOAD_CODES,
    NOT_FOUND_CODES,
    STORAGE_CLASS_CODES,
    S3Failure,
    S3UploadError,
    answer_of,
    has_code,
    translate_errors,
)
from amgmt.s3.listing import BucketListings
from amgmt.s3.probe import ChecksumSupport, probe_checksums
from amgmt.s3.retry import RETRY_POLICY, RetryPolicy
from amgmt.s3.values import (
    RESTORE_TIERS,
    ClientOptions,
    ObjectHead,
    ObjectInfo,
    ProgressCallback,
    UploadStats,
    parse_restore,
)

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024
_T = TypeVar("_T")


class S3Bucket(BucketListings):
    """One bucket on one endpoint, through one shared aiobotocore client."""

    def __init__(
        self,
        client: Any,
        options: ClientOptions,
        direct: DirectRequests | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.options = options
        self.bucket = options.bucket
        self.retry = retry if retry is not None else RETRY_POLICY
        self._direct = direct  # HEAD and single PUT without botocore's per-call cost, once proven to work
        self._conditional_put = True  # until the endpoint answers 501 to If-None-Match
        self._checksums: ChecksumSupport | None = None  # probed at the first upload, then kept (probe.py)
        self._checksums_lock = anyio.Lock()
        # MGMT_BWLIMIT: one bucket for every body sent through this connection (a run has one)
        self.bandwidth = Bandwidth(options.bwlimit) if options.bwlimit else None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, options: ClientOptions) -> AsyncIterator[S3Bucket]:
        config = AioConfig(
            max_pool_connections=options.max_connections,
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            # One request per botocore call: amgmt's RetryPolicy is the only one (see retry.py for the bound).
            retries={"mode": "standard", "total_max_attempts": 1},
            # botocore computes no checksum of its own: amgmt sends those it computed while packing (probe.py says
            # which the endpoint keeps), so no body is hashed again here, nor again on every retry.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # botocore hashes every body with SHA-256 for SigV4 over plain HTTP (0.4-0.6 CPU-s/GiB on the event loop
            # thread, measured); unsigned, as botocore does over HTTPS, the body is still checked by its Content-MD5.
            s3={"addressing_style": options.addressing_style, "payload_signing_enabled": options.payload_signing},
        )
        with translate_errors("connect to", bucket=options.bucket):
            keys = options.local_credentials
            session = aioboto3.Session(
                profile_name=options.profile,
                aws_access_key_id=keys[0] if keys else None,
                aws_secret_access_key=keys[1] if keys else None,
            )
            region = options.region or session.region_name or "us-east-1"
            async with session.client(
                "s3", endpoint_url=options.endpoint_url, region_name=region, config=config
            ) as client:
                credentials = await session.get_credentials()
                direct = DirectRequests(client, options, credentials, region) if credentials is not None else None
                try:
                    yield cls(client, options, direct)
                finally:
                    if direct is not None:
                        await direct.close()

    async def request(
        self,
        action: str,
        key: str | None,
        call: Callable[[], Awaitable[_T]],
        *,
        stats: UploadStats | None = None,
        final_codes: frozenset[str] = frozenset(),
    ) -> _T:
        """One S3 request, its errors translated, sent again by the RetryPolicy while its failure is transient;
        `stats.retries` counts the requests sent again. A failure with one of `final_codes` is not sent again: the
        answer sought by a request made to be refused (the checksum probe's wrong values: BadDigest, otherwise
        taken for a body corrupted in transit)."""

        async def attempt() -> _T:
            try:
                with translate_errors(action, bucket=self.bucket, key=key):
                    return await call()
            except S3Failure as exc:
                if final_codes and has_code(exc, final_codes):
                    exc.transient = False
                raise

        def count() -> None:
            if stats is not None:
                stats.retries += 1

        return await self.retry.run(attempt, on_retry=count)

    async def checksum_support(self) -> ChecksumSupport:
        """The flexible checksum uploads to this bucket send and verify by: probed once, at the first call."""
        if self._checksums is None:
            async with self._checksums_lock:
                if self._checksums is None:
                    options = self.options
                    self._checksums = await probe_checksums(self, options.checksum_algorithm, options.probe_key_base)
        return self._checksums

    async def direct(self) -> DirectRequests | None:
        """The direct transport when it has proven to work on this endpoint, else None (botocore does it)."""
        if self._direct is not None and await self._direct.usable():
            return self._direct
        return None

    # -- the bucket --------------------------------------------------------------------------------------------

    async def check_bucket(self) -> None:
        """Fail fast (StorageError) when the bucket is missing, the credentials are wrong or the endpoint is down."""
        try:
            await self.request("access", None, lambda: self.client.head_bucket(Bucket=self.bucket))
        except UploadError as exc:
            # The run's first request: whatever stops it (a read timeout, a 400 without a body for a refused session
            # token, a server that does not speak S3) would stop every entry alike.
            hint = " (check the endpoint, the AWS credentials and session token, and MGMT_READ_TIMEOUT)"
            raise StorageError(f"{exc}{hint}") from exc.__cause__

    async def create_bucket(self) -> None:
        """Create the bucket (used for the embedded local server); an existing bucket of ours is fine."""
        try:
            await self.request("create bucket", None, lambda: self.client.create_bucket(Bucket=self.bucket))
        except (StorageError, UploadError) as exc:
            if not has_code(exc, {"BucketAlreadyOwnedByYou"}):
                raise

    # -- one object --------------------------------------------------------------------------------------------

    async def head(
        self, key: str, *, stats: UploadStats | None = None, checksum_mode: bool = False
    ) -> dict[str, Any] | None:
        """The raw HEAD response (botocore's keys, whichever transport sent it); None when there is no such key.
        `checksum_mode`: the object's flexible checksum too (x-amz-checksum-mode: ENABLED)."""
        direct = await self.direct()
        mode = {"ChecksumMode": "ENABLED"} if checksum_mode else {}
        call = (
            (lambda: direct.head(key, checksum_mode=checksum_mode))
            if direct is not None
            else (lambda: self.client.head_object(Bucket=self.bucket, Key=key, **mode))
        )
        try:
            return await self.request("HEAD", key, call, stats=stats)
        except UploadError as exc:
            if has_code(exc, NOT_FOUND_CODES):
                return None
            raise

    async def head_object(self, key: str, *, checksum: str | None = None) -> ObjectInfo | None:
        """The object's size, ETag, storage class and metadata (and with `checksum`, its flexible checksum of that
        algorithm); None when there is no such key."""
        return await self.describe_object(key, checksum=checksum)

    async def describe_object(self, key: str, *, checksum: str | None = None) -> ObjectHead | None:
        """HEAD with what a download or a status needs (restore state, archive tier, content type); None when there
        is no such key."""
        resp = await self.head(key, checksum_mode=checksum is not None)
        if resp is None:
            return None
        return ObjectHead(
            key=key,
            size=int(resp.get("ContentLength", 0)),
            etag=normalise_etag(resp.get("ETag")),
            storage_class=resp.get("StorageClass") or "STANDARD",
            metadata={k.lower(): v for k, v in (resp.get("Metadata") or {}).items()},
            last_modified=resp.get("LastModified"),
            restore=parse_restore(resp.get("Restore")),
            archive_status=resp.get("ArchiveStatus"),
            content_type=resp.get("ContentType"),
            checksum=checksums.from_response(resp, checksum) if checksum else None,
            encryption=resp.get("ServerSideEncryption"),
        )

    async def first_part_size(self, key: str) -> tuple[int, int] | None:
        """(size of part 1, number of parts) of a multipart object, from a HEAD of part 1; None when the server
        does not say (a single-part object, or no PartNumber support)."""
        try:
            resp = await self.request(
                "HEAD part 1 of", key, lambda: self.client.head_object(Bucket=self.bucket, Key=key, PartNumber=1)
            )
        except UploadError as exc:
            if has_code(exc, NOT_FOUND_CODES):
                return None
            raise
        parts = resp.get("PartsCount")
        if not parts:
            return None
        return int(resp.get("ContentLength", 0)), int(parts)

    async def object_sha256(
        self, key: str, *, on_progress: ProgressCallback | None = None, if_match: str | None = None
    ) -> str:
        """Read the object back (streamed, bounded memory) and return its SHA-256; with `if_match` (an ETag) only
        that very object (UploadError if the key holds another one now). The GET is retried; a body cut short while
        it streams fails (transient) for the caller to decide, as its bytes were already counted."""
        digest = hashlib.sha256()
        condition = {"IfMatch": f'"{if_match}"'} if if_match else {}
        resp = await self.request(
            "read back", key, lambda: self.client.get_object(Bucket=self.bucket, Key=key, **condition)
        )
        with translate_errors("read back", bucket=self.bucket, key=key):
            body = resp["Body"]
            async with body:
                async for chunk in body.iter_chunks(READ_CHUNK):
                    digest.update(chunk)
                    if on_progress:
                        on_progress(len(chunk))
        return digest.hexdigest()

    async def get_range(self, key: str, offset: int, length: int, *, if_match: str | None = None) -> bytes:
        """`length` bytes of the object from `offset`; with `if_match` (an ETag), only from that very object. The
        GET and the reading of its body are one attempt: a body cut short is sent again like a server error."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Range": f"bytes={offset}-{offset + length - 1}"}
        if if_match:
            kwargs["IfMatch"] = f'"{if_match}"'

        async def get() -> bytes:
            resp = await self.client.get_object(**kwargs)
            async with resp["Body"] as body:
                if self.bandwidth is None:
                    data = bytes(await body.read())
                else:
                    data = await self.bandwidth.read(resp["Body"], length)  # the StreamingBody, read in chunks
            if len(data) != length:
                raise S3UploadError(
                    f"GET s3://{self.bucket}/{key} returned {len(data)} bytes for a range of {length} at {offset}",
                    transient=True,
                )
            return data

        try:
            return await self.request("GET", key, get)
        except UploadError as exc:
            answer = answer_of(exc)
            if if_match and answer is not None and answer.status == 412:
                raise VerificationError(
                    f"s3://{self.bucket}/{key} changed during the download (its ETag is no longer {if_match})"
                ) from exc.__cause__
            raise

    async def restore_object(self, key: str, *, tier: str, days: int | None) -> str:
        """Ask for a readable copy of an archived object for `days` days (None for archived INTELLIGENT_TIERING,
        which takes no Days). Returns "started" (HTTP 202), "restored" (200: a copy exists; its expiry is moved)
        or "in-progress" (409 RestoreAlreadyInProgress)."""
        if tier not in RESTORE_TIERS:
            raise ConfigError(f"restore tier {tier!r}: expected one of {', '.join(RESTORE_TIERS)}")
        request: dict[str, Any] = {"GlacierJobParameters": {"Tier": tier}}
        if days is not None:
            request["Days"] = days
        try:
            resp = await self.request(
                "restore", key, lambda: self.client.restore_object(Bucket=self.bucket, Key=key, RestoreRequest=request)
            )
        except UploadError as exc:
            if has_code(exc, {"RestoreAlreadyInProgress"}):
                return "in-progress"
            raise
        status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 202)
        return "restored" if status == 200 else "started"

    async def delete_object(self, key: str) -> None:
        """Delete the object (on a versioned bucket: add a delete marker). S3 answers success for a missing key."""
        await self.request("DELETE", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    async def put_bytes(
        self,
        key: str,
        data: bytearray,
        content_md5: str | None,
        extra: Mapping[str, Any],
        *,
        storage_class: str | None,
        stats: UploadStats,
        if_absent: bool,
        checksum: tuple[str, str] | None = None,
        payload_sha256: str | None = None,
    ) -> Any:
        """The object in one PUT, retried; create-if-absent (If-None-Match: *) when asked, unless the endpoint has
        answered 501 to that before (then a plain PUT, here and for the rest of the run). `checksum`: (algorithm,
        header value) of a flexible checksum for the server to check; `payload_sha256`: the body's SHA-256 (hex)
        when already known, for the payload signature (not computed again). `content_md5` None: no Content-MD5
        (the flexible checksum proves the body)."""
        direct = await self.direct()
        if checksum is not None:
            extra = {**extra, **checksums.request_fields(*checksum)}
        md5 = {"ContentMD5": content_md5} if content_md5 is not None else {}

        async def send(conditional: bool) -> Any:
            fields = {**extra, "IfNoneMatch": "*"} if conditional else dict(extra)
            if direct is not None:
                call = lambda: direct.put(key, data, content_md5, fields, payload_sha256=payload_sha256)  # noqa: E731
            else:
                call = lambda: self.client.put_object(  # noqa: E731
                    Bucket=self.bucket, Key=key, Body=data, **md5, **fields
                )
            return await self.creating(storage_class, "PUT", key, call, stats=stats)

        conditional = if_absent and self._conditional_put
        try:
            return await send(conditional)
        except UploadError as exc:
            if conditional and has_code(exc, {"PreconditionFailed"}, 412):
                raise ObjectExistsError(f"s3://{self.bucket}/{key} was created meanwhile") from exc
            if not conditional or not has_code(exc, {"NotImplemented"}, 501):
                raise
        self._conditional_put = False  # an endpoint without conditional writes (the caller looked first)
        return await send(False)

    async def creating(
        self,
        storage_class: str | None,
        action: str,
        key: str,
        call: Callable[[], Awaitable[_T]],
        *,
        stats: UploadStats,
    ) -> _T:
        """`request` for the request that creates the object (PUT, create multipart upload). A storage class the
        endpoint has no placement for (radosgw: InvalidArgument; AWS: InvalidStorageClass) would fail every entry
        of the run alike, so it stops the run (StorageError) with one message naming the setting."""
        try:
            return await self.request(action, key, call, stats=stats)
        except UploadError as exc:
            answer = answer_of(exc)
            if storage_class and answer is not None and answer.code in STORAGE_CLASS_CODES:
                raise StorageError(
                    f"{action} s3://{self.bucket}/{key} was refused ({answer.describe()}) with storage class"
                    f" {storage_class}: the endpoint does not offer it; set MGMT_STORAGE_CLASS (--storage-class)"
                    " to a class it supports, or leave it unset for the bucket's default"
                ) from exc.__cause__
            raise

    async def release_reservation(self, key: str, owners: set[str]) -> None:
        """Remove the reservation of `key` by one of `owners` (see reservation.release)."""
        await reservation.release(self, key, owners)

    # -- multipart uploads -------------------------------------------------------------------------------------

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self.request(
            "abort multipart upload of",
            key,
            lambda: self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id),
        )

    async def list_parts(self, key: str, upload_id: str) -> dict[int, dict[str, Any]] | None:
        """The parts the server holds for an open multipart upload; None when the upload no longer exists."""
        parts: dict[int, dict[str, Any]] = {}
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
        try:
            while True:
                resp = await self.request("list parts of", key, lambda: self.client.list_parts(**kwargs))
                for part in resp.get("Parts", []):
                    parts[int(part["PartNumber"])] = part
                if not resp.get("IsTruncated"):
                    return parts
                kwargs["PartNumberMarker"] = resp["NextPartNumberMarker"]
        except UploadError as exc:
            if has_code(exc, NO_UPLOAD_CODES):
                return None
            raise
