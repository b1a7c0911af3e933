"""One entry through the eight stages: validate, record, compress, upload, verify, move, persist, clean up.

It owns that entry's records (saved at every stage transition) and its failure cleanups (staging archive, multipart
abort via the S3 boundary). It never moves an original before the object is verified, and it never prints.
"""

from __future__ import annotations

import contextlib
import functools
import mimetypes
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import anyio.to_process
import anyio.to_thread

from amgmt.local.archive import ArchiveResult, compress_entry
from amgmt.local.completed import completed_destination, find_completed, move_to_completed, tree_size
from amgmt.errors import (
    AmgmtError,
    CompressionError,
    EntryError,
    MoveError,
    NotFoundError,
    ObjectExistsError,
    SourceChangedError,
    StoreError,
    UploadError,
    ValidationError,
    VerificationError,
)
from amgmt.models import (
    FileRecord,
    FileRole,
    FileStatus,
    Location,
    OperationStatus,
    Stage,
    UploadRecord,
    current_user,
    new_operation_id,
    utcnow,
)
from amgmt.naming import PARTIAL_SUFFIX, display, object_key, staging_name
from amgmt.parts import MAX_SINGLE_PUT, archive_size_bound, expected_etag, plan_part_size
from amgmt.progress import Reporter, SilentReporter
from amgmt.s3.client import (
    METADATA_ARCHIVE_SHA256,
    METADATA_SOURCE_SHA256,
    METADATA_SOURCE_SIZE,
    METADATA_RESERVATION,
    ByteBudget,
    ObjectInfo,
    PartDone,
    S3Bucket,
    UploadResult,
    UploadStats,
)
from amgmt.config import Settings
from amgmt.store import JournaledPart, JournaledUpload, MetadataStore

Compressor = Callable[[str, str, int, int], Awaitable[ArchiveResult]]
SAVE_TIMEOUT = 10.0
_REUSE = object()  # _judge_existing: the object at the key is this very archive


SMALL_FILE = 1024 * 1024  # packed in a thread of the main process, not in a worker process
# Outcomes whose entry counts as processed in full on the progress bar (a skipped one needs no more work).
_FILLS_THE_BAR = (OperationStatus.SUCCESS, OperationStatus.PARTIAL, OperationStatus.SKIPPED)


