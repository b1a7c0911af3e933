"""Objects already in the bucket: finding one by KEY or entry NAME, downloading it (restore first when archived,
ranged GETs in parallel, verified against the upload record, optionally extracted safely), describing and deleting
it; every download, restore and delete is recorded in the store. Nothing here prints or imports boto.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import math
import os
import tarfile
import time
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import anyio
import anyio.to_thread

from amgmt.errors import ConfigError, EntryError, NotFoundError, ValidationError, VerificationError
from amgmt.models import (
    FileStatus,
    OperationRecord,
    OperationStatus,
    UploadRecord,
    current_user,
    new_operation_id,
    utcnow,
)
from amgmt.naming import ARCHIVE_SUFFIX, PARTIAL_SUFFIX, display, object_key
from amgmt.parts import MiB, expected_etag, is_md5_style_etag, part_ranges
from amgmt.s3 import (
    METADATA_ARCHIVE_SHA256,
    RESTORE_TIERS,
    ByteBudget,
    ClientOptions,
    ObjectHead,
    S3Bucket,
    first_error,
)
from amgmt.config import Settings
from amgmt.store import MetadataStore

DEFAULT_RESTORE_DAYS = 3
DEFAULT_POLL_SECONDS = 60.0
MAX_RANGE_SIZE = 64 * MiB  # a larger MGMT_PART_SIZE is fine for uploads, but one GET's buffer stays this small
HASH_CHUNK = 1 * MiB
SAVE_TIMEOUT = 10.0
SHOWN_PROBLEMS = 10
# What AWS documents as the usual time of a restore, for the message that says to come back later.
RESTORE_TIMES = {
    ("GLACIER", "Expedited"): "1-5 minutes",
    ("GLACIER", "Standard"): "3-5 hours",
    ("GLACIER", "Bulk"): "5-12 hours",
    ("DEEP_ARCHIVE", "Standard"): "within 12 hours",
    ("DEEP_ARCHIVE", "Bulk"): "within 48 hours",
}
_USABLE = frozenset({OperationStatus.SUCCESS, OperationStatus.PARTIAL})  # the object was uploaded and verified


def object_url(bucket: str, key: str) -> str:
    """The target path of every operation on an object other than its upload (download, restore, delete)."""
    return f"s3://{bucket}/{key}"


def entry_name_of(key: str) -> str:
    """An entry name guessed from a key that no upload record names: its last segment without `.tar.gz`."""
    base = key.rsplit("/", 1)[-1]
    return base[: -len(ARCHIVE_SUFFIX)] if base.endswith(ARCHIVE_SUFFIX) and base != ARCHIVE_SUFFIX else base


def _deleted(record: UploadRecord) -> bool:
    return record.s3_file_record is not None and record.s3_file_record.status == FileStatus.DELETED


def current_upload(uploads: Iterable[UploadRecord]) -> UploadRecord | None:
    """The newest verified upload whose object amgmt has not deleted since (uploads are given newest first)."""
    return next((r for r in uploads if r.status in _USABLE and not _deleted(r)), None)


@dataclass(frozen=True)
class Target:
    """What a KEY|NAME argument names: the key, the entry name, and the upload that describes the object now."""

    bucket: str
    key: str
    name: str
    upload: UploadRecord | None  # None when amgmt has no verified upload of this key on record
    found_by: str  # "key" | "name"

    @property
    def url(self) -> str:
        return object_url(self.bucket, self.key)

    def to_dict(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "name": self.name, "found_by": self.found_by,
                "upload_operation_id": self.upload.operation_id if self.upload else None}


def head_to_dict(head: ObjectHead | None) -> dict[str, Any] | None:
    if head is None:
        return None
    data = asdict(head)
    data["needs_restore"] = head.needs_restore
    return data


# -- verification ------------------------------------------------------------------------------------------------


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


# -- the transfer --------------------------------------------------------------------------------------------------


class DownloadReporter(Protocol):
    """Hooks the download calls as it goes; the CLI draws them, tests count them."""

    def restore_waiting(self, head: ObjectHead, waited: float, next_check: float) -> None: ...
    def transfer_started(self, total: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def transfer_done(self) -> None: ...


class QuietReporter:
    """Counts what a download reported, shows nothing."""

    def __init__(self) -> None:
        self.restore_polls = 0
        self.total = 0
        self.done = 0

    def restore_waiting(self, head: ObjectHead, waited: float, next_check: float) -> None:
        self.restore_polls += 1

    def transfer_started(self, total: int) -> None:
        self.total = total

    def advance(self, nbytes: int) -> None:
        self.done += nbytes

    def transfer_done(self) -> None:
        pass


def _write_at(fd: int, data: bytes | bytearray, offset: int, path: Path) -> None:
    view = memoryview(data)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
    except OSError as exc:
        raise EntryError(f"cannot write {display(path)}: {exc.strerror or exc}", path=display(path),
                         stage="download") from exc
    finally:
        view.release()


def _hash_range(fd: int, offset: int, length: int, digests: StreamDigests, path: Path) -> None:
    end = offset + length
    try:
        while offset < end:
            chunk = os.pread(fd, min(HASH_CHUNK, end - offset), offset)
            if not chunk:
                raise EntryError(f"{display(path)} is shorter than what was written to it", stage="download")
            digests.update(chunk)
            offset += len(chunk)
    except OSError as exc:
        raise EntryError(f"cannot read back {display(path)}: {exc.strerror or exc}", stage="download") from exc


async def get_range_retrying(s3: S3Bucket, key: str, offset: int, length: int, *, etag: str | None) -> bytes:
    """One range; S3Bucket.get_range sends it again (the one RetryPolicy) while the failure is transient, a body
    cut short while it is read included."""
    return await s3.get_range(key, offset, length, if_match=etag)


async def fetch_to_file(
    s3: S3Bucket,
    key: str,
    path: Path,
    *,
    size: int,
    etag: str | None,
    digests: StreamDigests,
    range_size: int,
    workers: int,
    budget: ByteBudget,
    reporter: DownloadReporter,
) -> None:
    """Write the object into `path` with concurrent ranged GETs, each range at its offset, and feed `digests` in
    order as the ranges land (read back from the page cache, so hashing overlaps the transfer).

    Memory is bounded by `budget` (each range holds its size while its bytes are in memory), not by the object.
    `etag` makes every GET conditional, so a replaced object fails instead of mixing versions. The file is fsynced
    before return; on failure it is left for the caller to remove.
    """
    ranges = part_ranges(size, range_size) if size else []
    written = [anyio.Event() for _ in ranges]
    pending = iter(ranges)

    try:
        fd = await anyio.to_thread.run_sync(
            lambda: os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        )
    except OSError as exc:
        raise EntryError(f"cannot create {display(path)}: {exc.strerror or exc}", stage="download") from exc

    async def fetch_ranges() -> None:
        # Each worker takes the next range when it is free: N workers, not one task per range of a huge object.
        for number, offset, length in pending:
            async with budget.hold(length):
                data = await get_range_retrying(s3, key, offset, length, etag=etag)
                await anyio.to_thread.run_sync(_write_at, fd, data, offset, path)
                del data
            written[number - 1].set()
            reporter.advance(length)

    async def hash_in_order() -> None:
        for (_, offset, length), done in zip(ranges, written):
            await done.wait()
            await anyio.to_thread.run_sync(_hash_range, fd, offset, length, digests, path)

    try:
        reporter.transfer_started(size)
        try:
            await anyio.to_thread.run_sync(os.ftruncate, fd, size)
        except OSError as exc:
            raise EntryError(f"cannot size {display(path)}: {exc.strerror or exc}", stage="download") from exc
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(min(workers, len(ranges))):
                    tg.start_soon(fetch_ranges)
                tg.start_soon(hash_in_order)
        except BaseExceptionGroup as group:
            raise first_error(group)  # with its own cause (the S3 error), not `from None`, which would clear it
        try:
            await anyio.to_thread.run_sync(os.fsync, fd)
        except OSError as exc:
            raise EntryError(f"cannot write {display(path)}: {exc.strerror or exc}", stage="download") from exc
        reporter.transfer_done()
    finally:
        os.close(fd)


def place_file(partial: Path, final: Path, *, force: bool) -> None:
    """Move the verified download to its name; without `force` an existing file is never replaced, even one that
    appeared during the download (a hard link fails if the name exists, a rename would not)."""
    try:
        if force:
            os.replace(partial, final)
            return
        try:
            os.link(partial, final)
        except FileExistsError:
            raise ConfigError(f"{display(final)} exists (created during the download); use --force to replace it")
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
            if os.path.lexists(final):  # a file system without hard links: check, then rename
                raise ConfigError(f"{display(final)} exists; use --force to replace it") from None
            os.rename(partial, final)
            return
        os.unlink(partial)
    except OSError as exc:
        raise EntryError(f"cannot move the download to {display(final)}: {exc.strerror or exc}",
                         stage="download") from exc


# -- safe extraction -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractSummary:
    top_level: tuple[str, ...]
    files: int
    directories: int
    links: int
    bytes: int
    replaced: int  # existing files replaced (--force)


_FILTER_REASONS: dict[type[Exception], str] = {
    tarfile.AbsolutePathError: "an absolute path",
    tarfile.OutsideDestinationError: "outside the target directory",
    tarfile.SpecialFileError: "a device or FIFO",
    tarfile.AbsoluteLinkError: "a link to an absolute path",
    tarfile.LinkOutsideDestinationError: "a link pointing outside the target directory",
}


def _member_problem(member: tarfile.TarInfo, dest: str, kinds: dict[str, str]) -> str | None:
    """Why this member must not be extracted into `dest`, or None. `kinds` holds the earlier members' normalised
    names and kinds ("file", "dir", "link")."""
    name = member.name
    path = PurePosixPath(name)
    if name.startswith("/") or os.path.isabs(name):
        return "an absolute path"
    if ".." in path.parts:
        return "a '..' in its path"
    if not path.parts or str(path) == ".":
        return "an empty name"
    norm = str(path)
    for parent in path.parents:
        if kinds.get(str(parent)) == "link":
            return f"inside {str(parent)!r}, a link of the archive"
    if member.islnk():
        target = str(PurePosixPath(member.linkname))
        if kinds.get(target) != "file":
            return f"a hard link to {member.linkname!r}, which is not an earlier file of the archive"
    earlier = kinds.get(norm)
    if earlier is not None and not (earlier == "dir" and member.isdir()):
        return "a second member of the same name"
    try:
        tarfile.data_filter(member, dest)
    except tarfile.FilterError as exc:
        return next((why for kind, why in _FILTER_REASONS.items() if isinstance(exc, kind)), str(exc))
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        return "not a file, directory or link"
    return None


def _describe_members(problems: list[str]) -> str:
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return shown + more


def plan_extraction(archive: Path, dest: Path, *, force: bool) -> ExtractSummary:
    """Read every member header of the tar.gz (writing nothing) and refuse it as a whole if any member could escape
    `dest` or harm it: ValidationError for unsafe members (absolute names, '..', links leaving `dest`, paths through
    a link, hard links to anything but an earlier file, devices, duplicates), ConfigError for paths that exist
    (without `force`; a directory over a file or the reverse is refused even with it)."""
    dest_real = os.path.realpath(dest)
    kinds: dict[str, str] = {}
    unsafe: list[str] = []
    existing: list[str] = []
    blocked: list[str] = []
    top: dict[str, None] = {}
    files = directories = links = nbytes = replaced = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                problem = _member_problem(member, dest_real, kinds)
                if problem:
                    unsafe.append(f"{member.name!r}: {problem}")
                    continue
                norm = str(PurePosixPath(member.name))
                kinds[norm] = "dir" if member.isdir() else "link" if member.issym() else "file"
                top.setdefault(PurePosixPath(norm).parts[0], None)
                if member.isdir():
                    directories += 1
                elif member.issym() or member.islnk():
                    links += 1
                else:
                    files += 1
                    nbytes += member.size
                target = os.path.join(dest, norm)
                if not os.path.lexists(target):
                    continue
                on_disk_dir = os.path.isdir(target) and not os.path.islink(target)
                if member.isdir() and on_disk_dir:
                    continue
                if member.isdir() or on_disk_dir:
                    blocked.append(repr(norm))
                elif force:
                    replaced += 1
                else:
                    existing.append(repr(norm))
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValidationError(f"{display(archive.name)} is not a readable tar.gz: {exc}", stage="extract") from exc
    except OSError as exc:
        raise EntryError(f"cannot read {display(archive)}: {exc.strerror or exc}", stage="extract") from exc
    if unsafe:
        raise ValidationError(
            f"refusing to extract: {len(unsafe)} unsafe member(s): {_describe_members(unsafe)}; nothing was extracted",
            stage="extract",
        )
    if blocked:
        raise ConfigError(
            f"refusing to extract: {len(blocked)} path(s) in {display(dest)} are a directory where the archive has "
            f"a file, or the reverse: {_describe_members(blocked)}; nothing was extracted"
        )
    if existing:
        raise ConfigError(
            f"refusing to extract: {len(existing)} path(s) already exist in {display(dest)}: "
            f"{_describe_members(existing)}; use --force to replace them; nothing was extracted"
        )
    return ExtractSummary(tuple(top), files, directories, links, nbytes, replaced)


def extract_archive(archive: Path, dest: Path, *, force: bool) -> ExtractSummary:
    """Extract a tar.gz into `dest` after `plan_extraction` accepted all of it. tarfile's "data" filter checks every
    member again as it is written (a path changed on disk meanwhile); with `force` an existing file or link is
    removed before its member is written, so nothing is ever written through a link that was already there."""
    summary = plan_extraction(archive, dest, force=force)

    def checked(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        member = tarfile.data_filter(member, path)
        target = os.path.join(path, member.name)
        if os.path.lexists(target) and not (os.path.isdir(target) and not os.path.islink(target)):
            if not force:
                raise ConfigError(f"{display(target)} appeared during the extraction; use --force to replace it")
            os.unlink(target)
        return member

    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.errorlevel = 2  # a refused member raises (at the default level 1, extractall skips it silently)
            tar.extractall(dest, filter=checked)
    except tarfile.FilterError as exc:
        raise ValidationError(f"refusing to extract: {exc}", stage="extract") from exc
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValidationError(f"{display(archive.name)} is not a readable tar.gz: {exc}", stage="extract") from exc
    except OSError as exc:
        raise EntryError(f"extraction into {display(dest)} failed: {exc.strerror or exc}", stage="extract") from exc
    return summary


# -- results -------------------------------------------------------------------------------------------------------


class DownloadState(StrEnum):
    DOWNLOADED = "downloaded"
    RESTORE_STARTED = "restore-started"  # an archived object: a restore was asked for now
    RESTORE_IN_PROGRESS = "restore-in-progress"  # an archived object whose restore was asked for earlier


@dataclass(frozen=True)
class DownloadOptions:
    dest_dir: Path
    extract: bool = False
    force: bool = False
    tier: str = "Standard"
    days: int = DEFAULT_RESTORE_DAYS
    wait: bool = False
    poll_interval: float = DEFAULT_POLL_SECONDS

    def __post_init__(self) -> None:
        if self.tier not in RESTORE_TIERS:
            raise ConfigError(f"--tier {self.tier!r}: expected one of {', '.join(RESTORE_TIERS)}")
        if self.days < 1:
            raise ConfigError(f"--days {self.days}: a restored copy is kept at least 1 day")
        if not self.poll_interval > 0:
            raise ConfigError(f"--poll-interval {self.poll_interval}: expected a positive number of seconds")


@dataclass
class DownloadOutcome:
    state: DownloadState
    target: Target
    head: ObjectHead
    local_path: str | None = None
    sha256: str | None = None
    verified_by: tuple[str, ...] = ()
    extracted: ExtractSummary | None = None
    restore_request: str | None = None  # the answer to our restore request: started | restored | in-progress
    restore_waited_seconds: float = 0.0
    operation_id: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            **self.target.to_dict(),
            "storage_class": self.head.storage_class,
            "size": self.head.size,
            "etag": self.head.etag,
            "restore": asdict(self.head.restore) if self.head.restore else None,
            "restore_request": self.restore_request,
            "restore_waited_seconds": round(self.restore_waited_seconds, 3),
            "local_path": self.local_path,
            "sha256": self.sha256,
            "verified_by": list(self.verified_by),
            "extracted": asdict(self.extracted) if self.extracted else None,
            "operation_id": self.operation_id,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class ObjectStatus:
    target: Target
    head: ObjectHead | None  # None: not in the bucket (any more)
    operations: list[OperationRecord] = field(default_factory=list)


@dataclass
class DeletePlan:
    target: Target
    head: ObjectHead
    uploads: list[UploadRecord]  # every upload record of the key, newest first


# -- the session ---------------------------------------------------------------------------------------------------


class Objects:
    """The bucket's objects as amgmt sees them, through one S3 client and the metadata store. `store` is None when
    the command only reads and no database exists yet."""

    def __init__(self, settings: Settings, s3: S3Bucket, store: MetadataStore | None) -> None:
        self.settings = settings
        self.s3 = s3
        self.store = store
        self.range_size = min(max(settings.part_size, 1 * MiB), MAX_RANGE_SIZE)
        self.workers = max(1, settings.parts_in_flight)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings, *, record: bool) -> AsyncIterator[Objects]:
        """Connect (and check the bucket); open the store, creating it only when this command records."""
        async with contextlib.AsyncExitStack() as stack:
            store = None
            if record or settings.db_path.exists():
                store = await stack.enter_async_context(MetadataStore(settings.db_path))
            options = ClientOptions.from_settings(settings, max_connections=max(4, settings.parts_in_flight + 2))
            s3 = await stack.enter_async_context(S3Bucket.connect(options))
            await s3.check_bucket()
            yield cls(settings, s3, store)

    # -- finding ---------------------------------------------------------------------------------------------------

    def _key_from(self, text: str) -> str | None:
        """The key of an `s3://bucket/key` argument (it must name the configured bucket); None for other text."""
        if not text.startswith("s3://"):
            return None
        bucket, _, key = text[len("s3://") :].partition("/")
        if bucket != self.s3.bucket:
            raise ConfigError(f"{text} is in bucket {bucket!r}, not the configured {self.s3.bucket!r}; pass --bucket")
        if not key:
            raise ConfigError(f"{text} names no key")
        return key

    async def resolve(self, text: str) -> Target:
        """KEY (or s3://bucket/KEY) or NAME -> Target. A key amgmt uploaded to, else an entry name amgmt uploaded
        (its newest verified upload), else an existing key, else `[prefix/]NAME.tar.gz` if it exists."""
        if not text:
            raise ConfigError("name an object: a key, s3://bucket/key, or the name of an uploaded entry")
        bucket = self.s3.bucket
        url_key = self._key_from(text)
        key = url_key or text
        if self.store is not None:
            by_key = await self.store.find_uploads_by_key(bucket=bucket, key=key)
            if by_key:
                return Target(bucket, key, by_key[0].target_name, current_upload(by_key), "key")
            if url_key is None:
                by_name = await self.store.find_uploads_by_name(bucket=bucket, name=text)
                if by_name:
                    usable = current_upload(by_name)
                    return Target(bucket, (usable or by_name[0]).s3_object_key, text, usable, "name")
        if await self.s3.describe_object(key) is not None:
            return Target(bucket, key, entry_name_of(key), None, "key")
        named = object_key(self.settings.object_prefix, text)
        if url_key is None and named != key and await self.s3.describe_object(named) is not None:
            return Target(bucket, named, text, None, "name")
        raise NotFoundError(self._not_found(text, [key] if url_key else [key, named]))

    def _not_found(self, text: str, tried: list[str]) -> str:
        keys = ", ".join(dict.fromkeys(tried))
        recorded = ", and no upload of that name recorded" if self.store is not None else " (no metadata database)"
        return (f"nothing named {text!r} in s3://{self.s3.bucket}: no object at {keys}{recorded}; "
                "`amgmt search` finds similar names")

    async def _deleted_note(self, target: Target) -> str:
        if self.store is None:
            return ""
        ops = await self.store.find_operations_on(bucket=target.bucket, key=target.key, target_path=target.url)
        done = next((op for op in ops if op.operation_type == "delete" and op.status == OperationStatus.SUCCESS), None)
        if done is None:
            return ""
        when = done.started_at.astimezone().isoformat(sep=" ", timespec="seconds")  # the user's local time
        return f" (amgmt deleted it at {when}, operation {done.operation_id[:8]})"

    async def _head(self, target: Target) -> ObjectHead:
        head = await self.s3.describe_object(target.key)
        if head is None:
            raise NotFoundError(f"{target.url} does not exist{await self._deleted_note(target)}")
        return head

    async def status(self, text: str) -> ObjectStatus:
        """The object's HEAD (None if it is gone) beside every operation the store has on it, newest first."""
        target = await self.resolve(text)
        head = await self.s3.describe_object(target.key)
        operations: list[OperationRecord] = []
        if self.store is not None:
            operations = await self.store.find_operations_on(
                bucket=target.bucket, key=target.key, target_path=target.url,
                target_name=target.name if target.found_by == "name" else None,
            )
        return ObjectStatus(target, head, operations)

    # -- recording -------------------------------------------------------------------------------------------------

    def _new_record(self, operation_type: str, target: Target, command_args: dict[str, Any] | None) -> OperationRecord:
        return OperationRecord(
            operation_id=new_operation_id(),
            operation_type=operation_type,
            target_path=target.url,
            target_name=target.name,
            started_at=utcnow(),
            user=current_user(),
            command_args=dict(command_args or {}),
            metadata={"bucket": target.bucket, "key": target.key},
        )

    async def _save(self, record: OperationRecord) -> None:
        if self.store is None:
            return
        # Shielded and time-bounded: a cancelled command still leaves its record.
        with anyio.move_on_after(SAVE_TIMEOUT, shield=True):
            await self.store.save_operation(record)

    async def _finish_failed(self, record: OperationRecord, exc: BaseException) -> None:
        cancelled = isinstance(exc, anyio.get_cancelled_exc_class()) or isinstance(exc, KeyboardInterrupt)
        record.finish(OperationStatus.CANCELLED if cancelled else OperationStatus.FAILED,
                      error="interrupted" if cancelled else " ".join(str(exc).split()))
        await self._save(record)

    # -- downloading -----------------------------------------------------------------------------------------------

    async def download(
        self,
        text: str,
        options: DownloadOptions,
        *,
        reporter: DownloadReporter | None = None,
        command_args: dict[str, Any] | None = None,
    ) -> DownloadOutcome:
        """Download (restoring first when archived), verify, then keep the archive or extract it into the dir.

        Refusals (existing files without --force) come before any request that changes anything. An archived
        object without a readable copy gets a restore request; without `wait` the outcome says so and nothing is
        downloaded. A verification failure removes the partial file; the download is recorded either way.
        """
        reporter = reporter or QuietReporter()
        started = time.monotonic()
        target = await self.resolve(text)
        head = await self._head(target)
        dest = options.dest_dir
        final = dest / target.key.rsplit("/", 1)[-1]
        self._refuse_conflicts(target, options, final)

        restore_request = None
        waited = 0.0
        if head.needs_restore:
            if head.restore is None:
                if options.tier == "Expedited" and "DEEP_ARCHIVE" in (head.storage_class, head.archive_status):
                    raise ConfigError("DEEP_ARCHIVE objects cannot be restored with the Expedited tier")
                days = None if head.archive_status else options.days  # archived tiering copies take no Days
                restore_request = await self.s3.restore_object(target.key, tier=options.tier, days=days)
                await self._record_restore(target, head, options, restore_request, command_args)
            if not options.wait:
                state = DownloadState.RESTORE_STARTED if restore_request else DownloadState.RESTORE_IN_PROGRESS
                return DownloadOutcome(state, target, head, restore_request=restore_request,
                                       seconds=time.monotonic() - started)
            head, waited = await self._wait_for_restore(target, options, reporter)

        record = self._new_record("download", target, command_args)
        record.metadata |= {"storage_class": head.storage_class, "size": head.size, "etag": head.etag,
                            "upload_operation_id": target.upload.operation_id if target.upload else None}
        if head.restore:
            record.metadata["restore_expiry"] = head.restore.expiry.isoformat() if head.restore.expiry else None
            record.metadata["restore_waited_seconds"] = round(waited, 3)
        try:
            outcome = await self._fetch(target, head, options, reporter, final)
        except BaseException as exc:
            await self._finish_failed(record, exc)
            raise
        outcome.restore_request = restore_request
        outcome.restore_waited_seconds = waited
        outcome.operation_id = record.operation_id
        outcome.seconds = time.monotonic() - started
        record.result_path = outcome.local_path
        record.metadata |= {
            "local_path": outcome.local_path,
            "local_sha256": outcome.sha256,
            "verified_by": list(outcome.verified_by),
            "extracted": asdict(outcome.extracted) if outcome.extracted else None,
            "range_size": self.range_size,
        }
        record.finish(OperationStatus.SUCCESS)
        await self._save(record)
        return outcome

    def _refuse_conflicts(self, target: Target, options: DownloadOptions, final: Path) -> None:
        dest = options.dest_dir
        if os.path.lexists(dest) and not dest.is_dir():
            raise ConfigError(f"--to {display(dest)} exists and is not a directory")
        if options.force:
            return
        if not options.extract:
            if os.path.lexists(final):
                raise ConfigError(f"{display(final)} exists; use --force to replace it")
            return
        # The entry's own path: refused up front unless it is an empty directory, so that a download of many
        # gigabytes is not made only to be refused (the member-by-member check after the download decides).
        entry = dest / target.name
        if os.path.lexists(entry) and not (entry.is_dir() and not entry.is_symlink() and not any(entry.iterdir())):
            raise ConfigError(f"{display(entry)} exists; use --force to replace the files the archive holds")

    async def _record_restore(self, target: Target, head: ObjectHead, options: DownloadOptions, answer: str,
                              command_args: dict[str, Any] | None) -> None:
        record = self._new_record("restore", target, command_args)
        record.metadata |= {"storage_class": head.storage_class, "archive_status": head.archive_status,
                            "tier": options.tier, "days": None if head.archive_status else options.days,
                            "answer": answer}
        record.finish(OperationStatus.SUCCESS)
        await self._save(record)

    async def _wait_for_restore(
        self, target: Target, options: DownloadOptions, reporter: DownloadReporter
    ) -> tuple[ObjectHead, float]:
        """Poll HEAD until the restored copy is readable; (the HEAD that says so, seconds waited)."""
        started = time.monotonic()
        while True:
            head = await self._head(target)
            waited = time.monotonic() - started
            if not head.needs_restore:
                return head, waited
            if head.restore is None:  # it expired, or was never asked for by this command: ask (again)
                await self.s3.restore_object(target.key, tier=options.tier,
                                             days=None if head.archive_status else options.days)
            reporter.restore_waiting(head, waited, options.poll_interval)
            await anyio.sleep(options.poll_interval)

    async def _expectations(self, target: Target, head: ObjectHead) -> Expected:
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
                found = await self.s3.first_part_size(target.key)
                if found and found[1] == count and found[0] > 0 and math.ceil(head.size / found[0]) == count:
                    part_size, part_size_from = found[0], "server"
            if part_size is None:
                etag = None  # a multipart ETag whose part size is unknown cannot be recomputed
        return Expected(head.size, etag, part_size, part_size_from, sha256, sha256_from)

    async def _fetch(self, target: Target, head: ObjectHead, options: DownloadOptions, reporter: DownloadReporter,
                     final: Path) -> DownloadOutcome:
        expected = await self._expectations(target, head)
        dest = options.dest_dir
        try:
            await anyio.to_thread.run_sync(lambda: dest.mkdir(parents=True, exist_ok=True))
        except OSError as exc:
            raise ConfigError(f"cannot create --to {display(dest)}: {exc.strerror or exc}") from exc
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        digests = StreamDigests(expected.etag_part_size)
        try:
            await fetch_to_file(
                self.s3, target.key, partial, size=head.size, etag=head.etag or None, digests=digests,
                range_size=self.range_size, workers=self.workers,
                budget=ByteBudget(self.workers * self.range_size), reporter=reporter,
            )
            got = digests.finish()
            verified_by = check_digests(target.url, expected, got)
            extracted = None
            if options.extract:
                extracted = await anyio.to_thread.run_sync(
                    lambda: extract_archive(partial, dest, force=options.force)
                )
                await anyio.to_thread.run_sync(os.unlink, partial)
                tops = extracted.top_level
                local_path = dest / tops[0] if len(tops) == 1 else dest
            else:
                await anyio.to_thread.run_sync(lambda: place_file(partial, final, force=options.force))
                local_path = final
        except BaseException:
            with anyio.move_on_after(SAVE_TIMEOUT, shield=True), contextlib.suppress(OSError):
                await anyio.to_thread.run_sync(_unlink_if_present, partial)
            raise
        return DownloadOutcome(DownloadState.DOWNLOADED, target, head, local_path=display(local_path.absolute()),
                               sha256=got.sha256, verified_by=verified_by, extracted=extracted)

    # -- deleting --------------------------------------------------------------------------------------------------

    async def plan_delete(self, text: str) -> DeletePlan:
        """What `delete` would remove; NotFoundError when the object does not exist."""
        target = await self.resolve(text)
        head = await self._head(target)
        uploads = await self.store.find_uploads_by_key(bucket=target.bucket, key=target.key) if self.store else []
        return DeletePlan(target, head, uploads)

    async def delete(self, plan: DeletePlan, *, command_args: dict[str, Any] | None = None) -> OperationRecord:
        """Delete the object; its upload records stay, their S3 file record marked deleted; a "delete" is recorded."""
        target = plan.target
        record = self._new_record("delete", target, command_args)
        record.metadata |= {"size": plan.head.size, "etag": plan.head.etag, "storage_class": plan.head.storage_class,
                            "upload_operation_ids": [u.operation_id for u in plan.uploads]}
        try:
            await self.s3.delete_object(target.key)
        except BaseException as exc:
            await self._finish_failed(record, exc)
            raise
        record.finish(OperationStatus.SUCCESS)
        record.result_path = target.url
        with anyio.move_on_after(SAVE_TIMEOUT, shield=True):
            for upload in plan.uploads:
                if upload.s3_file_record is None:
                    continue
                upload.s3_file_record.status = FileStatus.DELETED
                upload.s3_file_record.tags["deleted_by_operation_id"] = record.operation_id
                upload.s3_file_record.tags["deleted_at"] = (record.completed_at or utcnow()).isoformat()
                if self.store is not None:
                    await self.store.save_operation(upload)
            await self._save(record)
        return record


def _unlink_if_present(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
