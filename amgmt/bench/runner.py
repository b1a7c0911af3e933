"""The benchmark's session: a work dir with a generated data set, a target (the embedded moto server or a given
bucket) and timed runs of the real pipeline (`upload_batch`) on fresh copies of the data set.

It owns the work dir, the embedded server's life and the objects the runs leave; it never prints (progress goes to a
callback), never writes os.environ, and never changes how amgmt uploads: it calls `upload_batch` as `amgmt upload`
does. Reference designs (benchmarks/origin.py: the origin's boto3 loop) plug in as a `Baseline`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Protocol

import anyio
import anyio.to_thread

from amgmt import cpu
from amgmt.bench.datasets import DatasetSpec, generate_dataset, make_photo_set
from amgmt.bench.localserver import LOCAL_KEYS, LOCAL_REGION, LocalS3Server
from amgmt.bench.meter import ResourceMeter
from amgmt.bench.report import BenchmarkReport, RunKind, RunResult, TargetInfo, cpu_breakdown, machine_info
from amgmt.config import Settings, format_size, load_settings
from amgmt.errors import ConfigError
from amgmt.local.entries import list_entries
from amgmt.models import OperationStatus, UploadRecord, utcnow
from amgmt.parts import MAX_PART_SIZE, MIN_PART_SIZE
from amgmt.s3 import ClientOptions, S3Bucket
from amgmt.text import human_size
from amgmt.upload.batch import upload_batch

ProgressCallback = Callable[[str], None]

_PEAK_DISK_FACTOR = 2.2  # pristine set + staging archives + a baseline's temp archive, with room to spare
_DELETES_IN_FLIGHT = 16


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to run. Without `bucket` the runs go to an embedded moto server started for the benchmark; with it, to
    that bucket (and `endpoint_url`, else AWS) with the standard AWS chain's credentials, or `credentials`."""

    dataset: DatasetSpec
    concurrencies: tuple[int, ...] = (1, 4, 8)
    part_sizes: tuple[int | None, ...] = (None,)  # None: the configured MGMT_PART_SIZE
    parts_in_flight: tuple[int | None, ...] = (None,)  # None: the configured MGMT_PARTS_IN_FLIGHT
    repeat: int = 1
    bucket: str | None = None
    endpoint_url: str | None = None
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    server_pid: int | None = None  # a process to measure as the server (a local radosgw, minio, ...)
    settings_flags: Mapping[str, object] = field(default_factory=dict)  # e.g. profile, region
    environ: Mapping[str, str] | None = None  # for MGMT_* settings; default os.environ
    config_path: Path | None = None
    workdir: Path | None = None  # where the temporary work dir goes; default the system's temp dir
    warmup: bool = True

    def __post_init__(self) -> None:
        if not self.concurrencies or any(not 1 <= c <= 256 for c in self.concurrencies):
            raise ConfigError("concurrency values must be integers from 1 to 256")
        if not self.part_sizes or any(
            p is not None and not MIN_PART_SIZE <= p <= MAX_PART_SIZE for p in self.part_sizes
        ):
            raise ConfigError(f"part sizes must be from {format_size(MIN_PART_SIZE)} to {format_size(MAX_PART_SIZE)}")
        if not self.parts_in_flight or any(f is not None and not 1 <= f <= 1024 for f in self.parts_in_flight):
            raise ConfigError("parts in flight must be integers from 1 to 1024")
        if self.repeat < 1:
            raise ConfigError("--repeat must be at least 1")
        if self.endpoint_url and not self.bucket:
            raise ConfigError("--endpoint-url needs --bucket (without both, the embedded local server is used)")


