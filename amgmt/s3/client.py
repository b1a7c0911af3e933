"""The S3 boundary: client configuration, the multipart upload loop, HEAD, read-back, abort, error translation.

The only module that imports aioboto3/aiobotocore/botocore; everything else sees `S3Bucket`, `ObjectInfo` and
amgmt's own errors. It knows nothing of entries, records or the completed dir.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import html
import logging
import random
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import aioboto3
import aiohttp
import anyio
import anyio.to_thread
import yarl
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from amgmt.errors import AmgmtError, ConfigError, ObjectExistsError, StorageError, UploadError, VerificationError
from amgmt.parts import md5_base64, normalise_etag, part_ranges
from amgmt.config import Settings
from amgmt.s3.sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, Keys, Signer, encode_path

log = logging.getLogger(__name__)

# S3 error codes no other entry of the batch can escape: stop the run.
RUN_WIDE_CODES = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AccountProblem",
        "InvalidBucketName",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
    }
)
METADATA_SOURCE_SHA256 = "amgmt-source-sha256"
METADATA_ARCHIVE_SHA256 = "amgmt-archive-sha256"
METADATA_SOURCE_SIZE = "amgmt-source-size"
# An empty object that holds a key while its multipart upload runs: its value is the owning operation id. Made with a
# create-if-absent PUT (honoured by AWS, moto and radosgw 16.2, unlike If-None-Match on CompleteMultipartUpload,
# which radosgw ignores), so of two uploads to one key only one gets to send its parts.
METADATA_RESERVATION = "amgmt-reservation"
# Errors worth another attempt of the same request: throttling, server hiccups, a body corrupted in transit.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "BadDigest",
        "IncompleteBody",
        "500",
        "502",
        "503",
        "504",
    }
)
# What a store answers to a storage class it does not offer (AWS; radosgw says InvalidArgument, with no message).
STORAGE_CLASS_CODES = frozenset({"InvalidStorageClass", "InvalidArgument"})
READ_CHUNK = 1024 * 1024
LIST_PAGE_SIZE = 1000  # ListObjectsV2's own maximum per page
ABORT_TIMEOUT = 15.0
PART_ATTEMPTS = 5  # ours, around botocore's own retries (which cover most transient errors already)
DIRECT_ATTEMPTS = 8  # ours alone, for requests without botocore (DirectRequests): up to ~30 s of backoff
BACKOFF_BASE = 0.25
BACKOFF_CAP = 8.0

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class ClientOptions:
    """How to reach the store; built from Settings by the caller."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    checksum_mode: str = "when_supported"  # or "when_required"
    payload_signing: bool = False  # see Settings.payload_signing
    addressing_style: str = "auto"
    max_connections: int = 32
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_attempts: int = 5
    # Only for the embedded local server, whose fixed keys are not secrets; real credentials come from the AWS chain.
    local_credentials: tuple[str, str] | None = field(default=None, repr=False)


    @classmethod
    def from_settings(cls, settings: Settings, *, max_connections: int = 16) -> ClientOptions:
        if not settings.bucket:
            raise ConfigError("no bucket configured: set MGMT_BUCKET or pass --bucket")
        return cls(
            bucket=settings.bucket,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
            profile=settings.profile,
            checksum_mode=settings.checksum_mode,
            payload_signing=settings.payload_signing,
            addressing_style=settings.addressing_style,
            max_connections=max_connections,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
        )


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # normalised: no quotes, lower case
    storage_class: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    last_modified: datetime | None = None




# Storage classes whose objects must be restored (a temporary copy made readable) before a GET.
ARCHIVE_STORAGE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
RESTORE_TIERS = ("Standard", "Bulk", "Expedited")
_RESTORE_FIELD = re.compile(r'([a-z-]+)="([^"]*)"')
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


@dataclass(frozen=True)
class RestoreState:
    """An archived object's restore, from the `x-amz-restore` header of a HEAD or a listing's RestoreStatus."""

    ongoing: bool  # True while the copy is being made; False once it is readable
    expiry: datetime | None = None  # when the readable copy goes away again


@dataclass(frozen=True)
class ObjectHead(ObjectInfo):
    """ObjectInfo plus what a download or a status needs: restore state, archive tier, content type."""

    restore: RestoreState | None = None  # None: no restore was asked for (or it expired)
    archive_status: str | None = None  # INTELLIGENT_TIERING archive tiers: ARCHIVE_ACCESS | DEEP_ARCHIVE_ACCESS
    content_type: str | None = None

    @property
    def needs_restore(self) -> bool:
        """True when a GET would fail until a restore completes (GLACIER, DEEP_ARCHIVE, archived tiering)."""
        archived = self.storage_class in ARCHIVE_STORAGE_CLASSES or self.archive_status is not None
        return archived and (self.restore is None or self.restore.ongoing)


def parse_restore(header: str | None) -> RestoreState | None:
    """`ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"` -> RestoreState; None if absent."""
    if not header:
        return None
    fields = dict(_RESTORE_FIELD.findall(header))
    expiry = None
    if fields.get("expiry-date"):
        with contextlib.suppress(TypeError, ValueError):
            expiry = email.utils.parsedate_to_datetime(fields["expiry-date"])
    return RestoreState(ongoing=fields.get("ongoing-request", "").lower() == "true", expiry=expiry)


