"""The benchmark's results: one run, the repeats of one configuration, the whole report with the machine it ran
on, and their JSON-ready dicts; plus the best settings found, written into the config file. Pure values, no timing."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from amgmt import cpu
from amgmt.bench.datasets import DatasetSpec
from amgmt.bench.meter import ResourceUsage
from amgmt.config import default_config_path, env_key, format_size, own_config_path, write_config_values
from amgmt.models import Stage, utcnow
from amgmt.parts import GiB, MiB

# The stages an entry's record times (metadata["stage_seconds"]); "other" is the rest of the entry's duration.
STAGES: tuple[str, ...] = tuple(
    str(s)
    for s in (Stage.VALIDATE, Stage.RECORD, Stage.COMPRESS, Stage.UPLOAD, Stage.VERIFY, Stage.MOVE, Stage.CLEANUP)
)
OTHER = "other"
TUNED_KEYS = (env_key("part_size"), env_key("concurrency"), env_key("parts_in_flight"))
_VERSIONED = ("amgmt", "aioboto3", "aiobotocore", "botocore", "boto3", "isal", "anyio", "moto")


# The rows of cpu_breakdown that are not amgmt.cpu's measured steps.
PACK_REST = "pack: rest (tar layout, hand-overs, worker processes)"
EVENT_LOOP = "event loop (requests, signing, pipeline, bookkeeping)"
MAIN_REST = "main: other threads (sqlite, moves, thread hand-overs)"


def cpu_breakdown(usage: ResourceUsage, steps: Mapping[str, float], loop_seconds: float) -> dict[str, float]:
    """The client's CPU seconds of one run by step: the packing steps the workers measured (amgmt.cpu), what else
    the workers used, the event loop thread (measured around the run), the part reads and body digests, and what
    the main process's other threads used (the rest of its CPU). The rows add up to the client's CPU."""
    rows = {step: steps.get(step, 0.0) for step in cpu.PACK_STEPS}
    in_threads = steps.get(cpu.PACKED_IN_THREADS, 0.0)
    workers = usage.client_children_cpu_seconds
    rows[PACK_REST] = max(workers - (sum(rows.values()) - in_threads), 0.0)
    rows[EVENT_LOOP] = loop_seconds
    rows.update({step: steps.get(step, 0.0) for step in cpu.SEND_STEPS})
    main = usage.client_cpu_seconds - workers
    rows[MAIN_REST] = max(main - loop_seconds - sum(steps.get(s, 0.0) for s in cpu.SEND_STEPS) - in_threads, 0.0)
    return rows


class RunKind(StrEnum):
    AMGMT = "amgmt"
    BASELINE = "baseline"  # the origin's design: one entry at a time, tarfile gzip -9, boto3 upload_fileobj
    PEER = "peer"  # a hand-built pipeline of other tools (benchmarks/peers.py)


@dataclass(frozen=True)
class RunResult:
    """One timed run over the whole data set."""

    label: str
    kind: str
    repeat: int  # 1-based
    concurrency: int | None
    part_size: int | None
    parts_in_flight: int | None
    wall_seconds: float
    entries: int
    entries_ok: int
    source_bytes: int  # of the entries done
    archive_bytes: int
    usage: ResourceUsage
    stage_seconds: Mapping[str, float] = field(default_factory=dict)  # summed over entries
    entry_seconds: float = 0.0  # the entries' own durations, summed (more than the wall time when concurrent)
    failures: tuple[str, ...] = ()
    object_prefix: str = ""
    cpu_steps: Mapping[str, float] = field(default_factory=dict)  # client CPU seconds by step (cpu_breakdown)

    def cpu_per_gib(self) -> dict[str, float]:
        """The client's CPU seconds by step, per GiB of source data."""
        gib = self.source_bytes / GiB
        return {step: seconds / gib for step, seconds in self.cpu_steps.items()} if gib else {}

    @property
    def mib_per_second(self) -> float:
        return self.source_bytes / MiB / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def entries_per_second(self) -> float:
        return self.entries_ok / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def compression_ratio(self) -> float | None:
        return self.source_bytes / self.archive_bytes if self.archive_bytes else None

    @property
    def cpu_ms_per_entry(self) -> float | None:
        """The client's CPU (this process and its workers) per entry done, in milliseconds: the figure of the small
        data set, where the per-entry work (requests, records, hand-overs) outweighs the bytes."""
        cpu_seconds = self.usage.client_cpu_seconds
        return cpu_seconds * 1000 / self.entries_ok if self.entries_ok else None

    def stage_breakdown(self) -> dict[str, float]:
        """Seconds per stage the run timed, summed over entries, plus OTHER: entry time outside those stages
        (the final record save, waiting for a worker thread...), when the entries' durations are known."""
        stages = {name: self.stage_seconds[name] for name in STAGES if name in self.stage_seconds}
        stages.update({k: v for k, v in self.stage_seconds.items() if k not in stages})
        if self.entry_seconds:
            stages[OTHER] = max(self.entry_seconds - sum(stages.values()), 0.0)
        return stages

    def stage_shares(self) -> dict[str, float]:
        stages = self.stage_breakdown()
        total = sum(stages.values())
        return {k: v / total for k, v in stages.items()} if total else {}

    def to_dict(self) -> dict[str, Any]:
        ratio = self.compression_ratio
        return {
            "label": self.label,
            "kind": self.kind,
            "repeat": self.repeat,
            "concurrency": self.concurrency,
            "part_size": self.part_size,
            "parts_in_flight": self.parts_in_flight,
            "wall_seconds": round(self.wall_seconds, 4),
            "entries": self.entries,
            "entries_ok": self.entries_ok,
            "source_bytes": self.source_bytes,
            "archive_bytes": self.archive_bytes,
            "mib_per_second": round(self.mib_per_second, 3),
            "entries_per_second": round(self.entries_per_second, 3),
            "compression_ratio": round(ratio, 4) if ratio else None,
            "cpu_ms_per_entry": round(per_entry, 3) if (per_entry := self.cpu_ms_per_entry) is not None else None,
            **self.usage.to_dict(),
            "stage_seconds": {k: round(v, 4) for k, v in self.stage_breakdown().items()},
            "stage_shares": {k: round(v, 4) for k, v in self.stage_shares().items()},
            "entry_seconds": round(self.entry_seconds, 4),
            "failures": list(self.failures),
            "object_prefix": self.object_prefix,
            "cpu_seconds_by_step": {k: round(v, 3) for k, v in self.cpu_steps.items()},
            "cpu_seconds_per_gib_by_step": {k: round(v, 3) for k, v in self.cpu_per_gib().items()},
        }


