"""The small-entry lane: a batch of small entries through the eight stages together, each stage's work for the batch
done with one hand-over where one entry alone would need one each.

Every entry keeps its own EntryPipeline (its records, its staging archive, its key) and goes through the same stage
functions as an entry alone (upload/pipeline.py); what the lane changes is how many entries share each hand-over:

- the stage saves: every entry of the batch entering a stage is saved in one transaction (`enter_all`), before any
  of that stage's work starts, so each entry's record says where it got to exactly as alone;
- compression: one job of N entries to a compression worker (`CompressionPool.compress_many`);
- upload and verify: each entry's own requests (single PUTs, HEADs), concurrently, at most `requests` at once;
- move: the verified entries' moves in one thread hand-over, after their records (stage `move`, verified) are saved;
- clean up and the last save: one thread hand-over for the staging archives, one transaction for the records.

An entry that fails, is skipped or changes leaves the batch at that stage (its last save and clean up done with the
others that left there); the rest go on. A run-wide error or a bug in one entry ends it as alone, records the
others in flight cancelled, and propagates; so does a cancellation (every entry in flight recorded cancelled).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio
import anyio.to_thread

from amgmt.errors import EntryError, MoveError
from amgmt.local.archive import ArchiveResult
from amgmt.local.entries import PlannedEntry
from amgmt.models import OperationStatus, Stage, UploadRecord
from amgmt.upload.compressor import CompressionPool
from amgmt.upload.pipeline import EntryPipeline, PipelineContext, enter_all, fence_all, finalise_all
from amgmt.upload.records import record_moved

BATCH_SIZE = 64  # entries per batch: one compression job, one transaction per stage change, one move hand-over
BATCHES_IN_FLIGHT = 3  # at most (and at most the concurrency): one packing while others send, verify or move


def is_small(planned: PlannedEntry, threshold: int) -> bool:
    """Whether the entry goes through the lane: a regular file of at most `threshold` bytes (0: the lane is off)."""
    return threshold > 0 and not planned.is_directory and planned.size <= threshold


class SmallBatch:
    """A batch of small entries, each with its own pipeline and records, through the stages together."""

    def __init__(self, ctx: PipelineContext, planned: Sequence[PlannedEntry], requests: anyio.CapacityLimiter) -> None:
        self.ctx = ctx
        self.requests = requests
        self.pipelines = [EntryPipeline(ctx, entry) for entry in planned]
        self._finalised: set[int] = set()  # ids of pipelines whose last save is done
        self._stopping: BaseException | None = None  # a run-wide error or a bug of one entry: the batch stops

    @property
    def records(self) -> list[UploadRecord]:
        return [p.record for p in self.pipelines]

    async def run(self) -> list[UploadRecord]:
        """Every entry through the stages; entry failures end in their records. A run-wide error, a bug or a
        cancellation propagates, after every entry of the batch was recorded (its last save best effort)."""
        try:
            await self._stages(list(self.pipelines))
        except BaseException as exc:
            # The entries still in flight end as alone: by this error when the batch's own work raised it (a save,
            # a cancellation); cancelled when another entry's run-wide error or bug stops the batch.
            left = [p for p in self.pipelines if id(p) not in self._finalised]
            reason = anyio.get_cancelled_exc_class()() if exc is self._stopping else exc
            for pipeline in left:
                if pipeline.record.status == OperationStatus.PENDING:
                    pipeline._end_with(reason)
            await self._finalise(left, must_save=False)
            raise
        return self.records

    async def _stages(self, alive: list[EntryPipeline]) -> None:
        ctx = self.ctx
        # 1. validate (2. record: the first save, on entering stage 3)
        alive = await self._step(alive, lambda p: _sync(p._validate), Stage.VALIDATE, concurrent=False)
        # 3. compress
        started = await enter_all(alive, Stage.COMPRESS)
        alive = await self._compress(alive)
        self._took(alive, Stage.COMPRESS, started)
        alive = await self._step(alive, self._unless_uploaded, None)
        # 4. upload (the claims of the batch checked in one statement first, with a shared catalog)
        started = await enter_all(alive, Stage.UPLOAD)
        alive = await self._settle(alive, await fence_all(alive, "writing the key"))
        alive = await self._step(alive, self._requesting(lambda p: p._upload()), None)
        self._took(alive, Stage.UPLOAD, started)
        # 5. verify
        started = await enter_all(alive, Stage.VERIFY)
        alive = await self._step(alive, self._requesting(self._verify), None)
        self._took(alive, Stage.VERIFY, started)
        # 6. move (only now: every entry left is verified, and saved so at stage move)
        warnings: dict[int, str] = {}
        if ctx.settings.completed_enabled:
            started = await enter_all(alive, Stage.MOVE)
            alive = await self._settle(alive, await fence_all(alive, "moving the original"))
            alive = await self._move(alive, warnings)
            self._took(alive, Stage.MOVE, started)
        # 7. persist; 8. cleanup and the last save
        for pipeline in alive:
            pipeline._persist(warnings.get(id(pipeline)))
        await self._finalise(alive, must_save=True)

    # -- the steps --------------------------------------------------------------------------------------------

    async def _step(
        self,
        alive: list[EntryPipeline],
        work: Callable[[EntryPipeline], Awaitable[bool | None]],
        stage: Stage | None,
        *,
        concurrent: bool = True,
    ) -> list[EntryPipeline]:
        """`work` for every entry (concurrently, or one after another); those it ended (an entry failure, or True:
        done, e.g. skipped) get their last save together; the rest go on. Timed into `stage` when given."""
        ended: dict[int, BaseException | None] = {}

        async def one(pipeline: EntryPipeline) -> None:
            try:
                if await work(pipeline):
                    ended[id(pipeline)] = None
            except Exception as exc:
                ended[id(pipeline)] = exc

        started = anyio.current_time()
        if concurrent and len(alive) > 1:
            async with anyio.create_task_group() as tg:
                for pipeline in alive:
                    tg.start_soon(one, pipeline)
        else:
            for pipeline in alive:
                await one(pipeline)
        if stage is not None:
            elapsed = anyio.current_time() - started
            for pipeline in alive:
                pipeline._timings[str(stage)] = pipeline._timings.get(str(stage), 0.0) + elapsed
        return await self._settle(alive, ended)

    async def _settle(self, alive: list[EntryPipeline], ended: dict[int, BaseException | None]) -> list[EntryPipeline]:
        """The entries that ended in this step are recorded and finalised together; a run-wide error or a bug
        among them stops the batch (raised once they are saved)."""
        if not ended:
            return alive
        done: list[EntryPipeline] = []
        for pipeline in alive:
            if id(pipeline) not in ended:
                continue
            exc = ended[id(pipeline)]
            if exc is not None and pipeline._end_with(exc) and self._stopping is None:
                self._stopping = exc
            if exc is None or exc is not self._stopping:
                done.append(pipeline)
        await self._finalise(done, must_save=True)
        if self._stopping is not None:
            raise self._stopping
        return [p for p in alive if id(p) not in ended]

    async def _finalise(self, pipelines: list[EntryPipeline], *, must_save: bool) -> None:
        pipelines = [p for p in pipelines if id(p) not in self._finalised]
        self._finalised.update(id(p) for p in pipelines)
        await finalise_all(pipelines, must_save=must_save)

    @staticmethod
    def _took(alive: list[EntryPipeline], stage: Stage, started: float) -> None:
        for pipeline in alive:
            pipeline._took(stage, started)

    async def _compress(self, alive: list[EntryPipeline]) -> list[EntryPipeline]:
        """Stage 3 for the batch: one job of all its entries in a worker of the pool (or, with another Compressor,
        each entry's own call, concurrently)."""
        jobs = [await p._compress_job() for p in alive]
        compress = self.ctx.compress
        results: list[ArchiveResult | BaseException]
        if isinstance(compress, CompressionPool):
            try:
                results = await compress.compress_many(jobs)
            except EntryError as exc:  # the worker died: every entry of the job failed to compress
                results = [exc] * len(jobs)
        else:
            slots: list[ArchiveResult | BaseException | None] = [None] * len(jobs)

            async def one(index: int) -> None:
                try:
                    slots[index] = await compress(*jobs[index])
                except Exception as exc:
                    slots[index] = exc

            async with anyio.create_task_group() as tg:
                for index in range(len(jobs)):
                    tg.start_soon(one, index)
            results = [slot for slot in slots if slot is not None]
        ended: dict[int, BaseException | None] = {}
        for pipeline, result in zip(alive, results, strict=True):
            try:
                if isinstance(result, BaseException):
                    if isinstance(result, OSError) and not isinstance(result, EntryError):
                        raise pipeline._compress_error(result) from result
                    raise result
                pipeline._packed(await pipeline._with_md5s_if_needed(result))
            except Exception as exc:
                ended[id(pipeline)] = exc
        return await self._settle(alive, ended)

    @staticmethod
    async def _unless_uploaded(pipeline: EntryPipeline) -> bool:
        """After stage 3: the same content already uploaded ends the entry (skipped)."""
        return await pipeline._already_uploaded()

    def _requesting(
        self, work: Callable[[EntryPipeline], Awaitable[None]]
    ) -> Callable[[EntryPipeline], Awaitable[bool | None]]:
        async def limited(pipeline: EntryPipeline) -> None:
            async with self.requests:
                await work(pipeline)

        return limited

    async def _verify(self, pipeline: EntryPipeline) -> None:
        await pipeline._verify_or_replace()
        await pipeline._verified()

    async def _move(self, alive: list[EntryPipeline], warnings: dict[int, str]) -> list[EntryPipeline]:
        """Stage 6 for the batch: the moves in one thread hand-over, one after another (each its own proof and its
        own outcome); a move that fails leaves that original in place (partial), as alone."""
        jobs = [p._move_job() for p in alive]

        def move_all() -> list[Path | Exception]:
            outcomes: list[Path | Exception] = []
            for job in jobs:
                try:
                    outcomes.append(job())
                except Exception as exc:
                    outcomes.append(exc)
            return outcomes

        outcomes = await anyio.to_thread.run_sync(move_all)
        ended: dict[int, BaseException | None] = {}
        for pipeline, outcome in zip(alive, outcomes, strict=True):
            if isinstance(outcome, MoveError):
                warnings[id(pipeline)] = pipeline._not_moved(outcome)
            elif isinstance(outcome, Exception):
                ended[id(pipeline)] = outcome
            else:
                record_moved(pipeline.record, outcome)
        return await self._settle(alive, ended)


async def _sync(function: Callable[[], None]) -> None:
    function()
