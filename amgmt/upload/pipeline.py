"""One entry through the eight stages: validate, record, compress, upload, verify, move, persist, clean up.

It owns that entry's records (saved at every stage transition) and its failure cleanups (staging archive, multipart
abort via the S3 boundary). It never moves an original before the object is verified, and it never prints.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from amgmt.checksums import StoredChecksum
from amgmt.config import Settings
from amgmt.errors import (
    AmgmtError,
    ClaimLostError,
    CompressionError,
    EntryError,
    MoveError,
    ObjectExistsError,
    SourceChangedError,
    StoreError,
    UploadError,
    ValidationError,
    VerificationError,
)
from amgmt.local.archive import ArchiveResult, part_md5s
from amgmt.local.completed import completed_destination, find_completed, move_to_completed
from amgmt.local.destinations import CompletedDir
from amgmt.local.entries import PlannedEntry, validate_entry
from amgmt.local.writers import SharedScan
from amgmt.models import (
    FileRole,
    FileStatus,
    OperationStatus,
    Stage,
    UploadRecord,
    current_user,
    new_operation_id,
    utcnow,
)
from amgmt.naming import PARTIAL_SUFFIX, display, staging_name
from amgmt.parts import MAX_SINGLE_PUT, archive_size_bound, plan_part_size
from amgmt.progress import Reporter, SilentReporter
from amgmt.s3 import ByteBudget, ObjectOptions, S3Bucket
from amgmt.store import Store
from amgmt.upload.claims import RunClaims
from amgmt.upload.compressor import Compressor
from amgmt.upload.ownership import (
    KnownKeys,
    Verdict,
    claim_key,
    judge_existing,
    rename_record,
    supersede_replaced,
)
from amgmt.upload.records import (
    record_archive,
    record_moved,
    record_verified,
    s3_file_record,
    source_file_record,
)
from amgmt.upload.sending import ArchiveSender
from amgmt.upload.verification import verify_object

SAVE_TIMEOUT = 10.0
# Outcomes whose entry counts as processed in full on the progress bar (a skipped one needs no more work).
_FILLS_THE_BAR = (OperationStatus.SUCCESS, OperationStatus.PARTIAL, OperationStatus.SKIPPED)


@dataclass
class PipelineContext:
    """Everything one entry's pipeline needs, passed explicitly (no globals)."""

    settings: Settings
    store: Store
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
    # One /proc scan for writers serves every move of the run that asked before it started.
    find_writers: SharedScan = field(default_factory=SharedScan)
    # A catalog several runs share: this run's claims of its entries, checked before every irreversible step.
    claims: RunClaims | None = None


