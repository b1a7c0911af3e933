"""The origin's design as the speed-up's reference: `amgmt benchmark` with a baseline run of the origin's loop.

    python benchmarks/origin.py [amgmt benchmark options]     # e.g. --scale 0.25 --concurrency 1,8 --json out.json

One entry at a time: `tarfile` "w:gz" (zlib level 9) to a temp file, boto3 `upload_fileobj` (its default transfer
config), then `os.rename` into the completed dir; no verification, no records. It needs boto3, which amgmt itself does
not: that is why it lives here and not in the package. `sequential_pipeline` is also the hand-built peers' loop
(benchmarks/peers.py).
"""

from __future__ import annotations

import functools
import os
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

from amgmt.bench.localserver import LOCAL_REGION
from amgmt.bench.report import RunKind, RunResult
from amgmt.bench.runner import BenchmarkSession
from amgmt.errors import ConfigError, StorageError
from amgmt.local.copying import tree_size
from amgmt.models import Stage
from amgmt.naming import object_key
from amgmt.parts import MiB


def sequential_pipeline(
    entries: Sequence[Path],
    *,
    compress: Callable[[Path, Path], object],
    upload: Callable[[Path, Path], object],
    move: Callable[[Path, Path], object],
    completed_dir: Path,
    scratch_dir: Path,
    before_each: Callable[[], None] | None = None,
) -> tuple[int, dict[str, float]]:
    """One entry after another: compress(entry, archive), upload(entry, archive), move(entry, completed/name), then
    the archive deleted; the baseline and the hand-built peers (benchmarks/peers.py) are this loop with other
    steps. Returns (archive bytes, seconds per stage)."""
    completed_dir.mkdir(parents=True, exist_ok=True)
    stages = {str(Stage.COMPRESS): 0.0, str(Stage.UPLOAD): 0.0, str(Stage.MOVE): 0.0, str(Stage.CLEANUP): 0.0}
    archive_bytes = 0
    for entry in entries:
        if before_each:
            before_each()
        archive = scratch_dir / f"{entry.name}.tar.gz"
        t0 = time.perf_counter()
        compress(entry, archive)
        t1 = time.perf_counter()
        upload(entry, archive)
        t2 = time.perf_counter()
        move(entry, completed_dir / entry.name)
        t3 = time.perf_counter()
        archive_bytes += archive.stat().st_size
        archive.unlink()
        t4 = time.perf_counter()
        for stage, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[stage] += seconds
    return archive_bytes, stages


@dataclass(frozen=True)
class BaselineTotals:
    archive_bytes: int
    stage_seconds: dict[str, float]


def baseline_upload(client: Any, entries: Sequence[Path], *, bucket: str, prefix: str, completed_dir: Path,
                    scratch_dir: Path, check: Callable[[], None] | None = None) -> BaselineTotals:
    """The origin's loop over `entries` with a boto3 S3 `client`. Blocking; `check` is called between entries (to
    honour cancellation)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    def upload(entry: Path, archive: Path) -> None:
        try:
            with open(archive, "rb") as f:
                client.upload_fileobj(f, bucket, object_key(prefix, entry.name))
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            raise StorageError(f"the baseline could not upload {entry.name}: {exc}") from exc

    def compress(entry: Path, archive: Path) -> None:
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(entry, arcname=entry.name)

    archive_bytes, stages = sequential_pipeline(
        entries, compress=compress, upload=upload, move=os.rename, completed_dir=completed_dir,
        scratch_dir=scratch_dir, before_each=check,
    )
    return BaselineTotals(archive_bytes=archive_bytes, stage_seconds=stages)


def boto3_client(session: BenchmarkSession) -> Any:
    """A plain boto3 S3 client on the session's target, with its keys passed explicitly."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ConfigError("the origin's baseline needs boto3: pip install boto3") from exc
    probe = session.run_settings(session.root, concurrency=1)
    keys = session.credentials
    boto_session = boto3.session.Session(
        profile_name=probe.profile,
        aws_access_key_id=keys[0] if keys else None,
        aws_secret_access_key=keys[1] if keys else None,
    )
    return boto_session.client(
        "s3",
        endpoint_url=session.target.endpoint_url,
        region_name=probe.region or boto_session.region_name or LOCAL_REGION,
        config=Config(
            # botocore's defaults on AWS, none it computes itself on other endpoints (as before MGMT_CHECKSUM_MODE
            # gave way to amgmt's own MGMT_CHECKSUM_ALGORITHM)
            request_checksum_calculation="when_supported" if session.target.endpoint_url is None else "when_required",
            response_checksum_validation="when_supported" if session.target.endpoint_url is None else "when_required",
            s3={"addressing_style": probe.addressing_style},
        ),
    )


class OriginBaseline:
    """The origin's design as a `Baseline` of amgmt.bench.runner."""

    description = "tarfile gzip -9 + boto3, one entry at a time"

    def __init__(self) -> None:
        self._client: Any = None

    def prepare(self, session: BenchmarkSession) -> None:
        if self._client is None:
            self._client = boto3_client(session)

    async def run(self, session: BenchmarkSession, *, repeat: int) -> RunResult:
        """One timed run of the origin's loop over the whole data set."""
        await anyio.to_thread.run_sync(self.prepare, session)
        run_dir, prefix = session.new_run_dir("baseline")
        try:
            local = await anyio.to_thread.run_sync(session.populate, run_dir, session.pristine)
            entries = sorted((p for p in local.iterdir() if not p.name.startswith(".")),
                             key=lambda p: os.fsencode(p.name))
            sizes = [tree_size(p)[0] for p in entries]
            scratch = run_dir / "tmp"
            scratch.mkdir()
            with session.meter() as meter:
                started = time.perf_counter()
                totals = await anyio.to_thread.run_sync(functools.partial(
                    baseline_upload, self._client, entries, bucket=session.target.bucket, prefix=prefix,
                    completed_dir=local / "completed", scratch_dir=scratch, check=anyio.from_thread.check_cancelled,
                ))
                wall = time.perf_counter() - started
        finally:
            await session.discard(run_dir, prefix)
        assert meter.usage is not None
        return RunResult(
            label="baseline",
            kind=RunKind.BASELINE,
            repeat=repeat,
            concurrency=1,
            part_size=8 * MiB,  # boto3's TransferConfig default
            parts_in_flight=10,  # its max_concurrency default
            wall_seconds=wall,
            entries=len(entries),
            entries_ok=len(entries),
            source_bytes=sum(sizes),
            archive_bytes=totals.archive_bytes,
            usage=meter.usage,
            stage_seconds=totals.stage_seconds,
            object_prefix=prefix,
        )


def main(argv: Sequence[str] | None = None) -> None:
    """`amgmt benchmark` with the origin's baseline, the same options and output."""
    from amgmt import cli
    from amgmt.cli import benchmark_cmd

    benchmark_cmd.use_baseline(OriginBaseline())
    sys.argv = ["amgmt", "benchmark", *(sys.argv[1:] if argv is None else argv)]
    cli.main()


if __name__ == "__main__":  # anyio's worker processes import this file again: nothing may run on import
    main()