@dataclass(frozen=True)
class RunSummary:
    """The repeats of one configuration; the table shows the run with the median wall time."""

    runs: tuple[RunResult, ...]
    speedup: float | None = None  # the baseline's median wall time over this one's

    @property
    def median(self) -> RunResult:
        ordered = sorted(self.runs, key=lambda r: r.wall_seconds)
        return ordered[(len(ordered) - 1) // 2]  # the lower middle one for an even count: a real run

    def to_dict(self) -> dict[str, Any]:
        median = self.median
        return {
            "label": median.label,
            "kind": median.kind,
            "concurrency": median.concurrency,
            "part_size": median.part_size,
            "parts_in_flight": median.parts_in_flight,
            "runs": len(self.runs),
            "median_repeat": median.repeat,
            "wall_seconds": [round(r.wall_seconds, 4) for r in self.runs],
            "median_wall_seconds": round(median.wall_seconds, 4),
            "median_mib_per_second": round(median.mib_per_second, 3),
            "speedup_vs_baseline": round(self.speedup, 3) if self.speedup else None,
        }


@dataclass(frozen=True)
class TargetInfo:
    bucket: str
    endpoint_url: str | None
    embedded: bool
    server_pid: int | None

    def describe(self) -> str:
        where = self.endpoint_url or "AWS S3"
        kind = "embedded moto server" if self.embedded else "given endpoint"
        return f"{kind} {where}, bucket {self.bucket!r}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "endpoint_url": self.endpoint_url,
            "embedded": self.embedded,
            "server_pid_measured": self.server_pid is not None,
        }