class ByteBudget:
    """The bytes of request bodies all uploads of a run may hold in memory at once (parts and single PUTs alike).

    A body larger than the whole budget waits until nothing else is held, then goes alone.
    """

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("the budget must be positive")
        self.limit = limit
        self.held = 0
        self.peak = 0
        self._changed = anyio.Condition()
        self._turn = anyio.Lock()

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        need = min(max(nbytes, 1), self.limit)
        # Bodies reserve in arrival order (anyio's Lock is fair): a large one cannot be starved by small ones.
        async with self._turn, self._changed:
            while self.held + need > self.limit:
                await self._changed.wait()
            self.held += need
            self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with self._changed:
                    self.held -= need
                    self._changed.notify_all()


@dataclass(frozen=True)
class PartDone:
    number: int
    size: int
    md5: str
    etag: str
    checksum: str | None = None  # the part's CRC32 when the endpoint takes checksums


class MultipartJournal(Protocol):
    """Where a multipart upload's progress is written as it happens, so a later run can resume it."""

    async def started(self, upload_id: str) -> None: ...
    async def part_done(self, upload_id: str, part: PartDone) -> None: ...
    async def finished(self, upload_id: str, state: str) -> None: ...


@dataclass
class UploadStats:
    """What one upload cost: requests retried, parts sent, parts found already on the server."""

    retries: int = 0
    parts_sent: int = 0
    parts_reused: int = 0
    bytes_sent: int = 0
    resumed_upload_id: str | None = None


@dataclass(frozen=True)
class UploadResult:
    etag: str  # as returned by the final request (radosgw returns an empty one on complete)
    multipart: bool
    part_count: int
    upload_id: str | None


def _error_code(exc: ClientError) -> tuple[str, int]:
    err = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(err.get("Code") or status or "Unknown")
    return code, status


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        message = exc.response.get("Error", {}).get("Message") or ""
        return f"{code} (HTTP {status}){': ' + message if message else ''}"
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def translate_errors(action: str, *, bucket: str, key: str | None = None) -> Iterator[None]:
    """Turn botocore/aiohttp errors into StorageError (run-wide) or UploadError (this object only)."""
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    try:
        yield
    except ClientError as exc:
        code, status = _error_code(exc)
        text = f"{action} {where} failed: {_describe(exc)}"
        if code in RUN_WIDE_CODES or status == 403 or (code == "404" and key is None):
            if code in ("NoSuchBucket", "404"):
                text = f"bucket {bucket!r} does not exist (or is not visible with these credentials)"
            elif status == 403 or code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
                text += " (check the AWS credentials or profile, and the bucket's permissions)"
            raise StorageError(text) from exc
        error = UploadError(text)
        error.transient = code in TRANSIENT_CODES or (status >= 500 and code != "NotImplemented")
        raise error from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise StorageError(
            "no usable AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile (--profile), "
            "or another source of the standard AWS chain"
        ) from exc
    except ProfileNotFound as exc:
        raise StorageError(f"AWS profile not found: {exc.kwargs.get('profile')}") from exc
    except (EndpointConnectionError, ConnectTimeoutError) as exc:
        # aiobotocore raises EndpointConnectionError for any aiohttp connection error, a connection reset while
        # the body was being sent included: only a failure to connect means the endpoint is unreachable.
        cause = exc.kwargs.get("error")
        if isinstance(exc, EndpointConnectionError) and isinstance(cause, aiohttp.ClientConnectionError) and not (
            isinstance(cause, aiohttp.ClientConnectorError)
        ):
            error = UploadError(f"{action} {where} failed: connection lost: {cause}")
            error.transient = True
            raise error from exc
        raise StorageError(f"cannot reach the S3 endpoint for {where}: {_describe(exc)}") from exc
    except BotoCoreError as exc:  # read timeouts, connections closed mid-request, ...
        error = UploadError(f"{action} {where} failed: {_describe(exc)}")
        error.transient = True
        raise error from exc
    except (OSError, anyio.BrokenResourceError, aiohttp.ClientError) as exc:
        error = UploadError(f"{action} {where} failed: {type(exc).__name__}: {exc}")
        error.transient = True
        raise error from exc


