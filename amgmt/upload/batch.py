"""Many entries at once: choosing them, the worker task group, the shared limits, and the batch report.

The only place that fans out entries (one task group of `concurrency` workers fed by a bounded stream). It opens
the store and the S3 connection for the run and stops the whole batch on a run-wide error.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from amgmt.config import Settings
from amgmt.errors import AmgmtError, ConfigError, NotFoundError, StorageError, UploadError
from amgmt.local.entries import PlannedEntry, entry_key, plan, resolve_names
from amgmt.models import OperationRecord, OperationStatus, UploadRecord
from amgmt.naming import display
from amgmt.parts import archive_size_bound
from amgmt.progress import Reporter, SilentReporter
from amgmt.s3 import ByteBudget, ClientOptions, S3Bucket
from amgmt.store import Store, metadata_store, store_exists
from amgmt.text import counted
from amgmt.upload.claims import ClaimItem, RunClaims, run_lease
from amgmt.upload.compressor import CompressionPool, Compressor
from amgmt.upload.hooks import EntryHook
from amgmt.upload.lane import BATCH_SIZE, BATCHES_IN_FLIGHT, SmallBatch, is_small
from amgmt.upload.ownership import KnownKeys
from amgmt.upload.pipeline import EntryPipeline, PipelineContext
from amgmt.upload.recovery import (
    Cleanup,
    abort_stale_multiparts,
    close_interrupted,
    dir_lock,
    remove_stale_staging,
)
from amgmt.upload.report import BatchReport

log = logging.getLogger("amgmt")  # run-level lines only; never credentials


GATHER_TURNS = 4  # event-loop turns a forming batch of small entries waits for one more entry before it goes
LISTING_MIN_ENTRIES = 20  # entries per listing page allowed before the run lists its prefix instead of HEADs
RETRYABLE = (
    OperationStatus.FAILED,
    OperationStatus.CANCELLED,
    OperationStatus.PARTIAL,
    OperationStatus.CHANGED,  # the object holds the entry as packed; the new content is still to upload
)


async def retry_targets(settings: Settings, *, ids: list[str], failed: bool) -> tuple[list[Path], list[str]]:
    """`amgmt retry`: the entries of the named operations, or (`failed`) of every upload whose latest attempt
    failed, was cancelled, is partial or was interrupted, when they are still in the local dir; plus notes on those
    left out.

    The local dir's lock is held while the records are read: no run is working on it, so its uploads still
    `pending` belong to a run that was killed (the next run's recovery records them cancelled) and are retried too.
    BusyError (exit 5) while a run holds it, as the upload itself would be refused."""
    if not store_exists(settings):
        raise NotFoundError(f"no metadata database at {display(settings.db_path)} (nothing uploaded from here yet?)")
    local = display(settings.local_dir)

    def interrupted(record: OperationRecord) -> bool:
        return (
            record.status == OperationStatus.PENDING
            and (record.target_path == local or record.target_path.startswith(local + "/"))
            and store.made_here(record)
        )

    with dir_lock(settings):
        async with metadata_store(settings) as store:
            chosen = [await store.get_operation(op_id) for op_id in ids]
            if failed:
                latest: dict[str, Any] = {}
                for record in await store.list_operations(operation_type="upload", limit=None):
                    latest.setdefault(record.target_path, record)  # newest first
                chosen += [r for r in latest.values() if r.status in RETRYABLE or interrupted(r)]
    paths: list[Path] = []
    notes: list[str] = []
    for record in chosen:
        short = record.operation_id[:8]
        if record.operation_type != "upload":
            notes.append(f"{short}: a {record.operation_type} operation, not an upload")
        elif record.status == OperationStatus.PENDING and not interrupted(record):
            notes.append(f"{short} {record.target_name}: in progress in another run (local dir or host), not retried")
        elif record.status not in RETRYABLE and not interrupted(record):
            notes.append(f"{short} {record.target_name}: {record.status}, nothing to retry")
        else:
            raw = record.metadata.get("target_path_hex")
            target = os.fsdecode(bytes.fromhex(raw)) if raw else record.target_path
            try:
                [path] = resolve_names(settings, [target])
            except AmgmtError as exc:
                notes.append(f"{short} {record.target_name}: cannot retry: {exc}")
                continue
            if path not in paths:
                paths.append(path)
    return paths, notes


# -- the run --------------------------------------------------------------------------------------------------


async def recover_interrupted(
    settings: Settings, store: Store, s3: S3Bucket, entries: list[Path], claims: RunClaims | None = None
) -> Cleanup:
    """Before any entry starts (the run lock is held, or with a shared catalog under the entries' claims): close
    records of a run that died, remove its staging archives, and abort multipart uploads to this run's keys that
    the journal does not know (a crash between create and journal; not with a shared catalog, where such an upload
    may be another run's between the two: `amgmt cleanup` removes those once older than --older-than). Journaled
    open uploads are kept: their entries resume them."""
    found = Cleanup()
    await close_interrupted(settings, store, found, claims=claims)
    await remove_stale_staging(settings.staging_dir, store, found)
    keys = {entry_key(settings, p) for p in entries}
    if keys and claims is None:
        await abort_stale_multiparts(s3, store, settings.object_prefix, found, keys=keys, keep_journaled=True)
    return found


async def _stop_when(stop: anyio.Event, scope: anyio.CancelScope, report: BatchReport) -> None:
    await stop.wait()
    report.interrupted = True
    scope.cancel()


def _private_dir(path: Path) -> None:
    """Create a directory only its owner can enter (an existing one keeps the mode its owner gave it)."""
    if path.is_dir():
        return
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create {display(path)}: {exc.strerror}") from exc


async def upload_batch(
    settings: Settings,
    entries: list[Path],
    *,
    reporter: Reporter | None = None,
    overwrite: bool = False,
    command_args: dict[str, Any] | None = None,
    compressor: Compressor | None = None,
    report: BatchReport | None = None,
    stop: anyio.Event | None = None,
    credentials: tuple[str, str] | None = None,
) -> BatchReport:
    """Upload `entries` with `settings.concurrency` workers; every entry ends recorded, the report says how.

    When `stop` is set (the CLI sets it on SIGINT/SIGTERM/SIGHUP), the batch stops taking entries and cancels those
    in flight: each leaves its multipart upload open and journaled (the next run resumes it), removes its staging
    archive and is recorded "cancelled"; the report says `interrupted`.

    `credentials` (access key, secret key) replace the AWS chain's: the benchmark passes its embedded server's fixed
    keys, or a given test endpoint's, this way instead of writing them into os.environ.
    """
    run = _BatchRun(
        settings=settings,
        entries=entries,
        report=report or BatchReport(),
        reporter=reporter or SilentReporter(keep=False),
        overwrite=overwrite,
        command_args=command_args or {},
        compressor=compressor,
        stop=stop,
        credentials=credentials,
    )
    return await run.execute()


@dataclass
class OpenRun:
    """A run that may take entries: the local dir's lock held, S3 connected and the bucket checked, the store open,
    and what a dead run left repaired. `upload_batch` feeds it a list; `amgmt watch` feeds it for as long as it runs.
    """

    settings: Settings
    s3: S3Bucket
    store: Store
    recovery: Cleanup
    compress: Compressor
    claims: RunClaims | None = None  # a catalog several runs share: the run's lease and the claims of its entries

    def pipeline_context(
        self,
        *,
        keys: KnownKeys,
        reporter: Reporter,
        overwrite: bool,
        command_args: dict[str, Any],
    ) -> PipelineContext:
        """What every entry of this run shares: the byte budget, the compression limiter, the claimed keys."""
        settings = self.settings
        small_body = archive_size_bound(settings.small_entry_size, 1) if settings.small_entry_size > 0 else 0
        return PipelineContext(
            keys=keys,
            settings=settings,
            store=self.store,
            s3=self.s3,
            budget=ByteBudget(
                settings.parts_in_flight * settings.part_size,
                # The small-entry lane's PUTs have a budget of their own (a body each, `concurrency` at once), so
                # that a large upload's parts, which fill the shared one, do not hold them back.
                small_body=small_body,
                small_limit=settings.concurrency * small_body,
            ),
            compress=self.compress,
            reporter=reporter,
            overwrite=overwrite,
            command_args=command_args,
            claims=self.claims,
        )


@asynccontextmanager
async def open_run(
    settings: Settings,
    entries: list[Path],
    *,
    workers: int,
    compressor: Compressor | None = None,
    credentials: tuple[str, str] | None = None,
) -> AsyncIterator[OpenRun]:
    """Lock the local dir (BusyError when another run holds it; with a shared catalog, register the run's lease
    instead: upload/claims.py), connect, check the bucket, create the private
    dirs, open the store, repair what a dead run left (`entries`: the keys whose unjournaled multipart uploads
    are aborted) and start the compression pool (unless a `compressor` is given), in that order; all of it is held
    until the block ends."""
    options = ClientOptions.from_settings(settings, max_connections=settings.parts_in_flight + 2 * workers + 4)
    if credentials is not None:
        options = replace(options, local_credentials=credentials)
    with dir_lock(settings):
        async with S3Bucket.connect(options) as s3:
            await s3.check_bucket()  # before anything is created on disk
            _private_dir(settings.db_path.parent)
            _private_dir(settings.staging_dir)
            async with metadata_store(settings) as store, run_lease(settings, store) as claims:
                try:
                    recovery = await recover_interrupted(settings, store, s3, entries, claims)
                except UploadError as exc:  # before any entry: nothing else could do better
                    raise StorageError(f"the endpoint does not answer like S3: {exc}") from exc
                if compressor is not None:
                    yield OpenRun(settings, s3, store, recovery, compressor, claims)
                else:
                    async with CompressionPool(anyio.CapacityLimiter(os.cpu_count() or 1)) as pool:
                        yield OpenRun(settings, s3, store, recovery, pool, claims)


async def run_entries(
    ctx: PipelineContext,
    entries: MemoryObjectReceiveStream[PlannedEntry],
    *,
    workers: int,
    finished: Callable[[PlannedEntry, UploadRecord], None],
    taking: Callable[[], bool] | None = None,
    left: Callable[[PlannedEntry], None] | None = None,
    lookahead: bool = True,
) -> AmgmtError | None:
    """The one fan-out of entries: `workers` tasks take entries from the stream until it is closed and empty, each
    through the whole pipeline; `finished` gets every entry with its record, however it ended. An entry taken while
    `taking()` is false is left alone (never started: no record); so is one another run holds (a catalog several
    runs share: upload/claims.py), given to `left`. The first run-wide error cancels the other
    workers (their entries are recorded cancelled) and is returned.

    Small entries (`MGMT_SMALL_ENTRY_SIZE`) go to the small-entry lane instead (upload/lane.py): batches of them,
    at most min(workers, BATCHES_IN_FLIGHT) at once, their requests at most `workers` at once; `lookahead`: see
    `route` below.

    With `MGMT_HOOK` set, the hook of each ended entry runs in a task of its own (at most `workers` at once), so a
    slow hook holds no worker; the group waits for the hooks before it ends."""
    stopped: list[AmgmtError] = []
    settings = ctx.settings
    hook = EntryHook(settings.hook, settings.hook_timeout, ctx.store) if settings.hook else None
    hooks_running = anyio.CapacityLimiter(workers)

    async def run_hook(record: UploadRecord) -> None:
        assert hook is not None
        with anyio.CancelScope(shield=True):  # a stopping run still reports its ended entries (bounded by the timeout)
            async with hooks_running:
                await hook.after(record)

    def ended(entry: PlannedEntry, rec: UploadRecord) -> None:
        finished(entry, rec)
        log.info(
            "entry %s: %s %s -> %s%s",
            rec.operation_id,
            rec.status,
            rec.target_name,
            rec.s3_object_key,
            f" ({rec.error_message})" if rec.error_message else "",
        )
        if hook is not None:
            tg.start_soon(run_hook, rec)

    async def worker(queue: MemoryObjectReceiveStream[PlannedEntry], scope: anyio.CancelScope) -> None:
        async with queue:
            async for entry in queue:
                if taking is not None and not taking():
                    continue
                pipeline = EntryPipeline(ctx, entry)
                try:
                    if not await _claimed(ctx, [pipeline], left):
                        continue  # another run holds it, or ended it meanwhile
                except AmgmtError as exc:  # run-wide (the database): stop every worker, one clear message
                    stopped.append(exc)
                    scope.cancel()
                    return
                try:
                    await pipeline.run()
                except AmgmtError as exc:  # run-wide: stop every worker, one clear message
                    stopped.append(exc)
                    scope.cancel()
                    return
                finally:
                    ended(entry, pipeline.record)
                    await _release(ctx, [pipeline])

    async def gather(
        queue: MemoryObjectReceiveStream[PlannedEntry], batches: MemoryObjectSendStream[list[PlannedEntry]]
    ) -> None:
        """Small entries into batches (upload/lane.py): the first entry waited for, then whatever else is queued,
        up to BATCH_SIZE; each batch handed to the first lane that is free."""
        async with queue, batches:
            async for first in queue:
                taken, idle = [first], 0
                while len(taken) < BATCH_SIZE and idle < GATHER_TURNS:
                    try:
                        taken.append(queue.receive_nowait())
                        idle = 0
                    except anyio.WouldBlock:
                        # Nothing queued: a few turns for the producer; none came meanwhile, the batch goes as it is.
                        idle += 1
                        await anyio.lowlevel.checkpoint()
                    except anyio.EndOfStream:
                        break
                await batches.send(taken)

    async def lane(batches: MemoryObjectReceiveStream[list[PlannedEntry]], scope: anyio.CancelScope) -> None:
        async with batches:
            async for taken in batches:
                if taking is not None:
                    taken = [e for e in taken if taking()]
                if not taken:
                    continue
                batch = SmallBatch(ctx, taken, requests)
                try:
                    batch.pipelines = await _claimed(ctx, batch.pipelines, left)  # one statement for the batch
                except AmgmtError as exc:  # run-wide (the database): stop every worker, one clear message
                    stopped.append(exc)
                    scope.cancel()
                    return
                if not batch.pipelines:
                    continue
                try:
                    await batch.run()
                except AmgmtError as exc:  # run-wide: stop every worker, one clear message
                    stopped.append(exc)
                    scope.cancel()
                    return
                finally:
                    for pipeline in batch.pipelines:
                        ended(pipeline.planned, pipeline.record)
                    await _release(ctx, batch.pipelines)

    async def route(large: MemoryObjectSendStream[PlannedEntry], small: MemoryObjectSendStream[PlannedEntry]) -> None:
        """Small entries to the lane, the others to the workers. With `lookahead`, both queues take whatever comes
        at once (the entries are in memory already: the run's plan), so neither kind waits behind the other and
        both progress; without (the watch, whose small buffer is its backpressure), each queue holds what its
        side takes next, and an entry waits behind those before it."""
        async with entries, large, small:
            async for entry in entries:
                await (small if is_small(entry, settings.small_entry_size) else large).send(entry)

    requests = anyio.CapacityLimiter(workers)  # the lane's requests in flight, as many as the workers' entries
    async with anyio.create_task_group() as tg:
        if settings.small_entry_size <= 0:
            for _ in range(workers):
                tg.start_soon(worker, entries.clone(), tg.cancel_scope)
            entries.close()
        else:
            large_ahead, small_ahead = (math.inf, math.inf) if lookahead else (workers, BATCH_SIZE)
            send_large, receive_large = anyio.create_memory_object_stream[PlannedEntry](max_buffer_size=large_ahead)
            send_small, receive_small = anyio.create_memory_object_stream[PlannedEntry](max_buffer_size=small_ahead)
            tg.start_soon(route, send_large, send_small)
            for _ in range(workers):
                tg.start_soon(worker, receive_large.clone(), tg.cancel_scope)
            send_batch, receive_batch = anyio.create_memory_object_stream[list[PlannedEntry]]()
            tg.start_soon(gather, receive_small, send_batch)
            for _ in range(min(workers, BATCHES_IN_FLIGHT)):
                tg.start_soon(lane, receive_batch.clone(), tg.cancel_scope)
            receive_large.close()
            receive_batch.close()
    return stopped[0] if stopped else None


async def _claimed(
    ctx: PipelineContext, pipelines: list[EntryPipeline], left: Callable[[PlannedEntry], None] | None
) -> list[EntryPipeline]:
    """With a shared catalog, those of the entries this run got the claim of (upload/claims.py), the others given
    to `left`; all without."""
    if ctx.claims is None:
        return pipelines
    items = [ClaimItem(p.record.target_name, p.record.operation_id, p.entry) for p in pipelines]
    now = anyio.current_time()
    mine = {item.operation_id for item in await ctx.claims.claim(items)}
    for pipeline in pipelines:
        if pipeline.record.operation_id in mine:
            # A claim is a fresh lease, as a fence's renewal is: it stands for one for half a lease.
            pipeline._fenced_until = now + ctx.claims.seconds / 2
    if left is not None:
        for pipeline in pipelines:
            if pipeline.record.operation_id not in mine:
                left(pipeline.planned)
    return [p for p in pipelines if p.record.operation_id in mine]


async def _release(ctx: PipelineContext, pipelines: list[EntryPipeline]) -> None:
    if ctx.claims is not None:
        await ctx.claims.release([p.record for p in pipelines])


@dataclass
class _BatchRun:
    settings: Settings
    entries: list[Path]
    report: BatchReport
    reporter: Reporter
    overwrite: bool
    command_args: dict[str, Any]
    compressor: Compressor | None
    stop: anyio.Event | None
    credentials: tuple[str, str] | None = field(default=None, repr=False)

    @property
    def concurrency(self) -> int:
        return max(1, min(self.settings.concurrency, len(self.entries) or 1))

    async def execute(self) -> BatchReport:
        settings, report = self.settings, self.report
        report.planned = len(self.entries)
        started = time.perf_counter()
        log.info(
            "batch start: %s, bucket %s, prefix %r, concurrency %d",
            counted(report.planned, "entry"),
            settings.bucket,
            settings.object_prefix,
            self.concurrency,
        )
        try:
            async with open_run(
                settings,
                self.entries,
                workers=self.concurrency,
                compressor=self.compressor,
                credentials=self.credentials,
            ) as run:
                report.recovery = run.recovery
                if run.recovery.finished_moves:
                    # Recovery finished these entries' interrupted moves: nothing is left to do for them.
                    done = set(run.recovery.finished_moves)
                    self.entries = [e for e in self.entries if display(e) not in done]
                    report.planned = len(self.entries)
                await self._run_workers(run)
        except AmgmtError as exc:
            if report.aborted is None and not report.finished:
                log.error("batch stopped: %s", exc)
                raise
            if report.aborted is None:
                report.aborted, report.aborted_exit = str(exc), exc.exit_code
        finally:
            report.wall_seconds = time.perf_counter() - started
            self.reporter.close()
        if report.aborted:
            log.error("batch stopped: %s", report.aborted)
        log.info(
            "batch end: %s in %.1fs, exit %d%s",
            dict(sorted(report.counts().items())),
            report.wall_seconds,
            int(report.exit_code),
            " (interrupted)" if report.interrupted else "",
        )
        return report

    async def _known_keys(self, s3: S3Bucket) -> KnownKeys:
        """The keys under the prefix, listed once for a batch big enough that the listing costs fewer requests
        than a HEAD per entry would: a page holds up to 1,000 keys, and the run allows one page per 20 entries (an
        estimate of what botocore's parsing of a full page costs in HEADs, not a measurement)."""
        if len(self.entries) < LISTING_MIN_ENTRIES:
            return KnownKeys(None)
        prefix = f"{self.settings.object_prefix}/" if self.settings.object_prefix else ""
        try:
            return KnownKeys(await s3.list_keys(prefix, max_pages=len(self.entries) // LISTING_MIN_ENTRIES))
        except StorageError as exc:  # e.g. no s3:ListBucket permission: every entry looks with a HEAD instead
            log.info("listing s3://%s/%s failed, checking each key with HEAD: %s", s3.bucket, prefix, exc)
            return KnownKeys(None)

    async def _run_workers(self, run: OpenRun) -> None:
        settings, report = self.settings, self.report
        ctx = run.pipeline_context(
            keys=await self._known_keys(run.s3),
            reporter=self.reporter,
            overwrite=self.overwrite,
            command_args=self.command_args,
        )
        # Each entry walked once, here; the pipeline takes it from the plan. The plan is handed out as a queue, so
        # that an entry's plan is gone once the entry has ended (no per-entry state outlives its entry).
        planned = deque(plan(settings, self.entries))
        if run.claims is not None and planned:
            # Runs sharing the folder each start at another place of the list (by their run id), instead of
            # all claiming the same entries at once and each leaving most of them to the others.
            planned.rotate(-(int(run.claims.lease.run_id, 16) % len(planned)))
        self.reporter.add_work(len(planned), sum(p.size for p in planned))
        send, receive = anyio.create_memory_object_stream[PlannedEntry](max_buffer_size=self.concurrency)

        async def produce() -> None:
            async with send:
                while planned:
                    try:
                        await send.send(planned.popleft())
                    except anyio.BrokenResourceError:  # the workers stopped on a run-wide error
                        return

        async with anyio.create_task_group() as outer:
            if self.stop is not None:
                outer.start_soon(_stop_when, self.stop, outer.cancel_scope, report)
            outer.start_soon(produce)
            try:
                error = await run_entries(
                    ctx, receive, workers=self.concurrency, finished=lambda _, record: report.add(record)
                )
            finally:
                if run.claims is not None:
                    report.elsewhere = list(run.claims.elsewhere)
            if error is not None:
                report.aborted, report.aborted_exit = str(error), error.exit_code
            outer.cancel_scope.cancel()  # the workers are done: stop waiting for a stop