@dataclass(frozen=True)
class BenchmarkReport:
    started_at: datetime
    machine: Mapping[str, Any]
    dataset: DatasetSpec
    target: TargetInfo
    settings: Mapping[str, Any]  # the amgmt settings every run shared
    runs: tuple[RunResult, ...]
    repeat: int
    notes: tuple[str, ...] = ()

    def summaries(self) -> list[RunSummary]:
        """One per configuration, in the order first run; amgmt ones carry their speed-up over the baseline."""
        groups: dict[tuple[Any, ...], list[RunResult]] = {}
        for run in self.runs:
            key = (run.kind, run.label, run.concurrency, run.part_size, run.parts_in_flight)
            groups.setdefault(key, []).append(run)
        summaries = [RunSummary(tuple(runs)) for runs in groups.values()]
        base = next((s for s in summaries if s.median.kind == RunKind.BASELINE), None)
        if base is None or base.median.wall_seconds <= 0:
            return summaries
        return [
            replace(s, speedup=base.median.wall_seconds / s.median.wall_seconds if s.median.wall_seconds else None)
            for s in summaries
        ]

    @property
    def failed(self) -> bool:
        return any(r.failures or r.entries_ok < r.entries for r in self.runs)

    def best(self) -> RunSummary | None:
        """The amgmt configuration with the highest median throughput."""
        candidates = [s for s in self.summaries() if s.median.kind == RunKind.AMGMT and not s.median.failures]
        return max(candidates, key=lambda s: s.median.mib_per_second, default=None)

    def tuned_settings(self) -> dict[str, str]:
        """The best configuration as config file values (MGMT_PART_SIZE, MGMT_CONCURRENCY, MGMT_PARTS_IN_FLIGHT)."""
        best = self.best()
        if best is None:
            return {}
        run = best.median
        assert run.part_size is not None and run.concurrency is not None and run.parts_in_flight is not None
        return dict(
            zip(TUNED_KEYS, (format_size(run.part_size), str(run.concurrency), str(run.parts_in_flight)), strict=True)
        )

    def to_dict(self) -> dict[str, Any]:
        best = self.best()
        return {
            "started_at": self.started_at.isoformat(),
            "machine": dict(self.machine),
            "dataset": self.dataset.to_dict(),
            "target": self.target.to_dict(),
            "settings": dict(self.settings),
            "repeat": self.repeat,
            "summary": [s.to_dict() for s in self.summaries()],
            "best": best.to_dict() if best else None,
            "tuned_settings": self.tuned_settings(),
            "runs": [r.to_dict() for r in self.runs],
            "notes": list(self.notes),
        }


# -- the machine ------------------------------------------------------------------------------------------------------


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _memory_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def _versions() -> Iterator[tuple[str, str | None]]:
    for name in _VERSIONED:
        try:
            yield name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            yield name, None


def source_revision() -> dict[str, Any] | None:
    """The git commit of the amgmt being measured, and whether its tree had changes; None outside a checkout."""
    checkout = Path(__file__).resolve().parents[2]  # amgmt/bench/report.py -> the checkout
    if not (checkout / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "modified_files": [line[3:] for line in changes.splitlines()]}


def machine_info() -> dict[str, Any]:
    return {
        "date": utcnow().isoformat(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": _memory_bytes(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": dict(_versions()),
        "amgmt_source": source_revision(),
    }


# -- saving tuned settings --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedSettings:
    path: Path
    values: Mapping[str, str]
    seeded_from: Path | None  # the origin's config, copied in first because amgmt reads only one config file


def tuned_config_path(environ: Mapping[str, str], config_path: Path | None = None) -> Path:
    """`config_path`, else $XDG_CONFIG_HOME (absolute) or $HOME/.config, then amgmt/config."""
    if config_path is not None:
        return Path(os.path.expanduser(config_path)).absolute()
    return own_config_path(environ)


def save_tuned_settings(
    values: Mapping[str, str],
    *,
    environ: Mapping[str, str],
    config_path: Path | None = None,
    now: datetime | None = None,
) -> SavedSettings:
    """Write `values` (MGMT_* keys) into the config file with `settings.write_config_values`.

    Keys already in the file are replaced where they stand and every other line is kept; new keys are appended under
    a "# tuned by" comment. Without `config_path`, when amgmt's own file does not exist yet but the origin's
    (~/.config/mgmt/config) does, the new file starts as a copy of it: amgmt reads only the first config file it
    finds, so the origin's other settings would be lost otherwise.
    """
    path = tuned_config_path(environ, config_path)
    when = (now or utcnow()).astimezone().strftime("%Y-%m-%d %H:%M")
    seeded_from = write_config_values(
        path,
        values,
        comment=f"tuned by `amgmt benchmark --tune --save` on {when}",
        seed_from=default_config_path(environ) if config_path is None else None,
    )
    return SavedSettings(path=path, values=dict(values), seeded_from=seeded_from)