class EntryPipeline:
    """Runs one entry through the stages, keeping its UploadRecord current in the store."""

    def __init__(self, ctx: PipelineContext, planned: PlannedEntry) -> None:
        self.ctx = ctx
        self.planned = planned
        self.entry = entry = planned.path
        settings = ctx.settings
        self.record = UploadRecord(
            operation_id=new_operation_id(),
            target_path=display(entry),
            target_name=display(entry.name),
            started_at=utcnow(),
            s3_bucket=settings.bucket or "",
            s3_object_key=planned.key,
            s3_storage_class=settings.storage_class,
            user=ctx.user,
            command_args=dict(ctx.command_args),
        )
        if display(entry) != os.fsdecode(entry):
            # The record's text cannot give the path back (undecodable bytes): keep the bytes for `amgmt retry`.
            self.record.metadata["target_path_hex"] = os.fsencode(entry).hex()
        self.staging = settings.staging_dir / staging_name(self.record.operation_id, entry.name)
        self.archive: ArchiveResult | None = None
        self._sent_checksum: StoredChecksum | None = None  # the whole object's, as this run's upload sent it
        self._timings: dict[str, float] = {}
        self._reported = 0  # source-equivalent bytes already reported to the progress bar
        self._sent = 0  # archive bytes sent so far, and the whole percentage of the archive they make
        self._percent = 0
        self._fenced_until = -math.inf  # (event loop clock) until when the last fence vouches for the claim

    # -- bookkeeping -------------------------------------------------------------------------------------------

    def _to_save(self) -> UploadRecord:
        """The record as it is to be saved now (its metadata synced, the stage times so far)."""
        self.record.sync_metadata()
        self.record.metadata["stage_seconds"] = {k: round(v, 6) for k, v in self._timings.items()}
        return self.record

    async def _save(self) -> None:
        await save_all(self.ctx.store, [self])

    async def _enter(self, stage: Stage) -> float:
        return await enter_all([self], stage)

    def _took(self, stage: Stage, started: float) -> None:
        self._timings[str(stage)] = self._timings.get(str(stage), 0.0) + time.perf_counter() - started

    def _progress(self, archive_bytes: int) -> None:
        if not self.archive or not self.archive.archive_size:
            return
        share = archive_bytes * self.record.original_size // self.archive.archive_size
        share = min(share, self.record.original_size - self._reported)
        self._reported += share
        self.ctx.reporter.advance(share)
        self._sent += archive_bytes
        percent = min(100, self._sent * 100 // self.archive.archive_size)
        if percent != self._percent:  # the entry's line on the progress display: at most 100 calls per upload
            self._percent = percent
            self.ctx.reporter.entry_stage(self.record, f"{Stage.UPLOAD} {percent}%")

    # -- the run -----------------------------------------------------------------------------------------------

    async def run(self) -> UploadRecord:
        """All stages. Entry failures end in the record (never raised); run-wide ones and cancellation propagate."""
        try:
            await self._stages()
        except BaseException as exc:
            if self._end_with(exc):
                await self._finalise()
                raise
        await self._finalise(must_save=True)
        return self.record

    def _end_with(self, exc: BaseException) -> bool:
        """Record how `exc` ended the entry; True when it must propagate after the final save (a run-wide error,
        a bug, a cancellation), False for the entry's own failure (the batch goes on)."""
        record = self.record
        if isinstance(exc, ClaimLostError):
            # Another run holds the entry now and ends it: nothing irreversible was done here.
            record.finish(OperationStatus.CANCELLED, error=f"{record.stage}: {exc}")
            record.metadata["claim_lost"] = True
            return False
        if isinstance(exc, SourceChangedError):
            # Uploaded and verified as packed, but the original is no longer that: it stays (or is put back) local.
            record.finish(OperationStatus.CHANGED, error=f"{exc.stage}: {exc}")
            if record.source_file_record:
                record.source_file_record.tags["changed"] = str(exc)
            return False
        if isinstance(exc, EntryError):
            # An S3 error (UploadError) can come from any stage that talks to S3 (a HEAD in verify): name the stage.
            stage = str(record.stage) if isinstance(exc, UploadError) else exc.stage
            record.finish(OperationStatus.FAILED, error=f"{stage}: {exc}")
            self._mark_failed(str(exc), stage)
            return False
        if isinstance(exc, AmgmtError):  # run-wide (StorageError, StoreError): recorded, then the batch stops
            record.finish(OperationStatus.FAILED, error=f"{record.stage}: {exc}")
            self._mark_failed(str(exc), str(record.stage))
        elif isinstance(exc, Exception):  # a bug: recorded as such, and raised with its traceback
            record.finish(OperationStatus.FAILED, error=f"{record.stage}: internal error: {type(exc).__name__}: {exc}")
        else:
            record.finish(OperationStatus.CANCELLED, error=f"{record.stage}: interrupted")
        return True

    def _mark_failed(self, message: str, stage: str) -> None:
        """The FileRecord of the stage that failed says so too."""
        role = {
            "validate": FileRole.SOURCE,
            "compress": FileRole.COMPRESSED,
            "upload": FileRole.S3,
            "verify": FileRole.S3,
        }.get(stage)
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
        await finalise_all([self], must_save=must_save, cleaned=True)

    def _report_remaining(self) -> None:
        rest = self.record.original_size - self._reported
        if rest > 0:
            self._reported += rest
            self.ctx.reporter.advance(rest)

    async def _stages(self) -> None:
        """The eight stages, in order; each saves the record as it starts (`_enter`)."""
        # 1. validate
        started = time.perf_counter()
        self._validate()
        self._took(Stage.VALIDATE, started)
        # 2. record: the UploadRecord and source FileRecord are first persisted here, saying "compress is next"
        # 3. compress
        started = await self._enter(Stage.COMPRESS)
        await self._compress()
        self._took(Stage.COMPRESS, started)
        if await self._already_uploaded():
            return
        # 4. upload
        started = await self._enter(Stage.UPLOAD)
        await self._upload()
        self._took(Stage.UPLOAD, started)
        # 5. verify
        started = await self._enter(Stage.VERIFY)
        await self._verify_or_replace()
        self._took(Stage.VERIFY, started)
        await self._verified()
        # 6. move (only now: the object is verified)
        warning: str | None = None
        if self.ctx.settings.completed_enabled:
            started = await self._enter(Stage.MOVE)
            await self._fence("moving the original")
            warning = await self._move()
            self._took(Stage.MOVE, started)
        # 7. persist (the final save happens in _finalise, after 8. cleanup)
        self._persist(warning)

    async def _verified(self) -> None:
        """After stage 5: the archive's member list recorded (what `search` and `download --member` find), and the
        older records of an object this upload replaced marked superseded."""
        if self.archive is not None and self.archive.members:
            await self.ctx.store.save_members(self.record.operation_id, self.archive.members)
        await supersede_replaced(self.ctx.store, self.record, overwrite=self.ctx.overwrite)

    def _persist(self, warning: str | None) -> None:
        """Stage 7: done; partial when the move failed (`warning`)."""
        record = self.record
        record.stage = Stage.DONE
        record.result_path = f"s3://{record.s3_bucket}/{record.s3_object_key}"
        record.finish(OperationStatus.PARTIAL if warning else OperationStatus.SUCCESS, error=warning)

    def _validate(self) -> None:
        """Stage 1: a regular file or directory inside the local dir, its key claimed for this run, and (with the
        completed dir) not the same inode as its destination; its source FileRecord from the plan."""
        settings = self.ctx.settings
        record = self.record
        st = validate_entry(self.entry, settings.local_dir)
        record.source_file_record = source_file_record(self.planned, st)
        record.original_size = self.planned.size
        claim_key(self.ctx.claimed_keys, record, rename=settings.on_conflict == "rename")
        if not settings.completed_enabled:
            return
        completed = CompletedDir.from_settings(settings)
        done = find_completed(self.entry, completed)
        if done is not None:
            # Recovery (run before any entry) finishes such a move when a record proves it; none did.
            raise ValidationError(
                f"{display(self.entry)} is the same file as {display(done)} in the completed dir (a move was"
                " interrupted, and no record proves what it held); nothing moved: check it, then remove one name"
            )
        if settings.duplicate_handling == "error":
            try:
                completed_destination(self.entry, completed, now=record.started_at)
            except MoveError as exc:
                raise ValidationError(f"{exc} (MGMT_DUPLICATE_HANDLING=error)") from exc

    async def _already_uploaded(self) -> bool:
        """After stage 3: the same content already uploaded successfully to this bucket skips the entry (unless
        --overwrite)."""
        assert self.archive is not None
        record = self.record
        earlier = await self.ctx.store.find_successful_upload(checksum_original=self.archive.source_sha256)
        if earlier is None or earlier.s3_bucket != record.s3_bucket or self.ctx.overwrite:
            return False
        await self._skip(
            f"identical content already uploaded as s3://{earlier.s3_bucket}/{earlier.s3_object_key}"
            f" (operation {earlier.operation_id[:8]})"
        )
        return True

    async def _verify_or_replace(self) -> None:
        """Stage 5. A reused object (found at the key as this very archive) that fails verification claims this
        archive without holding it (corrupted in transit on a server that does not check Content-MD5): it is
        ours, so it is replaced, and verified again."""
        record = self.record
        try:
            await self._verify()
        except VerificationError as exc:
            if not record.metadata.get("reused_existing_object"):
                raise
            record.metadata["reused_existing_object"] = False
            record.metadata["replaced_unverifiable_object"] = str(exc)
            await self._enter(Stage.UPLOAD)
            self._fenced_until = -math.inf  # this PUT replaces an object: the claim checked again right before it
            result = await self._sender().send(None, if_absent=False, takeover=None)
            self._sent_checksum = result.checksum
            await self._enter(Stage.VERIFY)
            await self._verify()

    async def _skip(self, reason: str) -> None:
        record = self.record
        record.stage = Stage.DONE
        if record.source_file_record:
            record.source_file_record.tags["skipped"] = reason
        # For a skipped entry error_message holds the reason it was skipped.
        record.finish(OperationStatus.SKIPPED, error=reason)

    async def _compress_job(self) -> tuple[str, str, int, int, bool]:
        """Stage 3's job for a Compressor: (source, archive path, part size, compression level, part MD5s)."""
        settings = self.ctx.settings
        bound = archive_size_bound(self.record.original_size, self.planned.file_count)
        single = bound <= min(settings.multipart_threshold, MAX_SINGLE_PUT)
        part_size = max(bound, settings.part_size) if single else plan_part_size(bound, settings.part_size)
        # Part MD5s only where the endpoint needs them (probe.py): a planned multipart archive that ends as one
        # part on an endpoint that proves multipart uploads only gets its MD5 afterwards (`_with_md5s_if_needed`).
        support = await self.ctx.s3.checksum_support()
        md5 = support.needs_md5(multipart=not single)
        return str(self.entry), str(self.staging), part_size, settings.compression_level, md5

    async def _with_md5s_if_needed(self, result: ArchiveResult) -> ArchiveResult:
        """`result` with its part MD5s when it was packed without them and turned out to need them."""
        support = await self.ctx.s3.checksum_support()
        if not result.part_md5s and support.needs_md5(multipart=result.part_count > 1):
            return await _with_md5s(result)
        return result

    async def _compress(self) -> None:
        try:
            result = await self.ctx.compress(*await self._compress_job())
            result = await self._with_md5s_if_needed(result)
        except EntryError:
            raise
        except OSError as exc:
            raise self._compress_error(exc) from exc
        self._packed(result)

    def _compress_error(self, exc: OSError) -> CompressionError:
        """A compression job's OSError is the entry's CompressionError."""
        return CompressionError(f"cannot compress {display(self.entry)}: {exc}")

    def _packed(self, result: ArchiveResult) -> None:
        """Stage 3's result: the archive must hold what was listed; its digests go into the records."""
        record = self.record
        self.archive = result
        if result.source_size != record.original_size:
            raise CompressionError(
                f"{display(self.entry)} changed between listing and compression"
                f" ({record.original_size} -> {result.source_size} bytes)"
            )
        record_archive(record, result, self.staging)

    async def _upload(self) -> None:
        assert self.archive is not None
        record = self.record
        key = record.s3_object_key
        # Overwriting needs no look; a single PUT of a key the run's listing did not hold is sent create-if-absent
        # instead of after a HEAD (one request per entry less); a multipart upload still looks first.
        single_put = self.archive.part_count == 1
        look = not self.ctx.overwrite and not (single_put and self.ctx.keys.absent(key))
        record.s3_file_record = s3_file_record(record, self.archive)
        verdict = await self._look(key) if look else None
        if record.s3_object_key != key:  # --on-conflict rename
            record.s3_file_record = s3_file_record(record, self.archive)
        if verdict is not None and verdict.reuse:
            return
        if record.compressed_file_record:
            record.compressed_file_record.status = FileStatus.UPLOADING
        sender = self._sender()
        resume = await sender.resumable_upload() if not single_put else None
        try:
            result = await sender.send(
                resume,
                if_absent=verdict is None and not self.ctx.overwrite,
                takeover=verdict.takeover if verdict else None,
            )
        except ObjectExistsError:
            # Created since we looked: by somebody else, or by our own PUT whose answer was lost.
            verdict = await self._look(key := record.s3_object_key)
            if record.s3_object_key != key:
                record.s3_file_record = s3_file_record(record, self.archive)
            if verdict is not None and verdict.reuse:
                return
            result = await sender.send(
                resume, if_absent=verdict is None, takeover=verdict.takeover if verdict else None
            )
        record.metadata["multipart"] = result.multipart
        self._sent_checksum = result.checksum
        if record.compressed_file_record:
            record.compressed_file_record.status = FileStatus.COMPLETED

    async def _look(self, key: str) -> Verdict | None:
        """HEAD the key: None when it is free, else what the object there means for this upload (ownership.py). With
        --on-conflict rename, a conflict moves the record to the next renamed key, looked at in turn."""
        assert self.archive is not None
        on_conflict = self.ctx.settings.on_conflict
        while True:
            existing = await self.ctx.s3.head_object(key)
            if existing is None:
                return None
            verdict = await judge_existing(self.ctx.store, self.record, self.archive, existing, on_conflict=on_conflict)
            if not verdict.rename:
                break
            rename_record(self.ctx.claimed_keys, self.record)  # --on-conflict rename: look at the next key
            key = self.record.s3_object_key
        if verdict.reuse:
            self._report_remaining()
        return verdict

    def _sender(self) -> ArchiveSender:
        assert self.archive is not None
        ctx = self.ctx
        return ArchiveSender(
            ctx.s3,
            ctx.store,
            ctx.budget,
            ctx.settings.storage_class,
            self.record,
            self.archive,
            self.staging,
            self._progress,
            ObjectOptions.from_settings(ctx.settings),
            fence=functools.partial(self._fence, "writing the key") if ctx.claims is not None else None,
        )

    async def _fence(self, doing: str) -> None:
        """With a shared catalog, before an irreversible step: ClaimLostError unless this run still holds the
        entry's claim. A fence renews the claim for a whole lease, so one within the last half lease (by this
        process's clock: a stall makes it run past) stands for it; else the database is asked."""
        claims = self.ctx.claims
        if claims is None or anyio.current_time() < self._fenced_until:
            return
        now = anyio.current_time()
        await claims.check(self.record.target_name, doing)
        self._fenced_until = now + claims.seconds / 2

    async def _verify(self) -> None:
        assert self.archive is not None
        record = self.record
        verified = await verify_object(
            self.ctx.s3, record.s3_bucket, record.s3_object_key, self.archive, sent=self._sent_checksum
        )
        record_verified(record, verified.info, verified.method)

    async def _move(self) -> str | None:
        """Stage 6. Returns a warning when the move failed (the upload stands; the operation is partial); raises
        SourceChangedError when the original is no longer what was packed (it stays local; recorded "changed")."""
        try:
            final = await anyio.to_thread.run_sync(self._move_job())
        except MoveError as exc:
            return self._not_moved(exc)
        record_moved(self.record, final)
        return None

    def _move_job(self) -> functools.partial[Path]:
        """Stage 6's move, to run in a thread: the verified original into the completed dir (its destination)."""
        assert self.archive is not None
        record = self.record
        return functools.partial(
            move_to_completed,
            self.entry,
            CompletedDir.from_settings(self.ctx.settings),
            now=record.started_at,
            expected_identity=self.archive.source_identity,
            expected_digest=self.archive.source_sha256,
            operation_id=record.operation_id,
            find_writers=self.ctx.find_writers,
        )

    @staticmethod
    def _not_moved(exc: MoveError) -> str:
        return f"move: uploaded and verified, but the original stays in place: {exc}"

    async def _cleanup(self) -> None:
        """Stage 8: the staging archive (and a partial one left by a killed worker) is removed."""
        await anyio.to_thread.run_sync(self._remove_staging)

    def _remove_staging(self) -> None:
        """Stage 8's work (blocking: in a thread)."""
        started = time.perf_counter()
        removed = False
        for path in (self.staging, Path(str(self.staging) + PARTIAL_SUFFIX)):
            try:
                os.unlink(path)
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


async def _with_md5s(archive: ArchiveResult) -> ArchiveResult:
    """`archive` with its part MD5s, read from the staging archive once (an archive packed without them that turned
    out to need them: smaller than planned, one part on an endpoint that proves only multipart uploads)."""
    job = functools.partial(part_md5s, archive.archive_path, archive.part_size)
    return dataclasses.replace(archive, part_md5s=await anyio.to_thread.run_sync(job))


# -- what one entry and a batch of them share (the small-entry lane, upload/lane.py, drives many at once) --------


async def save_all(store: Store, pipelines: Sequence[EntryPipeline]) -> None:
    """The entries' records as they are now, in one transaction."""
    await store.save_operations([p._to_save() for p in pipelines])


async def enter_all(pipelines: Sequence[EntryPipeline], stage: Stage) -> float:
    """The entries enter `stage`, saved (in one transaction) before any of its work starts; the start time."""
    if pipelines:
        for pipeline in pipelines:
            pipeline.record.stage = stage
            if stage == Stage.UPLOAD:  # (again, when an unverifiable object is replaced: its percentages start over)
                pipeline._sent = pipeline._percent = 0
            pipeline.ctx.reporter.entry_stage(pipeline.record, str(stage) + (" 0%" if stage == Stage.UPLOAD else ""))
        await save_all(pipelines[0].ctx.store, pipelines)
    return time.perf_counter()


def _remove_all_staging(pipelines: Sequence[EntryPipeline]) -> None:
    for pipeline in pipelines:
        pipeline._remove_staging()


async def finalise_all(pipelines: Sequence[EntryPipeline], *, must_save: bool, cleaned: bool = False) -> None:
    """Stage 8 (unless `cleaned`: their staging archives removed, in one thread hand-over) and the entries' last
    save, in one transaction; shielded so that Ctrl-C cannot leave a staging file or a stale record.

    With `must_save` (the entries ended by themselves), a database that cannot take the records stops the run
    (StoreError): a result nobody can look up later is not a result. On the way out of an error or a
    cancellation, the save is best effort: the error already propagating says more."""
    if not pipelines:
        return
    ctx = pipelines[0].ctx
    with anyio.CancelScope(shield=True):
        if not cleaned:
            await anyio.to_thread.run_sync(_remove_all_staging, pipelines)
        for pipeline in pipelines:
            if pipeline.record.status in _FILLS_THE_BAR:
                pipeline._report_remaining()  # a failed or cancelled entry's bytes were not processed: no jump to 100%
        try:
            with anyio.fail_after(SAVE_TIMEOUT):
                await save_all(ctx.store, pipelines)
        except (StoreError, TimeoutError) as exc:
            if must_save:
                if isinstance(exc, StoreError):
                    raise
                raise StoreError(f"the metadata database did not take a record within {SAVE_TIMEOUT:g} s") from exc
        finally:
            for pipeline in pipelines:
                ctx.reporter.entry_done(pipeline.record)


async def fence_all(pipelines: Sequence[EntryPipeline], doing: str) -> dict[int, BaseException | None]:
    """With a shared catalog, the fence of many entries in one statement (EntryPipeline._fence; only those whose last
    claim or fence is older than half a lease): a ClaimLostError for each entry whose claim another run took over (by
    id of its pipeline), none for the others."""
    if not pipelines or pipelines[0].ctx.claims is None:
        return {}
    claims = pipelines[0].ctx.claims
    now = anyio.current_time()
    due = [p for p in pipelines if now >= p._fenced_until]  # the others' last claim or fence stands for one
    if not due:
        return {}
    lost = await claims.fence([p.record.target_name for p in due])
    ended: dict[int, BaseException | None] = {}
    for pipeline in due:
        if pipeline.record.target_name in lost:
            ended[id(pipeline)] = claims.lost(doing)
        else:
            pipeline._fenced_until = now + claims.seconds / 2
    return ended
