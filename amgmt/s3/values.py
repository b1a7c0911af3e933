"""The small values of the S3 boundary: how to reach the store, what a HEAD or a listing says of an object, what an
upload cost and returned, and the metadata names amgmt writes. Pure data; no I/O, no foreign library."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from amgmt.checksums import StoredChecksum
from amgmt.errors import ConfigError

if TYPE_CHECKING:
    from amgmt.config import Settings

METADATA_SOURCE_SHA256 = "amgmt-source-sha256"
METADATA_ARCHIVE_SHA256 = "amgmt-archive-sha256"
METADATA_SOURCE_SIZE = "amgmt-source-size"
# An empty object that holds a key while its multipart upload runs: its value is the owning operation id. Made with a
# create-if-absent PUT (honoured by AWS, moto and radosgw 16.2, unlike If-None-Match on CompleteMultipartUpload,
# which radosgw ignores), so of two uploads to one key only one gets to send its parts.
METADATA_RESERVATION = "amgmt-reservation"
# Storage classes whose objects must be restored (a temporary copy made readable) before a GET.
ARCHIVE_STORAGE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
RESTORE_TIERS = ("Standard", "Bulk", "Expedited")
LIST_PAGE_SIZE = 1000  # ListObjectsV2's own maximum per page
_RESTORE_FIELD = re.compile(r'([a-z-]+)="([^"]*)"')

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class ClientOptions:
    """How to reach the store; built from Settings by the caller."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    checksum_algorithm: str = "auto"  # see Settings.checksum_algorithm; probed once per connection (probe.py)
    # The start of the checksum probe's short-lived keys: under the run's key prefix, named for the local dir, whose
    # run lock makes every earlier one a leftover of a run that was killed (probe.py removes them).
    probe_key_base: str = ".amgmt-probe-"
    payload_signing: bool = False  # see Settings.payload_signing
    addressing_style: str = "auto"
    max_connections: int = 32
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    bwlimit: int = 0  # bytes per second of all request bodies of the connection (MGMT_BWLIMIT); 0: no limit
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
            checksum_algorithm=settings.checksum_algorithm,
            probe_key_base=probe_key_base(settings.object_prefix, settings.local_dir),
            payload_signing=settings.payload_signing,
            addressing_style=settings.addressing_style,
            max_connections=max_connections,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            bwlimit=settings.bwlimit,
        )


@dataclass(frozen=True)
class ObjectOptions:
    """What every object of a run is written with besides its bytes (MGMT_SSE, MGMT_SSE_KMS_KEY_ID, MGMT_ACL,
    MGMT_TAGS, MGMT_METADATA), sent on a single PUT and on CreateMultipartUpload alike."""

    sse: str | None = None  # "AES256" | "aws:kms"
    sse_kms_key_id: str | None = None
    acl: str | None = None  # a canned ACL
    tags: tuple[tuple[str, str], ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()  # user metadata; amgmt's own names are refused by the settings

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectOptions:
        return cls(
            sse=settings.sse,
            sse_kms_key_id=settings.sse_kms_key_id,
            acl=settings.acl,
            tags=tuple(_pair(item) for item in settings.tags),
            metadata=tuple(_pair(item) for item in settings.metadata),
        )

    def request_fields(self) -> dict[str, Any]:
        """The fields of botocore's put_object / create_multipart_upload (Metadata excepted: the caller merges it)."""
        fields: dict[str, Any] = {}
        if self.sse:
            fields["ServerSideEncryption"] = self.sse
        if self.sse_kms_key_id:
            fields["SSEKMSKeyId"] = self.sse_kms_key_id
        if self.acl:
            fields["ACL"] = self.acl
        if self.tags:
            fields["Tagging"] = urllib.parse.urlencode(self.tags, quote_via=urllib.parse.quote)
        return fields

    def describe(self) -> dict[str, Any]:
        """The options that are set, for the upload record."""
        described: dict[str, Any] = {"sse": self.sse, "sse_kms_key_id": self.sse_kms_key_id, "acl": self.acl}
        described = {name: value for name, value in described.items() if value}
        if self.tags:
            described["tags"] = dict(self.tags)
        if self.metadata:
            described["metadata"] = dict(self.metadata)
        return described


def _pair(item: str) -> tuple[str, str]:
    key, _, value = item.partition("=")
    return key, value


def probe_key_base(prefix: str, local_dir: Path) -> str:
    """`PREFIX/.amgmt-probe-<16 hex digits of SHA-1 of the local dir>-`: a run's probe keys (see ClientOptions)."""
    base = f"{prefix}/" if prefix else ""
    return f"{base}.amgmt-probe-{hashlib.sha1(os.fsencode(local_dir)).hexdigest()[:16]}-"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # normalised: no quotes, lower case
    storage_class: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    last_modified: datetime | None = None
    checksum: StoredChecksum | None = None  # the flexible checksum the object holds, when HEAD asked for it
    encryption: str | None = None  # x-amz-server-side-encryption: "AES256", "aws:kms" (its ETag is then no MD5)


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


@dataclass(frozen=True)
class PartDone:
    number: int
    size: int
    md5: str  # hex; "" when the part was sent without Content-MD5 (its checksum proves it)
    etag: str
    checksum: str | None = None  # the part's flexible checksum (header value) when the upload sends one


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
    checksum: StoredChecksum | None = None  # the whole object's flexible checksum as computed here and sent
