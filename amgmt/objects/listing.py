"""What is where, for `ls` and `search`: the local dir's entries with the state of their last upload, and the objects
under the prefix with the upload that made them. Reads only; never one S3 request per object (a page per 1000).
"""

from __future__ import annotations

import dataclasses
import unicodedata
import urllib.parse
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from amgmt.config import Settings
from amgmt.errors import ConfigError, first_error
from amgmt.local.entries import PlannedEntry, list_entries, plan
from amgmt.models import OperationStatus
from amgmt.naming import display
from amgmt.s3 import ARCHIVE_STORAGE_CLASSES, LIST_PAGE_SIZE, ClientOptions, ObjectHead, S3Bucket
from amgmt.store import StoredMember, UploadSummary, metadata_store, store_exists
from amgmt.text import iso_utc

# The statuses after which the object at the key is the upload's own.
_UPLOADED = frozenset({OperationStatus.SUCCESS, OperationStatus.PARTIAL})
MTIME_TOLERANCE = 0.001  # seconds: the record keeps microseconds, some file systems fewer


class Scope(StrEnum):
    LOCAL = "local"
    S3 = "s3"
    ALL = "all"


class ArchiveState(StrEnum):
    """Where an object of an archive class stands in a listing (the restore itself is s3.client.RestoreState)."""

    ARCHIVED = "archived"  # in an archive class, and the listing reports no restore
    RESTORING = "restoring"
    RESTORED = "restored"  # readable until `restore_expires`


@dataclass(frozen=True)
class LocalEntry:
    """An entry of the local dir (what `upload all` would take) and the newest upload of it to its key."""

    name: str
    path: str
    is_directory: bool
    size: int
    key: str
    modified_at: datetime | None
    upload_status: str | None  # of the newest upload from this path to this key; None: never tried
    operation_id: str | None
    last_attempt: datetime | None
    # Size or mtime differ from that upload's source: most often a new file under an uploaded one's name (a
    # successful upload moves the original away). None when never tried.
    changed_since: bool | None
    in_s3: bool | None  # None when the bucket was not listed

    def to_dict(self) -> dict[str, Any]:
        return _encode(self)


@dataclass(frozen=True)
class StoredObject:
    """An object under the prefix, from the listing, and the newest upload recorded here that made it."""

    key: str
    name: str  # the key below the prefix, its %XX escapes decoded: the entry name plus .tar.gz
    size: int
    storage_class: str
    last_modified: datetime | None
    etag: str
    restore: ArchiveState | None  # None: not an archive class, and no restore reported
    restore_expires: datetime | None
    operation_id: str | None  # None: no upload in this database made it
    target_name: str | None

    def to_dict(self) -> dict[str, Any]:
        return _encode(self)


@dataclass(frozen=True)
class Listing:
    """The result of `ls`: `local` and `objects` are None when that side was not asked for."""

    local_dir: str
    bucket: str | None
    prefix: str  # the key prefix listed: '' or 'PREFIX/'
    local: list[LocalEntry] | None
    objects: list[StoredObject] | None
    ignored: list[str]
    members: list[StoredMember] | None = None  # `search`: members of the bucket's directory archives that match

    def matching(self, keyword: str) -> Listing:
        """Local entries whose name, and objects whose key below the prefix (as stored, or with its escapes
        decoded), contain `keyword`, ignoring case (Unicode-aware)."""
        wanted = fold(keyword)
        if not wanted:
            raise ConfigError("the search keyword is empty")
        local = None if self.local is None else [e for e in self.local if wanted in fold(e.name)]
        objects = None
        if self.objects is not None:
            objects = [o for o in self.objects if wanted in fold(o.name) or wanted in fold(o.key[len(self.prefix) :])]
        ignored = [note for note in self.ignored if wanted in fold(note.split(":", 1)[0])]
        return replace(self, local=local, objects=objects, ignored=ignored)

    def to_dict(self) -> dict[str, Any]:
        return {
            "local_dir": self.local_dir,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "local": None if self.local is None else [e.to_dict() for e in self.local],
            "objects": None if self.objects is None else [o.to_dict() for o in self.objects],
            "ignored": list(self.ignored),
            **({} if self.members is None else {"members": [m.to_dict() for m in self.members]}),
        }


def fold(text: str) -> str:
    """Case- and normalisation-insensitive form of a name (as the store's `--target` match)."""
    return unicodedata.normalize("NFC", text).casefold()


def key_prefix(settings: Settings) -> str:
    """What the objects of these settings start with: 'PREFIX/', or '' (the whole bucket)."""
    return f"{settings.object_prefix}/" if settings.object_prefix else ""


def archive_state(obj: ObjectHead) -> tuple[ArchiveState | None, datetime | None]:
    """What a listing tells of an object's restore: (state, until when a restored copy stays readable)."""
    if obj.restore is not None:
        if obj.restore.ongoing:
            return ArchiveState.RESTORING, None
        return ArchiveState.RESTORED, obj.restore.expiry
    if obj.storage_class in ARCHIVE_STORAGE_CLASSES:  # GLACIER_IR and the rest read directly
        return ArchiveState.ARCHIVED, None
    return None, None