class Baseline(Protocol):
    """A reference design timed beside amgmt on the same data and target. The origin's (boto3, one entry at a time)
    lives in benchmarks/origin.py, outside the package: amgmt itself must not need boto3."""

    description: str  # for the progress line

    def prepare(self, session: BenchmarkSession) -> None:
        """Blocking: import and connect what the runs need, outside the timings."""

    async def run(self, session: BenchmarkSession, *, repeat: int) -> RunResult:
        """One timed run over the whole data set (use `session.new_run_dir`, `populate`, `meter`, `discard`)."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


class BenchmarkSession:
    """One benchmark's work dir (a pristine generated data set, a fresh hard-linked copy for every run), its
    target (an embedded moto server it starts, or a given bucket) and its timed runs. Use with `async with`.

    Every run gets its own object prefix, so no run finds the objects of another; the objects are deleted after
    each run (moto keeps them in memory). The source is read from the page cache: it was just written.
    """

    def __init__(self, config: BenchmarkConfig, *, on_progress: ProgressCallback | None = None) -> None:
        self.config = config
        self.on_progress = on_progress or (lambda _line: None)
        self.session_id = f"{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.started_at = utcnow()
        self.root = Path()
        self.pristine = Path()
        self.server: LocalS3Server | None = None
        self.target = TargetInfo(
            bucket=config.bucket or "amgmt-benchmark",
            endpoint_url=config.endpoint_url,
            embedded=config.bucket is None,
            server_pid=config.server_pid,
        )
        self.notes: list[str] = []
        self._s3: S3Bucket | None = None  # for deleting each run's objects
        self._runs = 0
        self._closers = contextlib.AsyncExitStack()

    @property
    def credentials(self) -> tuple[str, str] | None:
        """The keys every client of the target uses: the embedded server's, the given ones, else None (the AWS
        chain). Passed to each client explicitly, never through os.environ."""
        return LOCAL_KEYS if self.target.embedded else self.config.credentials

    # -- life --------------------------------------------------------------------------------------------------

    async def __aenter__(self) -> BenchmarkSession:
        try:
            await self._open()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _open(self) -> None:
        self.root = self._make_work_dir()
        self._closers.push_async_callback(
            anyio.to_thread.run_sync, functools.partial(shutil.rmtree, self.root, ignore_errors=True)
        )
        if self.target.embedded:
            self.on_progress("starting the embedded S3 server (moto) on 127.0.0.1")
            self.server = await anyio.to_thread.run_sync(LocalS3Server().start)
            server = self.server

            async def stop_server() -> None:
                await anyio.to_thread.run_sync(server.stop)

            self._closers.push_async_callback(stop_server)
            self.target = replace(self.target, endpoint_url=self.server.endpoint_url, server_pid=self.server.pid)
        probe = self.run_settings(self.root, concurrency=1)
        options = replace(
            ClientOptions.from_settings(probe, max_connections=_DELETES_IN_FLIGHT + 2),
            local_credentials=self.credentials,
        )
        self._s3 = await self._closers.enter_async_context(S3Bucket.connect(options))
        if self.target.embedded:
            await self._s3.create_bucket()
        await self._s3.check_bucket()
        self.on_progress(f"generating the data set {self.config.dataset.describe()}")
        self.pristine = self.root / "data"
        await anyio.to_thread.run_sync(generate_dataset, self.config.dataset, self.pristine)

    def _make_work_dir(self) -> Path:
        parent = self.config.workdir or Path(tempfile.gettempdir())
        try:
            parent.mkdir(parents=True, exist_ok=True)
            root = Path(tempfile.mkdtemp(prefix="amgmt-benchmark-", dir=parent)).resolve()
        except OSError as exc:
            raise ConfigError(f"cannot create a work dir in {parent}: {exc.strerror or exc}") from exc
        need = int(self.config.dataset.total_bytes * _PEAK_DISK_FACTOR)
        free = shutil.disk_usage(root).free
        if free < need:
            shutil.rmtree(root, ignore_errors=True)
            raise ConfigError(
                f"the work dir {root.parent} has {human_size(free)} free; this data set needs "
                f"about {human_size(need)} (use --workdir or a smaller --scale)"
            )
        return root

    async def _close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._closers.aclose()

    async def warm_up(self) -> None:
        """An untimed amgmt run: it starts anyio's compression workers (they stay for the session) and imports
        what the first upload needs, which the first timed run would pay for otherwise."""
        count = min(os.cpu_count() or 1, max(self.config.concurrencies))
        source = self.root / "warmup-data"
        await anyio.to_thread.run_sync(functools.partial(make_photo_set, source, count=count, size=64 * 1024))
        self.on_progress("warm-up run (not timed)")
        await self._amgmt_run(source, label="warmup", repeat=0, concurrency=count, part_size=None, parts_in_flight=None)

    # -- settings and S3 helpers -----------------------------------------------------------------------------

    def run_settings(
        self,
        run_dir: Path,
        *,
        concurrency: int,
        part_size: int | None = None,
        parts_in_flight: int | None = None,
        prefix: str = "",
    ) -> Settings:
        """amgmt's settings for a run in `run_dir`: everything that locates data is forced (a user's
        MGMT_COMPLETED_DIR must never receive benchmark files); tuning keys come from flags, env and config."""
        local = run_dir / "local"
        local.mkdir(parents=True, exist_ok=True)  # settings need the local dir to exist (and to hold completed/)
        metadata = local / "completed" / ".metadata"
        flags: dict[str, object] = dict(self.config.settings_flags)
        flags.update(
            bucket=self.target.bucket,
            endpoint_url=self.target.endpoint_url or "",  # "" resets a MGMT_ENDPOINT_URL of the environment
            object_prefix=prefix or "",
            local_dir=str(local),
            completed_dir=str(local / "completed"),
            db_path=str(metadata / "operations.db"),
            db_url="",  # "" resets a MGMT_DB_URL of the environment: benchmark records never go into a user's catalog
            staging_dir=str(metadata / "staging"),
            completed_enabled=True,
            preserve_structure=False,
            duplicate_handling="timestamp",
            concurrency=concurrency,
            part_size=part_size,
            parts_in_flight=parts_in_flight,
        )
        if self.target.embedded:
            flags.update(region=LOCAL_REGION, profile="", storage_class="")
        environ = os.environ if self.config.environ is None else self.config.environ
        return load_settings(
            flags=flags, environ=environ, config_path=self.config.config_path, require_bucket=True, cwd=run_dir
        )

    async def delete_prefix(self, prefix: str) -> None:
        """Delete the objects (and abort the unfinished multipart uploads) under `prefix/`."""
        s3 = self._s3
        assert s3 is not None, "the session is not open"
        limiter = anyio.CapacityLimiter(_DELETES_IN_FLIGHT)

        async def delete(key: str) -> None:
            async with limiter:
                await s3.delete_object(key)

        async def abort(key: str, upload_id: str) -> None:
            async with limiter:
                await s3.abort_multipart(key, upload_id)

        try:
            objects = await s3.list_objects(prefix + "/")
            uploads = await s3.list_multipart_uploads(prefix + "/")
            async with anyio.create_task_group() as tg:
                for item in objects:
                    tg.start_soon(delete, item.key)
                for upload in uploads:
                    tg.start_soon(abort, upload["key"], upload["upload_id"])
        except Exception as exc:  # noqa: BLE001 - a failed clean-up must not lose the measurements
            self.notes.append(f"could not delete the objects under s3://{self.target.bucket}/{prefix}/: {exc}")

    # -- runs --------------------------------------------------------------------------------------------------

    def new_run_dir(self, label: str) -> tuple[Path, str]:
        """A fresh run dir and object prefix; its local/ holds a hard-linked copy of the pristine data set
        (amgmt only reads and moves the originals, so the pristine inodes stay as they are)."""
        self._runs += 1
        name = f"{self._runs:03d}-{_slug(label)}"
        return self.root / "runs" / name, f"amgmt-benchmark/{self.session_id}/{name}"

    @staticmethod
    def populate(run_dir: Path, source: Path) -> Path:
        local = run_dir / "local"
        shutil.copytree(source, local, copy_function=os.link)
        return local

    async def discard(self, run_dir: Path, prefix: str) -> None:
        await anyio.to_thread.run_sync(functools.partial(shutil.rmtree, run_dir, ignore_errors=True))
        await self.delete_prefix(prefix)

    def meter(self) -> ResourceMeter:
        return ResourceMeter(server_pid=self.target.server_pid)

    async def run_amgmt(
        self, *, concurrency: int, part_size: int | None = None, parts_in_flight: int | None = None, repeat: int = 1
    ) -> RunResult:
        """One timed `upload_batch` of the whole data set."""
        return await self._amgmt_run(
            self.pristine,
            label="amgmt",
            repeat=repeat,
            concurrency=concurrency,
            part_size=part_size,
            parts_in_flight=parts_in_flight,
        )

    async def _amgmt_run(
        self,
        source: Path,
        *,
        label: str,
        repeat: int,
        concurrency: int,
        part_size: int | None,
        parts_in_flight: int | None,
    ) -> RunResult:
        run_dir, prefix = self.new_run_dir(f"{label}-c{concurrency}")
        try:
            await anyio.to_thread.run_sync(self.populate, run_dir, source)
            settings = self.run_settings(
                run_dir, concurrency=concurrency, part_size=part_size, parts_in_flight=parts_in_flight, prefix=prefix
            )
            entries, _ = list_entries(settings)
            command_args = {
                "command": "benchmark",
                "concurrency": concurrency,
                "part_size": settings.part_size,
                "parts_in_flight": settings.parts_in_flight,
            }
            with self.meter() as meter:
                steps_before, loop_before = cpu.LEDGER.snapshot(), time.thread_time()
                started = time.perf_counter()
                report = await upload_batch(settings, entries, command_args=command_args, credentials=self.credentials)
                wall = time.perf_counter() - started
                loop_seconds = time.thread_time() - loop_before  # this thread runs the event loop
                steps = cpu.since(steps_before, cpu.LEDGER.snapshot())
        finally:
            await self.discard(run_dir, prefix)
        assert meter.usage is not None
        done = [r for r in report.records if r.status in (OperationStatus.SUCCESS, OperationStatus.PARTIAL)]
        failures = [
            f"{r.target_name}: {r.status}: {r.error_message or ''}".rstrip(": ")
            for r in report.records
            if r.status != OperationStatus.SUCCESS
        ]
        if report.aborted:
            failures.append(f"run stopped: {report.aborted}")
        stages, entry_seconds = _stage_totals(report.records)
        return RunResult(
            label=label,
            kind=RunKind.AMGMT,
            repeat=repeat,
            concurrency=concurrency,
            part_size=settings.part_size,
            parts_in_flight=settings.parts_in_flight,
            wall_seconds=wall,
            entries=len(entries),
            entries_ok=sum(1 for r in report.records if r.status == OperationStatus.SUCCESS),
            source_bytes=sum(r.original_size for r in done),
            archive_bytes=sum(r.compressed_size or 0 for r in done),
            usage=meter.usage,
            stage_seconds=stages,
            entry_seconds=entry_seconds,
            failures=tuple(failures),
            object_prefix=prefix,
            cpu_steps=cpu_breakdown(meter.usage, steps, loop_seconds),
        )

    def report(self, runs: Sequence[RunResult]) -> BenchmarkReport:
        probe = self.run_settings(self.root, concurrency=1)
        settings = {
            "part_size": probe.part_size,
            "parts_in_flight": probe.parts_in_flight,
            "multipart_threshold": probe.multipart_threshold,
            "compression_level": probe.compression_level,
            "checksum_algorithm": probe.checksum_algorithm,
            "addressing_style": probe.addressing_style,
            "storage_class": probe.storage_class,
            "warmup": self.config.warmup,
        }
        return BenchmarkReport(
            started_at=self.started_at,
            machine=machine_info(),
            dataset=self.config.dataset,
            target=self.target,
            settings=settings,
            runs=tuple(runs),
            repeat=self.config.repeat,
            notes=tuple(self.notes),
        )


def _stage_totals(records: Sequence[UploadRecord]) -> tuple[dict[str, float], float]:
    totals: dict[str, float] = {}
    for record in records:
        for stage, seconds in (record.metadata.get("stage_seconds") or {}).items():
            totals[stage] = totals.get(stage, 0.0) + float(seconds)
    return totals, sum(r.duration_seconds or 0.0 for r in records)


async def run_benchmark(
    config: BenchmarkConfig, *, baseline: Baseline | None = None, on_progress: ProgressCallback | None = None
) -> BenchmarkReport:
    """Time the baseline (when given) and amgmt at every point of concurrency x part size x parts in flight,
    `repeat` times each.

    The baseline runs first, before amgmt's compression workers exist (they would count in its RSS); then an
    untimed warm-up; then amgmt's repeats, interleaved so that drift hits every configuration alike."""
    progress = on_progress or (lambda _line: None)
    grid = [(c, p, f) for p in config.part_sizes for f in config.parts_in_flight for c in config.concurrencies]
    total = config.repeat * (len(grid) + (1 if baseline else 0))
    runs: list[RunResult] = []
    async with BenchmarkSession(config, on_progress=progress) as session:
        if baseline is not None:
            await anyio.to_thread.run_sync(baseline.prepare, session)  # imported and connected outside the timings
            for repeat in range(1, config.repeat + 1):
                progress(f"[{len(runs) + 1}/{total}] baseline ({baseline.description})")
                runs.append(await baseline.run(session, repeat=repeat))
                progress(run_line(runs[-1]))
        if config.warmup:
            await session.warm_up()
        for repeat in range(1, config.repeat + 1):
            for concurrency, part_size, in_flight in grid:
                shown = ", ".join(
                    x
                    for x in (
                        f"concurrency {concurrency}",
                        part_size and f"part size {format_size(part_size)}",
                        in_flight and f"{in_flight} parts in flight",
                    )
                    if x
                )
                progress(f"[{len(runs) + 1}/{total}] amgmt {shown}")
                runs.append(
                    await session.run_amgmt(
                        concurrency=concurrency, part_size=part_size, parts_in_flight=in_flight, repeat=repeat
                    )
                )
                progress(run_line(runs[-1]))
        return session.report(runs)


def run_line(run: RunResult) -> str:
    """A finished run as one progress line."""
    line = (
        f"    {run.wall_seconds:.2f} s, {run.mib_per_second:.1f} MiB/s, client CPU {run.usage.client_cpu_seconds:.1f} s"
    )
    if run.usage.server_cpu_seconds is not None:
        line += f", server CPU {run.usage.server_cpu_seconds:.1f} s"
    if run.usage.other_cpu_seconds:
        line += f", other processes' CPU {run.usage.other_cpu_seconds:.1f} s"
    if run.failures:
        line += f", {len(run.failures)} not done: {run.failures[0]}"
    return line