class S3Bucket:
    """One bucket on one endpoint, through one shared aiobotocore client."""

    def __init__(self, client: Any, options: ClientOptions, direct: DirectRequests | None = None) -> None:
        self._client = client
        self.options = options
        self.bucket = options.bucket
        self._direct = direct  # HEAD and single PUT without botocore's per-call cost, once proven to work
        self._conditional_put = True  # until the endpoint answers 501 to If-None-Match

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, options: ClientOptions) -> AsyncIterator[S3Bucket]:
        config = AioConfig(
            max_pool_connections=options.max_connections,
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            # botocore's "max_attempts" counts retries (one more request); "total_max_attempts" counts requests.
            retries={"mode": "standard", "total_max_attempts": options.max_attempts},
            request_checksum_calculation=options.checksum_mode,
            response_checksum_validation=options.checksum_mode,
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

    # -- small calls -------------------------------------------------------------------------------------------

    async def check_bucket(self) -> None:
        """Fail fast (StorageError) when the bucket is missing, the credentials are wrong or the endpoint is down."""
        try:
            with translate_errors("access", bucket=self.bucket):
                await self._client.head_bucket(Bucket=self.bucket)
        except UploadError as exc:
            # The run's first request: whatever stops it (a read timeout, a 400 without a body for a refused session
            # token, a server that does not speak S3) would stop every entry alike.
            hint = " (check the endpoint, the AWS credentials and session token, and MGMT_READ_TIMEOUT)"
            raise StorageError(f"{exc}{hint}") from exc.__cause__

    async def create_bucket(self) -> None:
        """Create the bucket (used for the embedded local server); an existing bucket of ours is fine."""
        try:
            with translate_errors("create bucket", bucket=self.bucket):
                await self._client.create_bucket(Bucket=self.bucket)
        except (StorageError, UploadError) as exc:
            cause = exc.__cause__
            if not (isinstance(cause, ClientError) and _error_code(cause)[0] == "BucketAlreadyOwnedByYou"):
                raise

    async def _head(self, key: str) -> dict[str, Any] | None:
        """The raw HEAD response; None when there is no such key."""
        try:
            direct = self._direct
            if direct is not None and await direct.usable():
                # botocore would retry a transient failure itself: the direct path gets amgmt's retries instead.
                resp: dict[str, Any] = await self._retrying(
                    UploadStats(), "HEAD", key, lambda: direct.head(key), attempts=DIRECT_ATTEMPTS
                )
            else:
                with translate_errors("HEAD", bucket=self.bucket, key=key):
                    resp = await self._client.head_object(Bucket=self.bucket, Key=key)
        except UploadError as exc:
            if _is_not_found(exc):
                return None
            raise
        return resp

    async def head_object(self, key: str) -> ObjectInfo | None:
        """The object's size, ETag, storage class and metadata; None when there is no such key."""
        return await self.describe_object(key)

    async def object_sha256(
        self, key: str, *, on_progress: ProgressCallback | None = None, if_match: str | None = None
    ) -> str:
        """Read the object back (streamed, bounded memory) and return its SHA-256; with `if_match` (an ETag) only
        that very object (UploadError if the key holds another one now)."""
        digest = hashlib.sha256()
        condition = {"IfMatch": f'"{if_match}"'} if if_match else {}
        with translate_errors("read back", bucket=self.bucket, key=key):
            resp = await self._client.get_object(Bucket=self.bucket, Key=key, **condition)
            body = resp["Body"]
            async with body:
                async for chunk in body.iter_chunks(READ_CHUNK):
                    digest.update(chunk)
                    if on_progress:
                        on_progress(len(chunk))
        return digest.hexdigest()

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        with translate_errors("abort multipart upload of", bucket=self.bucket, key=key):
            await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    async def list_multipart_uploads(self, prefix: str = "") -> list[dict[str, Any]]:
        """Unfinished multipart uploads under a prefix: [{"key", "upload_id", "initiated"}]."""
        found: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        with translate_errors("list multipart uploads in", bucket=self.bucket):
            while True:
                resp = await self._client.list_multipart_uploads(**kwargs)
                for item in resp.get("Uploads", []):
                    found.append(
                        {"key": item["Key"], "upload_id": item["UploadId"], "initiated": item.get("Initiated")}
                    )
                if not resp.get("IsTruncated"):
                    return found
                kwargs["KeyMarker"] = resp.get("NextKeyMarker")
                kwargs["UploadIdMarker"] = resp.get("NextUploadIdMarker")

    async def describe_object(self, key: str) -> ObjectHead | None:
        """HEAD with what a download or a status needs (restore state, archive tier, content type); None when there
        is no such key."""
        resp = await self._head(key)
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
        )

    async def first_part_size(self, key: str) -> tuple[int, int] | None:
        """(size of part 1, number of parts) of a multipart object, from a HEAD of part 1; None when the server
        does not say (a single-part object, or no PartNumber support)."""
        try:
            with translate_errors("HEAD part 1 of", bucket=self.bucket, key=key):
                resp = await self._client.head_object(Bucket=self.bucket, Key=key, PartNumber=1)
        except UploadError as exc:
            if _is_not_found(exc):
                return None
            raise
        parts = resp.get("PartsCount")
        if not parts:
            return None
        return int(resp.get("ContentLength", 0)), int(parts)

    async def get_range(self, key: str, offset: int, length: int, *, if_match: str | None = None) -> bytes:
        """`length` bytes of the object from `offset`; with `if_match` (an ETag), only from that very object."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Range": f"bytes={offset}-{offset + length - 1}"}
        if if_match:
            kwargs["IfMatch"] = f'"{if_match}"'
        try:
            with translate_errors("GET", bucket=self.bucket, key=key):
                resp = await self._client.get_object(**kwargs)
                async with resp["Body"] as body:
                    data = await body.read()
        except UploadError as exc:
            cause = exc.__cause__
            if if_match and isinstance(cause, ClientError) and _error_code(cause)[1] == 412:
                raise VerificationError(
                    f"s3://{self.bucket}/{key} changed during the download (its ETag is no longer {if_match})"
                ) from cause
            raise
        if len(data) != length:
            error = UploadError(
                f"GET s3://{self.bucket}/{key} returned {len(data)} bytes for a range of {length} at {offset}"
            )
            error.transient = True
            raise error
        return bytes(data)

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
            with translate_errors("restore", bucket=self.bucket, key=key):
                resp = await self._client.restore_object(Bucket=self.bucket, Key=key, RestoreRequest=request)
        except UploadError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and _error_code(cause)[0] == "RestoreAlreadyInProgress":
                return "in-progress"
            raise
        status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 202)
        return "restored" if status == 200 else "started"

    async def delete_object(self, key: str) -> None:
        """Delete the object (on a versioned bucket: add a delete marker). S3 answers success for a missing key."""
        with translate_errors("DELETE", bucket=self.bucket, key=key):
            await self._client.delete_object(Bucket=self.bucket, Key=key)

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
            if not _refused_optional_attributes(exc.__cause__):
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
        try:
            with translate_errors("list objects in", bucket=self.bucket):
                return await self._client.list_objects_v2(**kwargs)  # type: ignore[no-any-return]
        except UploadError as exc:
            # Nothing of a listing can be skipped and go on: whatever stopped it stops the command.
            raise StorageError(str(exc)) from exc.__cause__

    # -- uploads -----------------------------------------------------------------------------------------------

    def _extra_args(self, metadata: Mapping[str, str], storage_class: str | None) -> dict[str, Any]:
        extra: dict[str, Any] = {"Metadata": dict(metadata), "ContentType": "application/gzip"}
        if storage_class:
            extra["StorageClass"] = storage_class
        return extra

    async def upload_file(
        self,
        key: str,
        path: str,
        *,
        size: int,
        part_size: int,
        part_md5s: Sequence[str],
        metadata: Mapping[str, str],
        storage_class: str | None,
        budget: ByteBudget,
        on_progress: ProgressCallback | None = None,
        journal: MultipartJournal | None = None,
        resume_upload_id: str | None = None,
        stats: UploadStats | None = None,
        if_absent: bool = False,
        owner: str = "",
        takeover: str | None = None,
    ) -> UploadResult:
        """Upload a local file as `key`: one PUT when it is a single part, else our own multipart loop.

        Every request carries Content-MD5 (so a real server rejects a corrupted body) and is retried with
        exponential backoff and jitter when the failure is transient. Parts are read in worker threads and sent
        concurrently, each holding its size in the shared byte `budget` while its bytes are in memory, so the
        memory of all uploads of a run is bounded by the budget, whatever the file sizes.

        Multipart progress goes to `journal` as it happens. With `resume_upload_id`, the server's parts are listed
        and those whose ETag equals our part MD5 are kept; only the others are sent. On an error the upload is
        aborted (shielded, time-bounded); on cancellation it is left open for a later run to resume (`amgmt
        cleanup` aborts what nobody resumes).

        With `if_absent`, a single PUT only creates the object (If-None-Match: *: documented for AWS S3, tested
        here on radosgw 16.2 and moto 5.2) and raises ObjectExistsError when the key is taken; an endpoint that
        answers 501 to it gets plain PUTs from then on. A multipart upload with `if_absent` first reserves the key
        for `owner` (an empty object made create-if-absent, see METADATA_RESERVATION; ObjectExistsError when the key
        is taken); `takeover` names the owner of an earlier reservation the caller has proven its own. Before
        CompleteMultipartUpload the key must still hold that reservation (else UploadError: somebody else wrote it,
        and it is not overwritten), and the complete is sent If-Match its ETag where the server honours that (AWS).
        A failed or cancelled upload removes its reservation again; one killed with SIGKILL leaves it for the next
        run to take over (or `amgmt cleanup` to remove).
        """
        stats = stats if stats is not None else UploadStats()
        ranges = part_ranges(size, part_size)
        if len(ranges) != len(part_md5s):
            raise UploadError(f"{path}: {len(part_md5s)} part checksums for {len(ranges)} parts")
        extra = self._extra_args(metadata, storage_class)
        if len(ranges) == 1:
            async with budget.hold(size):
                data = await _read_range(path, 0, size)
                resp = await self._put_whole(key, data, md5_base64(part_md5s[0]), extra, storage_class, stats,
                                             if_absent=if_absent)
            stats.parts_sent += 1
            stats.bytes_sent += size
            if on_progress:
                on_progress(size)
            return UploadResult(etag=normalise_etag(resp.get("ETag")), multipart=False, part_count=1, upload_id=None)

        use_crc = self.options.checksum_mode == "when_supported"
        if use_crc:
            # botocore adds a CRC32 to every part in this mode; declaring it lets S3 keep the full-object checksum.
            extra["ChecksumAlgorithm"] = "CRC32"
        completed: dict[int, dict[str, Any]] = {}
        upload_id = None
        if resume_upload_id:
            on_server = await self.list_parts(key, resume_upload_id)
            if on_server is not None:
                upload_id = resume_upload_id
                stats.resumed_upload_id = upload_id
                for number, offset, length in ranges:
                    found = on_server.get(number)
                    if found and normalise_etag(found["ETag"]) == part_md5s[number - 1] and found["Size"] == length:
                        completed[number] = {"PartNumber": number, "ETag": found["ETag"]}
                        if use_crc and found.get("ChecksumCRC32"):
                            completed[number]["ChecksumCRC32"] = found["ChecksumCRC32"]
                        stats.parts_reused += 1
                        if on_progress:
                            on_progress(length)
        reserved_by = {owner, takeover} - {None, ""} if (if_absent or takeover) else set()
        if if_absent:  # a resumed upload too: its reservation was released when it was cancelled
            await self._reserve(key, owner, stats)
        if upload_id is None:
            created = await self._retrying_create(
                storage_class,
                stats,
                "create multipart upload of",
                key,
                lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra),
            )
            upload_id = created["UploadId"]
            if journal:
                await journal.started(upload_id)

        async def send_part(number: int, offset: int, length: int) -> None:
            async with budget.hold(length):
                data = await _read_range(path, offset, length)
                kwargs: dict[str, Any] = {"ChecksumAlgorithm": "CRC32"} if use_crc else {}
                resp = await self._retrying(
                    stats,
                    f"upload part {number} of",
                    key,
                    lambda: self._client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=data,
                        ContentMD5=md5_base64(part_md5s[number - 1]),
                        **kwargs,
                    ),
                )
                del data
            part: dict[str, Any] = {"PartNumber": number, "ETag": resp["ETag"]}
            if use_crc and resp.get("ChecksumCRC32"):
                part["ChecksumCRC32"] = resp["ChecksumCRC32"]
            completed[number] = part
            stats.parts_sent += 1
            stats.bytes_sent += length
            if journal:
                done = PartDone(number, length, part_md5s[number - 1], normalise_etag(resp["ETag"]),
                                part.get("ChecksumCRC32"))
                await journal.part_done(upload_id, done)
            if on_progress:
                on_progress(length)

        try:
            try:
                # Parts of one upload go out concurrently; the shared budget, not this group, bounds how many.
                async with anyio.create_task_group() as tg:
                    for number, offset, length in ranges:
                        if number not in completed:
                            tg.start_soon(send_part, number, offset, length)
            except BaseExceptionGroup as group:
                raise first_error(group) from None
            condition: dict[str, str] = {}
            if reserved_by:
                condition["IfMatch"] = await self._reservation_etag(key, reserved_by)
            done = await self._retrying(
                stats,
                "complete multipart upload of",
                key,
                lambda: self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": [completed[n] for n in sorted(completed)]},
                    **condition,
                ),
            )
        except anyio.get_cancelled_exc_class():
            # Left open and journaled: a later run resumes it (and reserves the key again). The key is not left
            # holding an empty object meanwhile.
            with anyio.move_on_after(ABORT_TIMEOUT, shield=True):
                with contextlib.suppress(Exception):
                    await self.release_reservation(key, reserved_by)
            raise
        except BaseException:
            with anyio.move_on_after(ABORT_TIMEOUT, shield=True):
                with contextlib.suppress(Exception):
                    await self.abort_multipart(key, upload_id)
                if journal:
                    with contextlib.suppress(Exception):
                        await journal.finished(upload_id, "aborted")
                with contextlib.suppress(Exception):
                    await self.release_reservation(key, reserved_by)
            raise
        if journal:
            await journal.finished(upload_id, "completed")
        return UploadResult(
            etag=normalise_etag(done.get("ETag")), multipart=True, part_count=len(ranges), upload_id=upload_id
        )

    async def _put_whole(
        self,
        key: str,
        data: bytearray,
        content_md5: str,
        extra: Mapping[str, Any],
        storage_class: str | None,
        stats: UploadStats,
        *,
        if_absent: bool,
    ) -> Any:
        """The object in one PUT, retried; create-if-absent (If-None-Match: *) when asked, unless the endpoint has
        answered 501 to that before (then a plain PUT, here and for the rest of the run)."""
        attempts = DIRECT_ATTEMPTS if self._direct is not None and await self._direct.usable() else PART_ATTEMPTS

        async def send(conditional: bool) -> Any:
            fields = {**extra, "IfNoneMatch": "*"} if conditional else extra
            return await self._retrying_create(
                storage_class, stats, "PUT", key, lambda: self._put_object(key, data, content_md5, fields),
                attempts=attempts,
            )

        conditional = if_absent and self._conditional_put
        try:
            return await send(conditional)
        except UploadError as exc:
            code, status = _error_code(exc.__cause__) if isinstance(exc.__cause__, ClientError) else ("", 0)
            if conditional and (code == "PreconditionFailed" or status == 412):
                raise ObjectExistsError(f"s3://{self.bucket}/{key} was created meanwhile") from exc
            if not conditional or not (code == "NotImplemented" or status == 501):
                raise
        self._conditional_put = False  # an endpoint without conditional writes (the caller looked first)
        return await send(False)

    async def _reserve(self, key: str, owner: str, stats: UploadStats) -> None:
        """Hold `key` for `owner` with an empty object made create-if-absent; ObjectExistsError when it is taken."""
        await self._put_whole(key, bytearray(), md5_base64(_EMPTY_MD5), {"Metadata": {METADATA_RESERVATION: owner}},
                              None, stats, if_absent=True)

    async def _reservation_etag(self, key: str, owners: set[str]) -> str:
        """The ETag of the reservation of one of `owners` at `key`; UploadError when the key holds anything else
        (another client wrote it while our parts were sent: it is not overwritten)."""
        head = await self._head(key)
        holder = ((head or {}).get("Metadata") or {}).get(METADATA_RESERVATION)
        if head is None or holder not in owners or int(head.get("ContentLength", 0)) != 0:
            raise UploadError(
                f"s3://{self.bucket}/{key} was written by another client while this upload ran; it is not"
                " overwritten (use --overwrite to replace it)"
            )
        return str(head.get("ETag") or "")

    async def release_reservation(self, key: str, owners: set[str]) -> None:
        """Remove the reservation of `key` by one of `owners` (after a failed or cancelled upload; `amgmt cleanup`
        after a crash), only if the key still holds it."""
        if not owners:
            return
        head = await self._head(key)
        holder = ((head or {}).get("Metadata") or {}).get(METADATA_RESERVATION)
        if head is not None and holder in owners and int(head.get("ContentLength", 0)) == 0:
            await self.delete_object(key)

    async def _put_object(self, key: str, data: bytearray, content_md5: str, extra: Mapping[str, Any]) -> Any:
        direct = self._direct
        if direct is not None and await direct.usable():
            return await direct.put(key, data, content_md5, extra)
        return await self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=content_md5, **extra)

    async def list_parts(self, key: str, upload_id: str) -> dict[int, dict[str, Any]] | None:
        """The parts the server holds for an open multipart upload; None when the upload no longer exists."""
        parts: dict[int, dict[str, Any]] = {}
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
        try:
            with translate_errors("list parts of", bucket=self.bucket, key=key):
                while True:
                    resp = await self._client.list_parts(**kwargs)
                    for part in resp.get("Parts", []):
                        parts[int(part["PartNumber"])] = part
                    if not resp.get("IsTruncated"):
                        return parts
                    kwargs["PartNumberMarker"] = resp["NextPartNumberMarker"]
        except UploadError as exc:
            cause = exc.__cause__
            # radosgw answers NoSuchKey (404), not NoSuchUpload, for an upload id it does not know (aborted).
            if isinstance(cause, ClientError) and _error_code(cause)[0] in ("NoSuchUpload", "NoSuchKey", "404"):
                return None
            raise

    async def _retrying_create(
        self, storage_class: str | None, stats: UploadStats, action: str, key: str, call: Callable[[], Any],
        *, attempts: int = PART_ATTEMPTS,
    ) -> Any:
        """`_retrying` for the request that creates the object (PUT, create multipart upload). A storage class the
        endpoint has no placement for (radosgw: InvalidArgument; AWS: InvalidStorageClass) would fail every entry
        of the run alike, so it stops the run (StorageError) with one message naming the setting."""
        try:
            return await self._retrying(stats, action, key, call, attempts=attempts)
        except UploadError as exc:
            cause = exc.__cause__
            if storage_class and isinstance(cause, ClientError) and _error_code(cause)[0] in STORAGE_CLASS_CODES:
                raise StorageError(
                    f"{action} s3://{self.bucket}/{key} was refused ({_describe(cause)}) with storage class"
                    f" {storage_class}: the endpoint does not offer it; set MGMT_STORAGE_CLASS (--storage-class)"
                    " to a class it supports, or leave it unset for the bucket's default"
                ) from cause
            raise

    async def _retrying(
        self, stats: UploadStats, action: str, key: str, call: Callable[[], Any], *, attempts: int = PART_ATTEMPTS
    ) -> Any:
        """One request, tried again with exponential backoff and full jitter while its failure is transient."""
        for attempt in range(1, attempts + 1):
            try:
                with translate_errors(action, bucket=self.bucket, key=key):
                    resp = await call()
            except UploadError as exc:
                # botocore's own retries before it gave up count too (it reports them on error responses only).
                stats.retries += _botocore_retries(exc.__cause__)
                if not exc.transient or attempt == attempts:
                    raise
                stats.retries += 1
                await anyio.sleep(random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)))
                continue
            stats.retries += int(resp.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)
            return resp
        raise AssertionError("unreachable")


_PROBE_KEY = "amgmt-probe"
_EMPTY_MD5 = hashlib.md5(b"").hexdigest()
PROBE_ATTEMPTS = 3
OFF_LOOP_BYTES = 1024 * 1024  # bodies from this size are hashed in a worker thread
_R = TypeVar("_R")
_ERROR_FIELD = re.compile(r"<(Code|Message)>(.*?)</\1>", re.DOTALL)
_EXTRA_HEADERS = {"ContentType": "content-type", "StorageClass": "x-amz-storage-class", "IfNoneMatch": "if-none-match"}


class DirectRequests:
    """HEAD and single-part PUT of objects straight over aiohttp, signed with amgmt.s3.sigv4.

    botocore spends ~1.5-2 ms of CPU per call on the event loop thread (parameter validation, endpoint rules,
    event hooks, user agent, response parsing) for requests that are a few headers each way; on the `small` data
    set those calls were most of amgmt's CPU. A stand-alone comparison against radosgw (500 x (PUT 64 KiB + HEAD)
    at concurrency 8, the same headers both ways): botocore 3.6-4.0 ms of client CPU per pair, plain aiohttp with
    this signing 0.7-0.8 ms.

    Everything botocore decides is still botocore's: the URL of the bucket (path-style or virtual-hosted, from a
    presigned URL it builds), the region and the credentials (the same provider chain, refreshed by it). Before the
    first use the path proves itself with a signed HEAD of the bucket; if that does not answer 200 (another region,
    a private CA, a proxy, anything), it is never used and every call goes through botocore. Errors come back as
    botocore ClientErrors, so `translate_errors` and the retries treat both paths alike.
    """

    def __init__(self, client: Any, options: ClientOptions, credentials: Any, region: str) -> None:
        self._client = client
        self._options = options
        self._credentials = credentials
        self._signer = Signer(region)
        self._session: aiohttp.ClientSession | None = None
        self._origin = ""  # scheme://host[:port]
        self._bucket_path = ""  # "/bucket" (path-style) or "" (virtual-hosted)
        self._host = ""
        self._usable: bool | None = None  # unknown until the probe
        self._lock = anyio.Lock()

    async def usable(self) -> bool:
        if self._usable is None:
            async with self._lock:
                if self._usable is None:
                    self._usable = await self._probe()
        return self._usable

    async def _probe(self) -> bool:
        try:
            url = await self._client.generate_presigned_url(
                "head_object", Params={"Bucket": self._options.bucket, "Key": _PROBE_KEY}, ExpiresIn=60
            )
            parts = urlsplit(url)
            if not parts.path.endswith("/" + _PROBE_KEY) or parts.scheme not in ("http", "https"):
                return False
            self._origin = f"{parts.scheme}://{parts.netloc}"
            self._host = parts.netloc
            self._bucket_path = parts.path[: -len(_PROBE_KEY) - 1]
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._options.max_connections),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._options.connect_timeout, sock_read=self._options.read_timeout
                ),
                auto_decompress=False,
                trust_env=True,
            )
        except Exception as exc:  # any doubt: botocore does it
            log.debug("direct S3 requests not used: %s: %s", type(exc).__name__, exc)
            return False
        for attempt in range(PROBE_ATTEMPTS):  # a server hiccup is not a verdict; a 4xx or 3xx is
            try:
                status, _headers, _body = await self._send("HEAD", self._bucket_path or "/", {})
            except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
                log.debug("direct S3 probe attempt %d: %s: %s", attempt + 1, type(exc).__name__, exc)
                status = 0
            if status == 200:
                return True
            if 0 < status < 500:
                break
            await anyio.sleep(BACKOFF_BASE * 2**attempt)
        log.debug("direct S3 requests not used: HEAD bucket answered %d", status)
        return False

    async def head(self, key: str) -> dict[str, Any]:
        status, headers, body = await self._send("HEAD", self._object_path(key), {})
        if status != 200:
            raise _client_error(status, body, "HeadObject")
        metadata = {name[len("x-amz-meta-"):]: value for name, value in headers.items()
                    if name.lower().startswith("x-amz-meta-")}
        modified = headers.get("Last-Modified")
        return {
            "ContentLength": int(headers.get("Content-Length") or 0),
            "ETag": headers.get("ETag"),
            "StorageClass": headers.get("x-amz-storage-class"),
            "Metadata": metadata,
            "LastModified": email.utils.parsedate_to_datetime(modified) if modified else None,
            "Restore": headers.get("x-amz-restore"),
            "ArchiveStatus": headers.get("x-amz-archive-status"),
            "ContentType": headers.get("Content-Type"),
            "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": 0},
        }

    async def put(self, key: str, body: bytearray, content_md5: str, extra: Mapping[str, Any]) -> dict[str, Any]:
        headers = {"content-md5": content_md5}
        for name, value in extra.items():
            if name == "Metadata":
                headers.update({f"x-amz-meta-{k.lower()}": str(v) for k, v in value.items()})
            else:
                headers[_EXTRA_HEADERS[name]] = str(value)
        crc, payload = await _off_loop(self._body_digests, body)
        if crc is not None:  # what botocore adds to a PutObject in this mode
            headers["x-amz-checksum-crc32"] = crc
            headers["x-amz-sdk-checksum-algorithm"] = "CRC32"
        status, answer, text = await self._send("PUT", self._object_path(key), headers, body, payload=payload)
        if status != 200:
            raise _client_error(status, text, "PutObject")
        return {"ETag": answer.get("ETag"), "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": 0}}

    def _body_digests(self, body: bytearray) -> tuple[str | None, str]:
        """(CRC32 header value or None, SigV4 payload hash) of a body, as the settings ask for them."""
        crc = None
        if self._options.checksum_mode == "when_supported":
            crc = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
        payload = hashlib.sha256(body).hexdigest() if self._options.payload_signing else UNSIGNED_PAYLOAD
        return crc, payload

    def _object_path(self, key: str) -> str:
        return encode_path(f"{self._bucket_path}/{key}")

    async def _send(
        self, method: str, path: str, headers: dict[str, str], body: bytearray | None = None, *,
        payload: str = EMPTY_SHA256,
    ) -> tuple[int, Any, bytes]:
        assert self._session is not None
        frozen = await self._credentials.get_frozen_credentials()
        keys = Keys(frozen.access_key, frozen.secret_key, frozen.token)
        headers["host"] = self._host
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self._signer.sign(method, path, {}, headers, keys=keys, amz_date=amz_date, payload_hash=payload)
        url = yarl.URL(self._origin + path, encoded=True)
        try:
            async with self._session.request(method, url, headers=headers, data=body) as resp:
                text = b"" if method == "HEAD" else await resp.read()
                return resp.status, resp.headers, text
        except aiohttp.ClientConnectorError as exc:  # as botocore says it: the endpoint cannot be reached
            raise EndpointConnectionError(endpoint_url=self._origin, error=exc) from exc
        except TimeoutError as exc:
            raise ReadTimeoutError(endpoint_url=self._origin + path) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _off_loop(function: Callable[[bytearray], _R], body: bytearray) -> _R:
    """`function(body)` in a worker thread when the body is big enough for it to hold up the event loop (hashlib
    and zlib release the GIL), else right here (a thread round trip costs more than hashing a small body)."""
    if len(body) < OFF_LOOP_BYTES:
        return function(body)
    return await anyio.to_thread.run_sync(function, body)


def _client_error(status: int, body: bytes, operation: str) -> ClientError:
    """The error as botocore would raise it: the S3 error code and message of the XML body, or (HEAD, no body) the
    status as the code."""
    fields = {name: html.unescape(value) for name, value in _ERROR_FIELD.findall(body.decode("utf-8", "replace"))}
    error = {"Code": fields.get("Code") or str(status), "Message": fields.get("Message", "")}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def _is_not_found(exc: UploadError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, ClientError) and _error_code(cause)[0] in _NOT_FOUND_CODES


def _botocore_retries(exc: BaseException | None) -> int:
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)
    return 0


def _refused_optional_attributes(exc: BaseException | None) -> bool:
    """Whether a failed listing with OptionalObjectAttributes is worth asking again without it: an old botocore
    that does not know the parameter, or a server that refuses it; not a missing bucket or bad credentials."""
    if isinstance(exc, ParamValidationError):
        return True
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        if code in TRANSIENT_CODES or status >= 500:
            return False  # botocore's retries are spent: asking again differently would not help
        return code == "AccessDenied" or status == 403 or code not in RUN_WIDE_CODES
    return False


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


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The most telling leaf of an exception group: an amgmt error first, then any error, then cancellation."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for wanted in (AmgmtError, Exception):
        for leaf in leaves:
            if isinstance(leaf, wanted):
                return leaf
    return leaves[0]


class _PartBody(bytearray):
    """A part's bytes as sent: a bytearray to botocore (validated, hashed and re-sent on a retry as it is) whose
    slices are memoryviews. aiohttp slices a body to its Content-Length before writing it, which for a plain
    bytearray copies the whole part on the event loop thread (measured with `amgmt benchmark --repeat 3` on
    radosgw, media set: the main process 4.3 -> 3.2 CPU-s per 1.05 GiB, 135 -> 157 MiB/s)."""

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return memoryview(self)[index]
        return super().__getitem__(index)


def _read_file_range(path: str, offset: int, length: int) -> bytearray:
    buffer = _PartBody(length)
    view = memoryview(buffer)
    got = 0
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while got < length:  # one read returns at most ~2 GiB on Linux
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    view.release()
    return buffer if got == length else bytearray(memoryview(buffer)[:got])


async def _read_range(path: str, offset: int, length: int) -> bytearray:
    """A byte range of a file, read in a worker thread straight into the buffer that is sent.

    A bytearray, not bytes: botocore wraps a `bytes` body in a BytesIO, and aiohttp then copies that whole buffer
    (BytesIO.getbuffer unshares it) on the event loop thread; a bytearray goes out as it is. Open, read and close
    happen in one thread call, which anyio waits for even when cancelled, so no file is left open.
    """
    try:
        data = await anyio.to_thread.run_sync(_read_file_range, path, offset, length)
    except OSError as exc:  # the staging archive was removed or became unreadable under the upload
        raise UploadError(f"cannot read the staging archive {path}: {exc.strerror or exc}") from exc
    if len(data) != length:
        raise UploadError(f"{path}: staging archive is shorter than recorded ({offset + len(data)} bytes)")
    return data