async def build_listing(settings: Settings, scope: Scope, *, page_size: int = LIST_PAGE_SIZE) -> Listing:
    """List the local dir (scope local/all), the objects under the prefix (s3/all; needs a bucket), and join both
    with what the metadata database recorded (when there is one; none is created)."""
    want_local = scope in (Scope.LOCAL, Scope.ALL)
    want_s3 = scope in (Scope.S3, Scope.ALL)
    if want_s3 and not settings.bucket:
        raise ConfigError("no bucket configured: set MGMT_BUCKET or pass --bucket (or list only `local`)")
    prefix = key_prefix(settings)
    planned: list[tuple[PlannedEntry, datetime | None]] = []
    ignored: list[str] = []
    listed: list[ObjectHead] = []
    summaries: list[UploadSummary] = []  # the uploads to the keys listed (none without a database)

    async def read_local() -> None:
        def walk() -> tuple[list[tuple[PlannedEntry, datetime | None]], list[str]]:
            entries, notes = list_entries(settings)
            return [(p, _mtime(p.path)) for p in plan(settings, entries)], notes

        planned[:], ignored[:] = await anyio.to_thread.run_sync(walk)

    async def read_bucket() -> None:
        async with S3Bucket.connect(ClientOptions.from_settings(settings, max_connections=2)) as s3:
            listed[:] = await s3.list_objects(prefix, page_size=page_size)

    try:
        async with anyio.create_task_group() as tg:
            if want_local:
                tg.start_soon(read_local)
            if want_s3:
                tg.start_soon(read_bucket)
    except BaseExceptionGroup as group:
        error = first_error(group)
        raise error from error.__cause__
    if store_exists(settings):
        # Only the uploads to the keys listed here: a few rows each, however many the database holds.
        keys = {p.key for p, _ in planned} | {o.key for o in listed}
        async with metadata_store(settings) as store:
            summaries = await store.upload_summaries(bucket=settings.bucket or None, key_prefix=prefix, keys=keys)

    local = _local_entries(planned, summaries, {o.key for o in listed} if want_s3 else None) if want_local else None
    objects = _stored_objects(listed, summaries, prefix) if want_s3 else None
    return Listing(
        local_dir=display(settings.local_dir),
        bucket=settings.bucket,
        prefix=prefix,
        local=local,
        objects=objects,
        ignored=ignored if want_local else [],
    )


def _local_entries(
    planned: list[tuple[PlannedEntry, datetime | None]], summaries: list[UploadSummary], listed_keys: set[str] | None
) -> list[LocalEntry]:
    """The planned entries joined with the newest upload from each path to its key (and the listed keys, if any)."""
    newest = {(s.target_path, s.s3_object_key): s for s in summaries}  # oldest first: the last one wins
    local = []
    for p, mtime in planned:
        last = newest.get((display(p.path), p.key))
        local.append(
            LocalEntry(
                name=display(p.path.name),
                path=display(p.path),
                is_directory=p.is_directory,
                size=p.size,
                key=p.key,
                modified_at=mtime,
                upload_status=last.status if last else None,
                operation_id=last.operation_id if last else None,
                last_attempt=last.started_at if last else None,
                changed_since=_changed(p.size, mtime, last) if last else None,
                in_s3=(p.key in listed_keys) if listed_keys is not None else None,
            )
        )
    return local


def _stored_objects(listed: list[ObjectHead], summaries: list[UploadSummary], prefix: str) -> list[StoredObject]:
    """The listed objects joined with the upload that made each (the newest verified one of its key)."""
    maker = {s.s3_object_key: s for s in summaries if s.status in _UPLOADED}
    objects = []
    for o in listed:
        restore, expires = archive_state(o)
        made_by = maker.get(o.key)
        objects.append(
            StoredObject(
                key=o.key,
                name=urllib.parse.unquote(o.key[len(prefix) :], errors="backslashreplace"),
                size=o.size,
                storage_class=o.storage_class or "STANDARD",
                last_modified=o.last_modified,
                etag=o.etag,
                restore=restore,
                restore_expires=expires,
                operation_id=made_by.operation_id if made_by else None,
                target_name=made_by.target_name if made_by else None,
            )
        )
    return objects


async def search(
    settings: Settings, keyword: str, scope: Scope = Scope.ALL, *, page_size: int = LIST_PAGE_SIZE
) -> Listing:
    """`build_listing`, keeping what matches `keyword` (see Listing.matching); with the bucket in scope, also the
    members of its directory archives (as recorded when they were uploaded) whose path contains `keyword`."""
    if not fold(keyword):
        raise ConfigError("the search keyword is empty")
    listing = (await build_listing(settings, scope, page_size=page_size)).matching(keyword)
    if scope == Scope.LOCAL:
        return listing
    found: list[StoredMember] = []
    if store_exists(settings):
        async with metadata_store(settings) as store:
            found = await store.search_members(keyword, bucket=settings.bucket, key_prefix=key_prefix(settings))
    return replace(listing, members=found)


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.lstat().st_mtime, tz=UTC)
    except OSError:
        return None  # vanished since it was listed


def _changed(size: int, mtime: datetime | None, upload: UploadSummary) -> bool:
    if upload.original_size != size or mtime is None or upload.source_modified_at is None:
        return True
    return abs((mtime - upload.source_modified_at).total_seconds()) > MTIME_TOLERANCE


def _encode(value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if isinstance(item, datetime):
            item = iso_utc(item)
        elif isinstance(item, StrEnum):
            item = str(item)
        out[f.name] = item
    return out