def _is_small_file(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False  # let the worker report it
    return stat.S_ISREG(st.st_mode) and st.st_size <= SMALL_FILE


def process_pool_compressor(limiter: anyio.CapacityLimiter) -> Compressor:
    """Compression in anyio's worker processes (kept warm between entries), at most `limiter` at a time.

    A worker imports what unpickling the job needs (amgmt.local.archive, which stays free of anyio and boto), plus the file
    of the parent's `__main__` module unless it has none: the CLI removes it (amgmt.cli._spare_workers_the_cli)."""

    async def compress(source: str, archive_path: str, part_size: int, level: int) -> ArchiveResult:
        job = functools.partial(compress_entry, part_size=part_size, level=level)
        if _is_small_file(source):
            # A round trip to a worker process costs more than packing a small file: do it in a thread.
            return await anyio.to_thread.run_sync(job, source, archive_path, limiter=limiter)
        return await anyio.to_process.run_sync(job, source, archive_path, cancellable=True, limiter=limiter)

    return compress


class KnownKeys:
    """The keys under the run's prefix as listed when the run began (None: not listed, or too many to list)."""

    def __init__(self, keys: frozenset[str] | None) -> None:
        self._keys = keys

    def absent(self, key: str) -> bool:
        """True only when the listing was complete and `key` was not in it."""
        return self._keys is not None and key not in self._keys


@dataclass
class PipelineContext:
    """Everything one entry's pipeline needs, passed explicitly (no globals)."""

    settings: Settings
    store: MetadataStore
    s3: S3Bucket
    budget: ByteBudget  # request bodies in memory, shared by every upload of the run
    compress: Compressor
    reporter: Reporter = field(default_factory=SilentReporter)
    overwrite: bool = False
    keys: KnownKeys = field(default_factory=lambda: KnownKeys(None))
    # Keys taken by entries of this run (key -> the entry's path): two entries of one run never write one key.
    claimed_keys: dict[str, str] = field(default_factory=dict)
    command_args: dict[str, Any] = field(default_factory=dict)
    user: str | None = field(default_factory=current_user)


class StoreJournal:
    """The multipart journal of one entry's upload, written to the metadata store as parts finish."""

    def __init__(self, store: MetadataStore, record: UploadRecord, archive: ArchiveResult) -> None:
        self.store = store
        self.record = record
        self.archive = archive

    async def started(self, upload_id: str) -> None:
        self.record.metadata["upload_id"] = upload_id
        await self.store.journal_multipart(
            JournaledUpload(
                upload_id=upload_id,
                operation_id=self.record.operation_id,
                bucket=self.record.s3_bucket,
                key=self.record.s3_object_key,
                archive_sha256=self.archive.archive_sha256,
                part_size=self.archive.part_size,
                part_count=len(self.archive.part_md5s),
            )
        )
        await self.store.save_operation(self.record)

    async def part_done(self, upload_id: str, part: PartDone) -> None:
        await self.store.journal_part(
            upload_id, JournaledPart(part.number, part.size, part.md5, part.etag, part.checksum)
        )

    async def finished(self, upload_id: str, state: str) -> None:
        await self.store.journal_multipart_state(upload_id, state)


def entry_key(settings: Settings, entry: Path) -> str:
    """`[prefix/]NAME.tar.gz`; with MGMT_PRESERVE_STRUCTURE, NAME is the entry's path inside the local dir, so
    `s1/ep1.mkv` and `s2/ep1.mkv` get different keys."""
    if settings.preserve_structure:
        try:
            return object_key(settings.object_prefix, *entry.relative_to(settings.local_dir).parts)
        except ValueError:
            pass
    return object_key(settings.object_prefix, entry.name)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def source_record(entry: Path, local_dir: Path) -> tuple[FileRecord, int]:
    """Stage 1: check the entry is a regular file or directory inside the local dir; its FileRecord and file count."""
    try:
        st = entry.lstat()
    except FileNotFoundError as exc:
        raise ValidationError(f"{display(entry)} does not exist (deleted since it was listed?)") from exc
    except OSError as exc:
        raise ValidationError(f"cannot access {display(entry)}: {exc.strerror}") from exc
    try:
        entry.parent.resolve(strict=True).relative_to(local_dir)
    except (OSError, ValueError) as exc:
        raise ValidationError(f"{display(entry)} is not inside the local dir {display(local_dir)}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise ValidationError(f"{display(entry)} is a symbolic link; amgmt uploads files and directories only")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise ValidationError(f"{display(entry)} is not a regular file or directory")
    try:
        size, count = tree_size(entry)
    except OSError as exc:
        raise ValidationError(f"cannot read {display(entry)}: {exc.strerror or exc}") from exc
    is_dir = stat.S_ISDIR(st.st_mode)
    record = FileRecord(
        name=display(entry.name),
        path=display(entry),
        location=Location.LOCAL,
        size=size,
        is_directory=is_dir,
        mime_type=None if is_dir else mimetypes.guess_type(entry.name)[0],
        created_at=_dt(st.st_ctime),
        modified_at=_dt(st.st_mtime),
        accessed_at=_dt(st.st_atime),
        status=FileStatus.PENDING,
        tags={"file_count": str(count)},
    )
    return record, count


class EntryPipeline:
    """Runs one entry through the stages, keeping its UploadRecord current in the store."""

    def __init__(self, ctx: PipelineContext, entry: Path) -> None:
        self.ctx = ctx
        self.entry = entry
        settings = ctx.settings
        self.record = UploadRecord(
            operation_id=new_operation_id(),
            target_path=display(entry),
            target_name=display(entry.name),
            started_at=utcnow(),
            s3_bucket=settings.bucket or "",
            s3_object_key=entry_key(settings, entry),
            s3_storage_class=settings.storage_class,
            user=ctx.user,
            command_args=dict(ctx.command_args),
        )
        if display(entry) != os.fsdecode(entry):
            # The record's text cannot give the path back (undecodable bytes): keep the bytes for `amgmt retry`.
            self.record.metadata["target_path_hex"] = os.fsencode(entry).hex()
        self.staging = settings.staging_dir / staging_name(self.record.operation_id, entry.name)
        self.archive: ArchiveResult | None = None
        self._timings: dict[str, float] = {}
        self._reported = 0  # source-equivalent bytes already reported to the progress bar

    # -- bookkeeping -------------------------------------------------------------------------------------------

    async def _save(self) -> None:
        self.record.sync_metadata()
        self.record.metadata["stage_seconds"] = {k: round(v, 6) for k, v in self._timings.items()}
        await self.ctx.store.save_operation(self.record)

    async def _enter(self, stage: Stage) -> float:
        self.record.stage = stage
        await self._save()
        return time.perf_counter()

    def _took(self, stage: Stage, started: float) -> None:
        self._timings[str(stage)] = self._timings.get(str(stage), 0.0) + time.perf_counter() - started

    def _progress(self, archive_bytes: int) -> None:
        if not self.archive or not self.archive.archive_size:
            return
        share = archive_bytes * self.record.original_size // self.archive.archive_size
        share = min(share, self.record.original_size - self._reported)
        self._reported += share
        self.ctx.reporter.advance(share)

    # -- the run -----------------------------------------------------------------------------------------------

    async def run(self) -> UploadRecord:
        """All stages. Entry failures end in the record (never raised); run-wide ones and cancellation propagate."""
        record = self.record
        try:
            await self._stages()
        except SourceChangedError as exc:
            # Uploaded and verified as packed, but the original is no longer that: it stays (or is put back) local.
            record.finish(OperationStatus.CHANGED, error=f"{exc.stage}: {exc}")
            if record.source_file_record:
                record.source_file_record.tags["changed"] = str(exc)
        except EntryError as exc:
            # An S3 error (UploadError) can come from any stage that talks to S3 (a HEAD in verify): name the stage.
            stage = str(record.stage) if isinstance(exc, UploadError) else exc.stage
            record.finish(OperationStatus.FAILED, error=f"{stage}: {exc}")
            self._mark_failed(str(exc), stage)
        except AmgmtError as exc:  # run-wide (StorageError, StoreError): recorded, then the batch stops
            record.finish(OperationStatus.FAILED, error=f"{record.stage}: {exc}")
            self._mark_failed(str(exc), str(record.stage))
            await self._finalise()
            raise
        except Exception as exc:  # a bug: recorded as such, and raised with its traceback
            record.finish(OperationStatus.FAILED, error=f"{record.stage}: internal error: {type(exc).__name__}: {exc}")
            await self._finalise()
            raise
        except BaseException:
            record.finish(OperationStatus.CANCELLED, error=f"{record.stage}: interrupted")
            await self._finalise()
            raise
        await self._finalise(must_save=True)
        return record

    def _mark_failed(self, message: str, stage: str) -> None:
        """The FileRecord of the stage that failed says so too."""
        role = {"validate": FileRole.SOURCE, "compress": FileRole.COMPRESSED, "upload": FileRole.S3,
                "verify": FileRole.S3}.get(stage)
        rec = self.record.file_records().get(role) if role else None
        if rec is not None:
            rec.status = FileStatus.FAILED
            rec.error_message = message

    async def _finalise(self, *, must_save: bool = False) -> None:
        """Stage 8 and the last save; shielded so that Ctrl-C cannot leave a staging file or a stale record.

        With `must_save` (the entry ended by itself), a database that cannot take the record stops the run
        (StoreError): a result nobody can look up later is not a result. On the way out of an error or a
        cancellation, the save is best effort: the error already propagating says more."""
        with anyio.CancelScope(shield=True):
            await self._cleanup()
            if self.record.status in _FILLS_THE_BAR:
                self._report_remaining()  # a failed or cancelled entry's bytes were not processed: no jump to 100%
            try:
                with anyio.fail_after(SAVE_TIMEOUT):
                    await self._save()
            except (StoreError, TimeoutError) as exc:
                if must_save:
                    if isinstance(exc, StoreError):
                        raise
                    raise StoreError(f"the metadata database did not take a record within {SAVE_TIMEOUT:g} s") from exc
            finally:
                self.ctx.reporter.entry_done(self.record)

    def _report_remaining(self) -> None:
        rest = self.record.original_size - self._reported
        if rest > 0:
            self._reported += rest
            self.ctx.reporter.advance(rest)

    async def _stages(self) -> None:
        settings = self.ctx.settings
        record = self.record

        # 1. validate
        started = time.perf_counter()
        source, file_count = source_record(self.entry, settings.local_dir)
        record.source_file_record = source
        record.original_size = source.size
        self._claim_key()
        if settings.completed_enabled:
            done = find_completed(
                self.entry,
                local_dir=settings.local_dir,
                completed_dir=settings.completed_dir,
                preserve_structure=settings.preserve_structure,
            )
            if done is not None:
                # Recovery (run before any entry) finishes such a move when a record proves it; none did.
                raise ValidationError(
                    f"{display(self.entry)} is the same file as {display(done)} in the completed dir (a move was"
                    " interrupted, and no record proves what it held); nothing moved: check it, then remove one name"
                )
            if settings.duplicate_handling == "error":
                try:
                    completed_destination(
                        self.entry,
                        local_dir=settings.local_dir,
                        completed_dir=settings.completed_dir,
                        preserve_structure=settings.preserve_structure,
                        duplicate_handling=settings.duplicate_handling,
                        now=record.started_at,
                    )
                except MoveError as exc:
                    raise ValidationError(f"{exc} (MGMT_DUPLICATE_HANDLING=error)") from exc
        self._took(Stage.VALIDATE, started)

        # 2. record: the UploadRecord and source FileRecord are first persisted here, saying "compress is next"
        # 3. compress
        started = await self._enter(Stage.COMPRESS)
        await self._compress(file_count)
        self._took(Stage.COMPRESS, started)
        assert self.archive is not None
        earlier = await self.ctx.store.find_successful_upload(checksum_original=self.archive.source_sha256)
        if earlier is not None and earlier.s3_bucket == record.s3_bucket and not self.ctx.overwrite:
            await self._skip(
                f"identical content already uploaded as s3://{earlier.s3_bucket}/{earlier.s3_object_key}"
                f" (operation {earlier.operation_id[:8]})"
            )
            return

        # 4. upload
        started = await self._enter(Stage.UPLOAD)
        await self._upload()
        self._took(Stage.UPLOAD, started)

        # 5. verify
        started = await self._enter(Stage.VERIFY)
        try:
            await self._verify()
        except VerificationError as exc:
            if not record.metadata.get("reused_existing_object"):
                raise
            # An earlier attempt's object claims this archive but does not hold it (corrupted in transit on a
            # server that does not check Content-MD5): it is ours, so it is replaced, and verified again.
            record.metadata["reused_existing_object"] = False
            record.metadata["replaced_unverifiable_object"] = str(exc)
            await self._enter(Stage.UPLOAD)
            await self._send_counted(None, if_absent=False, takeover=None)
            await self._enter(Stage.VERIFY)
            await self._verify()
        self._took(Stage.VERIFY, started)
        await self._supersede_replaced()

        # 6. move (only now: the object is verified)
        status = OperationStatus.SUCCESS
        warning: str | None = None
        if settings.completed_enabled:
            started = await self._enter(Stage.MOVE)
            warning = await self._move()
            self._took(Stage.MOVE, started)
            if warning:
                status = OperationStatus.PARTIAL

        # 7. persist (the final save happens in _finalise, after 8. cleanup)
        record.stage = Stage.DONE
        record.result_path = f"s3://{record.s3_bucket}/{record.s3_object_key}"
        record.finish(status, error=warning)

    def _claim_key(self) -> None:
        """Reserve the entry's key for this run: a second entry with the same key (`upload a/clip.mp4
        b/clip.mp4`) fails instead of replacing the first one's verified object."""
        key, claimed = self.record.s3_object_key, self.ctx.claimed_keys
        holder = claimed.setdefault(key, self.record.target_path)
        if holder != self.record.target_path:
            raise ValidationError(
                f"{self.record.target_path} would be uploaded as s3://{self.record.s3_bucket}/{key}, the key of"
                f" {holder} in this run; upload it in a run of its own (it then meets that object as existing)"
                " or set MGMT_PRESERVE_STRUCTURE"
            )

    async def _skip(self, reason: str) -> None:
        record = self.record
        record.stage = Stage.DONE
        if record.source_file_record:
            record.source_file_record.tags["skipped"] = reason
        # For a skipped entry error_message holds the reason it was skipped.
        record.finish(OperationStatus.SKIPPED, error=reason)

    async def _compress(self, file_count: int) -> None:
        settings = self.ctx.settings
        record = self.record
        bound = archive_size_bound(record.original_size, file_count)
        if bound <= min(settings.multipart_threshold, MAX_SINGLE_PUT):
            part_size = max(bound, settings.part_size)  # one part: a single PUT
        else:
            part_size = plan_part_size(bound, settings.part_size)
        try:
            result = await self.ctx.compress(
                str(self.entry), str(self.staging), part_size, settings.compression_level
            )
        except EntryError:
            raise
        except OSError as exc:
            raise CompressionError(f"cannot compress {display(self.entry)}: {exc}") from exc
        self.archive = result
        if result.source_size != record.original_size:
            raise CompressionError(
                f"{display(self.entry)} changed between listing and compression"
                f" ({record.original_size} -> {result.source_size} bytes)"
            )
        record.compressed_size = result.archive_size
        record.compressed_file_path = display(self.staging)
        record.checksum_original = result.source_sha256
        record.metadata["source_identity"] = result.source_identity.to_dict()
        record.checksum_compressed = result.archive_sha256
        record.part_size = result.part_size
        record.part_count = len(result.part_md5s)
        record.compression_ratio = (
            round(record.original_size / result.archive_size, 4) if result.archive_size else None
        )
        if record.source_file_record:
            record.source_file_record.checksum = f"sha256:{result.source_sha256}"
            if result.skipped:
                record.source_file_record.tags["skipped_special_files"] = str(len(result.skipped))
        record.compressed_file_record = FileRecord(
            name=self.staging.name,
            path=display(self.staging),
            location=Location.LOCAL,
            size=result.archive_size,
            is_directory=False,
            mime_type="application/gzip",
            modified_at=utcnow(),
            checksum=f"sha256:{result.archive_sha256}",
            status=FileStatus.PENDING,
            tags={"part_size": str(result.part_size), "part_count": str(len(result.part_md5s))},
        )

    async def _upload(self) -> None:
        assert self.archive is not None
        record = self.record
        s3 = self.ctx.s3
        key = record.s3_object_key
        single_put = len(self.archive.part_md5s) == 1
        existing = None
        # Overwriting needs no look; a single PUT of a key the run's listing did not hold is sent create-if-absent
        # instead of after a HEAD (one request per entry less); a multipart upload still looks first.
        if not self.ctx.overwrite and not (single_put and self.ctx.keys.absent(key)):
            existing = await s3.head_object(key)
        record.s3_file_record = FileRecord(
            name=key.rsplit("/", 1)[-1],
            path=key,
            location=Location.S3,
            size=self.archive.archive_size,
            is_directory=False,
            mime_type="application/gzip",
            status=FileStatus.UPLOADING,
            tags={
                "original_path": record.target_path,
                "original_size": str(record.original_size),
                "compression_type": "gzip",
                "s3_bucket": record.s3_bucket,
                "upload_operation_id": record.operation_id,
            },
        )
        takeover = None
        if existing is not None:
            decision = await self._judge_existing(existing)
            if decision is _REUSE:
                return
            takeover = decision
        if record.compressed_file_record:
            record.compressed_file_record.status = FileStatus.UPLOADING
        resume = await self._resumable_upload() if len(self.archive.part_md5s) > 1 else None
        try:
            result = await self._send_counted(
                resume, if_absent=existing is None and not self.ctx.overwrite, takeover=takeover
            )
        except ObjectExistsError:
            # Created since we looked: by somebody else, or by our own PUT whose answer was lost.
            existing = await s3.head_object(key)
            takeover = None
            if existing is not None:
                decision = await self._judge_existing(existing)
                if decision is _REUSE:
                    return
                takeover = decision
            result = await self._send_counted(resume, if_absent=existing is None, takeover=takeover)
        record.metadata["multipart"] = result.multipart
        if record.compressed_file_record:
            record.compressed_file_record.status = FileStatus.COMPLETED

    async def _judge_existing(self, existing: ObjectInfo) -> object:
        """Decide about an object already under our key. _REUSE: it is this very archive (nothing to send);
        an owner id: it is a reservation of ours (this attempt's, or a dead attempt's) that the upload takes over;
        None: it may be replaced (the same source content packed otherwise, or an earlier attempt's object that no
        original in the completed dir depends on). UploadError for anything else unless --overwrite was given:
        another run's reservation, or other content."""
        assert self.archive is not None
        record = self.record
        where = f"s3://{record.s3_bucket}/{record.s3_object_key}"
        holder = existing.metadata.get(METADATA_RESERVATION)
        if holder is not None and existing.size == 0:
            if holder == record.operation_id or await self._operation_ended(holder):
                return holder
            raise UploadError(
                f"{where} is being uploaded by another amgmt run (operation {holder[:8]}); it is not"
                " overwritten (if no run is uploading it, use --overwrite)"
            )
        if (
            existing.metadata.get(METADATA_ARCHIVE_SHA256) == self.archive.archive_sha256
            and existing.size == self.archive.archive_size
        ):
            # This very archive is already there (an earlier run stopped before the move): prove it in verify
            # instead of sending it again.
            record.metadata["reused_existing_object"] = True
            self._report_remaining()
            return _REUSE
        claimed = existing.metadata.get(METADATA_SOURCE_SHA256)
        if claimed == self.archive.source_sha256:
            # Same source content packed differently (other mtimes, part size or amgmt version): replacing it
            # loses nothing, and the new object is verified like any other.
            record.metadata["replaced_identical_content"] = True
            return None
        if claimed is not None and await self._unconfirmed_upload_of_ours(claimed):
            # Our own earlier attempt of other content that never completed a move (its source changed, or the
            # move failed): nothing in the completed dir holds it, and the entry now holds this content.
            record.metadata["replaced_unconfirmed_object"] = True
            return None
        raise UploadError(f"{where} already exists with other content; use --overwrite to replace it")

    async def _operation_ended(self, operation_id: str) -> bool:
        """Whether `operation_id` is an operation of this database that is not in progress (a dead attempt)."""
        try:
            owner = await self.ctx.store.get_operation(operation_id)
        except NotFoundError:
            return False
        return owner.operation_id == operation_id and owner.status != OperationStatus.PENDING

    async def _unconfirmed_upload_of_ours(self, source_sha256: str) -> bool:
        """Whether the object of `source_sha256` at our key was put there by an upload of ours that never succeeded,
        none of ours with that content having succeeded (no original in the completed dir depends on it)."""
        record = self.record
        uploads = await self.ctx.store.find_uploads_by_key(bucket=record.s3_bucket, key=record.s3_object_key)
        ours = [u for u in uploads if u.checksum_original == source_sha256 and u.operation_id != record.operation_id]
        return bool(ours) and all(u.status not in (OperationStatus.SUCCESS, OperationStatus.PENDING) for u in ours)

    async def _supersede_replaced(self) -> None:
        """After an object was replaced at our key, the older uploads of other archives there say so (as `delete`
        does): their content is no longer in S3."""
        record = self.record
        metadata = record.metadata
        replaced = self.ctx.overwrite or any(
            metadata.get(flag)
            for flag in ("replaced_identical_content", "replaced_unconfirmed_object", "replaced_unverifiable_object")
        )
        if not replaced or metadata.get("reused_existing_object"):
            return
        for older in await self.ctx.store.find_uploads_by_key(bucket=record.s3_bucket, key=record.s3_object_key):
            s3_file = older.s3_file_record
            if (
                older.operation_id == record.operation_id
                or older.checksum_compressed == record.checksum_compressed
                or s3_file is None
                or s3_file.status != FileStatus.COMPLETED
            ):
                continue
            s3_file.status = FileStatus.DELETED
            s3_file.tags["superseded_by_operation_id"] = record.operation_id
            s3_file.tags["superseded_at"] = utcnow().isoformat()
            await self.ctx.store.save_operation(older)

    async def _send_counted(self, resume: str | None, *, if_absent: bool, takeover: str | None) -> UploadResult:
        """The archive sent (or its upload resumed), what it cost counted into the record."""
        stats = UploadStats()
        record = self.record
        try:
            return await self._send(resume, stats, if_absent=if_absent, takeover=takeover)
        finally:
            metadata = record.metadata
            metadata["retries"] = metadata.get("retries", 0) + stats.retries
            metadata["parts_sent"] = metadata.get("parts_sent", 0) + stats.parts_sent
            metadata["parts_reused"] = metadata.get("parts_reused", 0) + stats.parts_reused
            if stats.resumed_upload_id:
                metadata["resumed_upload_id"] = stats.resumed_upload_id

    async def _send(
        self, resume: str | None, stats: UploadStats, *, if_absent: bool, takeover: str | None
    ) -> UploadResult:
        assert self.archive is not None
        record = self.record
        return await self.ctx.s3.upload_file(
            record.s3_object_key,
            str(self.staging),
            size=self.archive.archive_size,
            part_size=self.archive.part_size,
            part_md5s=self.archive.part_md5s,
            metadata={
                METADATA_SOURCE_SHA256: self.archive.source_sha256,
                METADATA_ARCHIVE_SHA256: self.archive.archive_sha256,
                METADATA_SOURCE_SIZE: str(record.original_size),
            },
            storage_class=self.ctx.settings.storage_class,
            budget=self.ctx.budget,
            on_progress=self._progress,
            journal=StoreJournal(self.ctx.store, record, self.archive),
            resume_upload_id=resume,
            stats=stats,
            if_absent=if_absent,
            owner=record.operation_id,
            takeover=takeover,
        )

    async def _resumable_upload(self) -> str | None:
        """An interrupted multipart upload of this very archive to resume; stale ones of other content are aborted."""
        assert self.archive is not None
        record = self.record
        resume = None
        for journaled in await self.ctx.store.open_multiparts(bucket=record.s3_bucket, key=record.s3_object_key):
            if not await self._operation_ended(journaled.operation_id):
                continue  # a run in progress elsewhere (sharing this database) owns it: never touched
            same = (journaled.archive_sha256, journaled.part_size) == (
                self.archive.archive_sha256,
                self.archive.part_size,
            )
            if same and resume is None:
                resume = journaled.upload_id
                continue
            with contextlib.suppress(UploadError):
                await self.ctx.s3.abort_multipart(record.s3_object_key, journaled.upload_id)
            await self.ctx.store.journal_multipart_state(journaled.upload_id, "aborted")
        return resume

    async def _verify(self) -> None:
        assert self.archive is not None
        record = self.record
        key = record.s3_object_key
        info = await self.ctx.s3.head_object(key)
        if info is None:
            raise VerificationError(f"s3://{record.s3_bucket}/{key} is missing after the upload")
        if info.size != self.archive.archive_size:
            raise VerificationError(
                f"s3://{record.s3_bucket}/{key} has {info.size} bytes, the archive {self.archive.archive_size}"
            )
        claimed = info.metadata.get(METADATA_SOURCE_SHA256)
        if claimed is not None and claimed != self.archive.source_sha256:
            raise VerificationError(f"s3://{record.s3_bucket}/{key} carries another source checksum")
        parts = self.archive.part_md5s
        predicted = expected_etag(parts, multipart=len(parts) > 1)
        if info.etag == predicted:
            method = "etag"
        else:
            # The endpoint's ETag is not the predicted MD5 scheme (other part size, SSE, R2...): read it back.
            # Read exactly the object just HEADed (If-Match): one written meanwhile fails the read, not the check.
            digest = await self.ctx.s3.object_sha256(key, if_match=info.etag)
            if digest != self.archive.archive_sha256:
                raise VerificationError(
                    f"s3://{record.s3_bucket}/{key} does not match the archive (read-back SHA-256 differs)"
                )
            method = "sha256-readback"
        record.verification_method = method
        record.checksum_s3_etag = info.etag
        record.s3_storage_class = info.storage_class
        record.compressed_size = info.size
        if record.s3_file_record:
            record.s3_file_record.status = FileStatus.COMPLETED
            record.s3_file_record.checksum = f"etag:{info.etag}"
            record.s3_file_record.modified_at = info.last_modified or utcnow()
            record.s3_file_record.tags["verified_by"] = method

    async def _move(self) -> str | None:
        """Stage 6. Returns a warning when the move failed (the upload stands; the operation is partial); raises
        SourceChangedError when the original is no longer what was packed (it stays local; recorded "changed")."""
        assert self.archive is not None
        settings = self.ctx.settings
        record = self.record
        try:
            final = await anyio.to_thread.run_sync(
                functools.partial(
                    move_to_completed,
                    self.entry,
                    local_dir=settings.local_dir,
                    completed_dir=settings.completed_dir,
                    preserve_structure=settings.preserve_structure,
                    duplicate_handling=settings.duplicate_handling,
                    now=record.started_at,
                    expected_identity=self.archive.source_identity,
                    expected_digest=self.archive.source_sha256,
                    operation_id=record.operation_id,
                )
            )
        except MoveError as exc:
            return f"move: uploaded and verified, but the original stays in place: {exc}"
        record.completed_dir_path = display(final)
        record.completed_file_record = FileRecord(
            name=display(final.name),
            path=display(final),
            location=Location.COMPLETED,
            size=record.original_size,
            is_directory=bool(record.source_file_record and record.source_file_record.is_directory),
            checksum=record.source_file_record.checksum if record.source_file_record else None,
            status=FileStatus.COMPLETED,
            modified_at=utcnow(),
            tags={
                "s3_bucket": record.s3_bucket,
                "s3_object_key": record.s3_object_key,
                "upload_operation_id": record.operation_id,
                "upload_timestamp": utcnow().isoformat(),
            },
        )
        if record.source_file_record:
            record.source_file_record.status = FileStatus.COMPLETED
            record.source_file_record.tags["moved_to"] = display(final)
        return None

    async def _cleanup(self) -> None:
        """Stage 8: the staging archive (and a partial one left by a killed worker) is removed."""
        started = time.perf_counter()
        removed = False
        for path in (self.staging, Path(str(self.staging) + PARTIAL_SUFFIX)):
            try:
                await anyio.to_thread.run_sync(os.unlink, path)
                removed = True
            except FileNotFoundError:
                pass
            except OSError as exc:
                # Best effort: the entry's outcome stands; `amgmt cleanup` (or the next run) retries the removal.
                self.record.metadata["cleanup_error"] = f"cannot remove {display(path)}: {exc.strerror or exc}"
                return
        if self.record.compressed_file_record is not None:
            self.record.compressed_file_record.status = FileStatus.DELETED
        elif removed:
            self.record.metadata["removed_partial_archive"] = True
        self._took(Stage.CLEANUP, started)
