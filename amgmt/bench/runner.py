"""`amgmt benchmark`: timed runs of the real pipeline (`upload_batch`) and of the origin's design on a generated data
set, with client and server CPU, peak RSS and where each entry's time went; and saving the best settings found.

It owns the data set specs, the benchmark's work dir and embedded server, and the measurements. It never prints
(progress goes to a callback) and never changes how amgmt uploads: it calls `upload_batch` as `amgmt upload` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import importlib.metadata
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

from amgmt.upload.batch import list_entries, upload_batch
from amgmt.local.copying import tree_size
from amgmt.bench.datasets import make_media_set, make_photo_set
from amgmt.errors import ConfigError, StorageError
from amgmt.bench.localserver import LOCAL_KEYS, LOCAL_REGION, LocalS3Server
from amgmt.text import human_size
from amgmt.models import OperationStatus, Stage, UploadRecord, utcnow
from amgmt.naming import object_key
from amgmt.parts import MAX_PART_SIZE, MIN_PART_SIZE, GiB, MiB
from amgmt.s3 import ClientOptions, S3Bucket
from amgmt.config import Settings, default_config_path, env_key, format_size, load_settings, own_config_path, write_config_values

ProgressCallback = Callable[[str], None]

# The stages an entry's record times (metadata["stage_seconds"]); "other" is the rest of the entry's duration.
STAGES: tuple[str, ...] = tuple(
    str(s) for s in (Stage.VALIDATE, Stage.RECORD, Stage.COMPRESS, Stage.UPLOAD, Stage.VERIFY, Stage.MOVE,
                      Stage.CLEANUP)
)
OTHER = "other"
SAMPLE_INTERVAL = 0.05
TUNED_KEYS = (env_key("part_size"), env_key("concurrency"), env_key("parts_in_flight"))
DEFAULT_TUNE_PART_SIZES = (8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB)
_PEAK_DISK_FACTOR = 2.2  # pristine set + staging archives + the baseline's temp archive, with room to spare
_VERSIONED = ("amgmt", "aioboto3", "aiobotocore", "botocore", "boto3", "isal", "anyio", "moto")


# -- data sets ------------------------------------------------------------------------------------------------


class DatasetName(StrEnum):
    MEDIA = "media"
    SMALL = "small"
    LARGE = "large"


@dataclass(frozen=True)
class DatasetSpec:
    """A reproducible generated data set. Each video and photo is an entry; the texts form one directory entry.

    Videos and photos are seeded random bytes (incompressible), texts are CSV lines (compressible about 4x).
    """

    name: str
    scale: float = 1.0
    videos: int = 0
    video_size: int = 0
    texts: int = 0
    text_size: int = 0
    photos: int = 0
    photo_size: int = 0
    seed: int = 1

    @property
    def entries(self) -> int:
        return self.videos + self.photos + (1 if self.texts else 0)

    @property
    def total_bytes(self) -> int:
        return self.videos * self.video_size + self.texts * self.text_size + self.photos * self.photo_size

    def describe(self) -> str:
        parts = []
        if self.videos:
            parts.append(f"{self.videos} x {human_size(self.video_size)} video")
        if self.texts:
            parts.append(f"1 dir of {self.texts} x {human_size(self.text_size)} CSV")
        if self.photos:
            parts.append(f"{self.photos} x {human_size(self.photo_size)} photo")
        scale = "" if self.scale == 1 else f", scale {self.scale:g}"
        return f"{self.name}{scale}: {' + '.join(parts)} = {self.entries} entries, {human_size(self.total_bytes)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scale": self.scale,
            "videos": self.videos,
            "video_size": self.video_size,
            "texts": self.texts,
            "text_size": self.text_size,
            "photos": self.photos,
            "photo_size": self.photo_size,
            "seed": self.seed,
            "entries": self.entries,
            "total_bytes": self.total_bytes,
            "description": self.describe(),
        }


_BASE_DATASETS = {
    DatasetName.MEDIA: DatasetSpec("media", videos=16, video_size=64 * MiB, texts=400, text_size=128 * 1024),
    DatasetName.SMALL: DatasetSpec("small", photos=2000, photo_size=64 * 1024),
    DatasetName.LARGE: DatasetSpec("large", videos=2, video_size=1 * GiB),
}


def dataset_spec(name: str, scale: float = 1.0) -> DatasetSpec:
    """The named data set, scaled: file sizes for `media` and `large`, the file count for `small`."""
    try:
        base = _BASE_DATASETS[DatasetName(name)]
    except ValueError:
        raise ConfigError(f"unknown data set {name!r}: expected one of {', '.join(DatasetName)}") from None
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"--scale must be a number greater than 0, got {scale}")
    if scale == 1:
        return base
    if base.photos:
        return replace(base, scale=scale, photos=max(1, round(base.photos * scale)))

    def sized(size: int) -> int:
        return max(1, round(size * scale)) if size else 0

    return replace(base, scale=scale, video_size=sized(base.video_size), text_size=sized(base.text_size))


def generate_dataset(spec: DatasetSpec, root: Path) -> Path:
    """Write the data set's entries directly into `root` (created); the same spec always gives the same bytes."""
    make_media_set(root, videos=spec.videos, video_size=spec.video_size, texts=spec.texts,
                   text_size=spec.text_size, seed=spec.seed)
    if spec.photos:
        make_photo_set(root, count=spec.photos, size=spec.photo_size, seed=spec.seed + 1)
    return root



# -- measuring CPU and memory ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceUsage:
    """What one timed run cost. The client is this process and its descendants, the server the process given as
    `server_pid` and its descendants (the embedded moto server is a child of the benchmark, yet not the client)."""

    client_user_seconds: float
    client_sys_seconds: float
    client_children_cpu_seconds: float  # of the client's CPU, what its child processes used (compression workers)
    client_peak_rss: int  # bytes: the highest sum of the client processes' RSS seen (sampled)
    client_start_rss: int  # the same sum when the run started: Python rarely gives memory back, see settle()
    server_cpu_seconds: float | None
    server_peak_rss: int | None
    meter_cpu_seconds: float  # the sampler thread's own cost, already taken out of the client's
    samples: int
    machine_cpu_seconds: float | None = None  # busy CPU time of the whole machine (/proc/stat), every process

    @property
    def client_cpu_seconds(self) -> float:
        return self.client_user_seconds + self.client_sys_seconds

    @property
    def other_cpu_seconds(self) -> float | None:
        """CPU the rest of the machine used meanwhile: other work competing with the run for the same cores."""
        if self.machine_cpu_seconds is None:
            return None
        ours = self.client_cpu_seconds + self.meter_cpu_seconds + (self.server_cpu_seconds or 0.0)
        return max(self.machine_cpu_seconds - ours, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "client_cpu_seconds": round(self.client_cpu_seconds, 3),
            "client_user_seconds": round(self.client_user_seconds, 3),
            "client_sys_seconds": round(self.client_sys_seconds, 3),
            "client_children_cpu_seconds": round(self.client_children_cpu_seconds, 3),
            "client_peak_rss": self.client_peak_rss,
            "client_start_rss": self.client_start_rss,
            "server_cpu_seconds": None if self.server_cpu_seconds is None else round(self.server_cpu_seconds, 3),
            "server_peak_rss": self.server_peak_rss,
            "meter_cpu_seconds": round(self.meter_cpu_seconds, 3),
            "other_cpu_seconds": None if self.other_cpu_seconds is None else round(self.other_cpu_seconds, 3),
            "samples": self.samples,
        }


@dataclass(frozen=True)
class _Proc:
    ppid: int
    started: int  # clock ticks after boot: tells a reused pid apart
    user: int  # clock ticks, own + reaped children's
    sys: int
    rss: int  # pages


def _machine_busy_ticks() -> int | None:
    """Clock ticks all CPUs spent on anything but idle and I/O wait since boot (/proc/stat)."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    return sum(fields[:8]) - fields[3] - fields[4]


def _read_proc(pid: int) -> _Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:  # gone
        return None
    # Fields after "(comm)": comm may hold spaces and parentheses, so split after its last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    return _Proc(
        ppid=int(fields[1]),
        started=int(fields[19]),
        user=int(fields[11]) + int(fields[13]),  # utime + cutime
        sys=int(fields[12]) + int(fields[14]),  # stime + cstime
        rss=int(fields[21]),
    )


_SELF, _CLIENT, _SERVER, _OTHER = "self", "client", "server", "other"
_Snapshot = dict[tuple[int, int], tuple[str, _Proc]]  # (pid, started) -> (role, stat)


class _ProcessTree:
    """The live processes that descend from this one, each classified once, when first seen, by its parent: the
    server's subtree, the client's (the rest of our descendants), or none of ours. Needs Linux's /proc."""

    def __init__(self, server_pid: int | None) -> None:
        self.root = os.getpid()
        self.server_pid = server_pid
        self.roles: dict[int, tuple[int, str]] = {}  # pid -> (started, role)

    def _role(self, pid: int, new: dict[int, _Proc], seen: set[int]) -> str:
        if pid == self.root:
            return _SELF
        if pid in self.roles:
            return self.roles[pid][1]
        proc = new.get(pid)
        if proc is None or pid in seen:
            return _OTHER
        seen.add(pid)
        parent = self._role(proc.ppid, new, seen)
        if pid == self.server_pid or parent == _SERVER:
            role = _SERVER
        elif parent in (_SELF, _CLIENT):
            role = _CLIENT
        else:
            role = _OTHER
        self.roles[pid] = (proc.started, role)
        return role

    def scan(self) -> _Snapshot:
        live = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        for pid in self.roles.keys() - live:
            del self.roles[pid]
        new = {pid: proc for pid in live - self.roles.keys() - {self.root} if (proc := _read_proc(pid))}
        for pid in new:
            self._role(pid, new, set())
        snapshot: _Snapshot = {}
        mine = [(pid, started, role) for pid, (started, role) in self.roles.items() if role != _OTHER]
        for pid, started, role in [(self.root, -1, _SELF), *mine]:
            proc = new.get(pid) or _read_proc(pid)
            if proc is not None and (role == _SELF or proc.started == started):
                snapshot[(pid, proc.started)] = (role, proc)
        return snapshot


def settle() -> None:
    """Give freed memory back before a measurement: collect cycles and ask glibc to return free heap pages (after
    large buffers were freed, glibc keeps them, and the next run's peak RSS would start from the last run's)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class ResourceMeter:
    """Client and server CPU seconds and peak RSS over a `with` block.

    CPU: this process's getrusage (all its threads) plus its reaped children's, plus the /proc deltas of live
    descendants (anyio's compression workers stay alive between runs, so RUSAGE_CHILDREN alone misses them). A
    process seen at the start that is gone at the end had its whole life added to its reaper's counters, so its
    start value is taken off. RSS: a thread sums the client's (and the server's) RSS every `interval` seconds; its
    own CPU time is measured and taken out of the client's. Linux only (/proc).
    """

    def __init__(self, *, server_pid: int | None, interval: float = SAMPLE_INTERVAL) -> None:
        self.server_pid = server_pid
        self.interval = interval
        self._tree = _ProcessTree(server_pid)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = {_CLIENT: 0, _SERVER: 0}
        self._samples = 0
        self._meter_cpu = (0.0, 0.0)
        self._start: _Snapshot = {}
        self._rusage: tuple[resource.struct_rusage, resource.struct_rusage] | None = None
        self._machine: int | None = None
        self._start_rss = 0
        self.usage: ResourceUsage | None = None

    def __enter__(self) -> ResourceMeter:
        settle()
        self._start = self._tree.scan()
        self._note(self._start)
        self._start_rss = self._peak[_CLIENT]
        self._rusage = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
        self._machine = _machine_busy_ticks()
        self._thread = threading.Thread(target=self._sample, name="amgmt-benchmark-meter", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._note(self._tree.scan())
        own = resource.getrusage(resource.RUSAGE_THREAD)
        self._meter_cpu = (own.ru_utime, own.ru_stime)

    def _note(self, snapshot: _Snapshot) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        totals = {_CLIENT: 0, _SERVER: 0}
        for role, proc in snapshot.values():
            totals[_CLIENT if role == _SELF else role] += proc.rss * page
        for role, total in totals.items():
            self._peak[role] = max(self._peak[role], total)
        self._samples += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._thread is not None and self._rusage is not None
        self._stop.set()
        self._thread.join()
        end_self, end_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        machine_end = _machine_busy_ticks()
        end = self._tree.scan()
        self._note(end)
        tick = os.sysconf("SC_CLK_TCK")
        start_self, start_children = self._rusage
        d_user, d_sys = self._delta(end, _CLIENT)
        meter_user, meter_sys = self._meter_cpu
        reaped_user = end_children.ru_utime - start_children.ru_utime
        reaped_sys = end_children.ru_stime - start_children.ru_stime
        children = reaped_user + reaped_sys + (d_user + d_sys) / tick
        user = end_self.ru_utime - start_self.ru_utime - meter_user + reaped_user + d_user / tick
        system = end_self.ru_stime - start_self.ru_stime - meter_sys + reaped_sys + d_sys / tick
        server: float | None = None
        if self.server_pid is not None:
            s_user, s_sys = self._delta(end, _SERVER)
            server = (s_user + s_sys) / tick
        self.usage = ResourceUsage(
            client_user_seconds=max(user, 0.0),
            client_sys_seconds=max(system, 0.0),
            client_children_cpu_seconds=max(children, 0.0),
            client_peak_rss=self._peak[_CLIENT],
            client_start_rss=self._start_rss,
            server_cpu_seconds=server,
            server_peak_rss=self._peak[_SERVER] if self.server_pid is not None else None,
            meter_cpu_seconds=meter_user + meter_sys,
            samples=self._samples,
            machine_cpu_seconds=(machine_end - self._machine) / tick
            if machine_end is not None and self._machine is not None else None,
        )

    def _delta(self, end: _Snapshot, role: str) -> tuple[int, int]:
        user = system = 0
        for key, (r, proc) in end.items():
            if r == role:
                before = self._start.get(key)
                user += proc.user - (before[1].user if before else 0)
                system += proc.sys - (before[1].sys if before else 0)
        for key, (r, proc) in self._start.items():
            if r == role and key not in end:
                user -= proc.user
                system -= proc.sys
        return user, system


# -- results --------------------------------------------------------------------------------------------------


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

    @property
    def mib_per_second(self) -> float:
        return self.source_bytes / MiB / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def entries_per_second(self) -> float:
        return self.entries_ok / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def compression_ratio(self) -> float | None:
        return self.source_bytes / self.archive_bytes if self.archive_bytes else None

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
            **self.usage.to_dict(),
            "stage_seconds": {k: round(v, 4) for k, v in self.stage_breakdown().items()},
            "stage_shares": {k: round(v, 4) for k, v in self.stage_shares().items()},
            "entry_seconds": round(self.entry_seconds, 4),
            "failures": list(self.failures),
            "object_prefix": self.object_prefix,
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
        return {"bucket": self.bucket, "endpoint_url": self.endpoint_url, "embedded": self.embedded,
                "server_pid_measured": self.server_pid is not None}


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
        return [replace(s, speedup=base.median.wall_seconds / s.median.wall_seconds if s.median.wall_seconds else None)
                for s in summaries]

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
        return dict(zip(TUNED_KEYS, (format_size(run.part_size), str(run.concurrency), str(run.parts_in_flight))))

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


# -- the runs -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to run. Without `bucket` the runs go to an embedded moto server started for the benchmark; with it, to
    that bucket (and `endpoint_url`, else AWS) with the standard AWS chain's credentials, or `credentials`."""

    dataset: DatasetSpec
    concurrencies: tuple[int, ...] = (1, 4, 8)
    part_sizes: tuple[int | None, ...] = (None,)  # None: the configured MGMT_PART_SIZE
    parts_in_flight: tuple[int | None, ...] = (None,)  # None: the configured MGMT_PARTS_IN_FLIGHT
    repeat: int = 1
    baseline: bool = True
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
        if not self.part_sizes or any(p is not None and not MIN_PART_SIZE <= p <= MAX_PART_SIZE
                                      for p in self.part_sizes):
            raise ConfigError(f"part sizes must be from {format_size(MIN_PART_SIZE)} to {format_size(MAX_PART_SIZE)}")
        if not self.parts_in_flight or any(f is not None and not 1 <= f <= 1024 for f in self.parts_in_flight):
            raise ConfigError("parts in flight must be integers from 1 to 1024")
        if self.repeat < 1:
            raise ConfigError("--repeat must be at least 1")
        if self.endpoint_url and not self.bucket:
            raise ConfigError("--endpoint-url needs --bucket (without both, the embedded local server is used)")


class _Environment:
    """Sets and later restores process environment variables: upload_batch takes credentials from the AWS chain
    only, so the embedded server's fixed keys reach it this way while a session is open."""

    def __init__(self, values: Mapping[str, str | None]) -> None:
        self.values = values
        self.saved: dict[str, str | None] = {}

    def apply(self) -> None:
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def restore(self) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.saved.clear()


def _credentials_environment(keys: tuple[str, str]) -> _Environment:
    return _Environment({
        "AWS_ACCESS_KEY_ID": keys[0],
        "AWS_SECRET_ACCESS_KEY": keys[1],
        "AWS_SESSION_TOKEN": None,
        "AWS_SECURITY_TOKEN": None,
        "AWS_PROFILE": None,  # a profile the user's AWS config lacks would fail the session before any request
        "AWS_DEFAULT_PROFILE": None,
    })


def _import_boto3() -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise ConfigError("the benchmark needs boto3 (for the baseline and to delete its objects after each run): "
                          "pip install boto3") from exc
    return boto3


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
        self.target = TargetInfo(bucket=config.bucket or "amgmt-benchmark", endpoint_url=config.endpoint_url,
                                 embedded=config.bucket is None, server_pid=config.server_pid)
        self.notes: list[str] = []
        self._env: _Environment | None = None
        self._boto3_client: Any = None
        self._runs = 0
        self._closers = contextlib.ExitStack()

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
        config = self.config
        parent = config.workdir or Path(tempfile.gettempdir())
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix="amgmt-benchmark-", dir=parent)).resolve()
        except OSError as exc:
            raise ConfigError(f"cannot create a work dir in {parent}: {exc.strerror or exc}") from exc
        self._closers.callback(shutil.rmtree, self.root, ignore_errors=True)
        need = int(config.dataset.total_bytes * _PEAK_DISK_FACTOR)
        free = shutil.disk_usage(self.root).free
        if free < need:
            raise ConfigError(f"the work dir {self.root.parent} has {human_size(free)} free; this data set needs "
                              f"about {human_size(need)} (use --workdir or a smaller --scale)")
        keys = config.credentials
        if self.target.embedded:
            self.on_progress("starting the embedded S3 server (moto) on 127.0.0.1")
            self.server = await anyio.to_thread.run_sync(LocalS3Server().start)
            self._closers.callback(self.server.stop)
            self.target = replace(self.target, endpoint_url=self.server.endpoint_url, server_pid=self.server.pid)
            keys = LOCAL_KEYS
        if keys is not None:
            self._env = _credentials_environment(keys)
            self._env.apply()
            self._closers.callback(self._env.restore)
        probe = self.run_settings(self.root, concurrency=1)
        options = ClientOptions.from_settings(probe, max_connections=2)
        if keys is not None:
            options = replace(options, local_credentials=keys)
        async with S3Bucket.connect(options) as s3:
            if self.target.embedded:
                await s3.create_bucket()
            await s3.check_bucket()
        if config.baseline:
            await anyio.to_thread.run_sync(self.boto3_client)  # imported and connected outside the timings
        self.on_progress(f"generating the data set {config.dataset.describe()}")
        self.pristine = self.root / "data"
        await anyio.to_thread.run_sync(generate_dataset, config.dataset, self.pristine)

    async def _close(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._closers.close)

    async def warm_up(self) -> None:
        """An untimed amgmt run: it starts anyio's compression workers (they stay for the session) and imports
        what the first upload needs, which the first timed run would pay for otherwise."""
        count = min(os.cpu_count() or 1, max(self.config.concurrencies))
        source = self.root / "warmup-data"
        await anyio.to_thread.run_sync(functools.partial(make_photo_set, source, count=count, size=64 * 1024))
        self.on_progress("warm-up run (not timed)")
        await self._amgmt_run(source, label="warmup", repeat=0, concurrency=count, part_size=None,
                              parts_in_flight=None)

    # -- settings and S3 helpers -----------------------------------------------------------------------------

    def run_settings(self, run_dir: Path, *, concurrency: int, part_size: int | None = None,
                     parts_in_flight: int | None = None, prefix: str = "") -> Settings:
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
        return load_settings(flags=flags, environ=environ, config_path=self.config.config_path,
                             require_bucket=True, cwd=run_dir)

    def boto3_client(self) -> Any:
        """A plain boto3 S3 client on the target (for the baseline and for deleting the benchmark's objects)."""
        if self._boto3_client is None:
            boto3 = _import_boto3()
            from botocore.config import Config

            probe = self.run_settings(self.root, concurrency=1)
            keys = LOCAL_KEYS if self.target.embedded else self.config.credentials
            session = boto3.session.Session(
                profile_name=probe.profile,
                aws_access_key_id=keys[0] if keys else None,
                aws_secret_access_key=keys[1] if keys else None,
            )
            self._boto3_client = session.client(
                "s3",
                endpoint_url=self.target.endpoint_url,
                region_name=probe.region or session.region_name or LOCAL_REGION,
                config=Config(
                    request_checksum_calculation=probe.checksum_mode,
                    response_checksum_validation=probe.checksum_mode,
                    s3={"addressing_style": probe.addressing_style},
                ),
            )
        return self._boto3_client

    def delete_prefix(self, prefix: str) -> None:
        """Delete the objects (and abort the unfinished multipart uploads) under `prefix/`. Blocking."""
        client = self.boto3_client()
        bucket = self.target.bucket
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix + "/"):
                for upload in page.get("Uploads", []):
                    client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except Exception as exc:  # noqa: BLE001 - a failed clean-up must not lose the measurements
            self.notes.append(f"could not delete the objects under s3://{bucket}/{prefix}/: {exc}")

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
        await anyio.to_thread.run_sync(self.delete_prefix, prefix)

    def meter(self) -> ResourceMeter:
        return ResourceMeter(server_pid=self.target.server_pid)

    async def run_amgmt(self, *, concurrency: int, part_size: int | None = None, parts_in_flight: int | None = None,
                        repeat: int = 1) -> RunResult:
        """One timed `upload_batch` of the whole data set."""
        return await self._amgmt_run(self.pristine, label="amgmt", repeat=repeat, concurrency=concurrency,
                                     part_size=part_size, parts_in_flight=parts_in_flight)

    async def _amgmt_run(self, source: Path, *, label: str, repeat: int, concurrency: int, part_size: int | None,
                         parts_in_flight: int | None) -> RunResult:
        run_dir, prefix = self.new_run_dir(f"{label}-c{concurrency}")
        try:
            await anyio.to_thread.run_sync(self.populate, run_dir, source)
            settings = self.run_settings(run_dir, concurrency=concurrency, part_size=part_size,
                                         parts_in_flight=parts_in_flight, prefix=prefix)
            entries, _ = list_entries(settings)
            command_args = {"command": "benchmark", "concurrency": concurrency, "part_size": settings.part_size,
                            "parts_in_flight": settings.parts_in_flight}
            with self.meter() as meter:
                started = time.perf_counter()
                report = await upload_batch(settings, entries, command_args=command_args)
                wall = time.perf_counter() - started
        finally:
            await self.discard(run_dir, prefix)
        assert meter.usage is not None
        done = [r for r in report.records if r.status in (OperationStatus.SUCCESS, OperationStatus.PARTIAL)]
        failures = [f"{r.target_name}: {r.status}: {r.error_message or ''}".rstrip(": ")
                    for r in report.records if r.status != OperationStatus.SUCCESS]
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
        )

    async def run_baseline(self, *, repeat: int = 1) -> RunResult:
        """One timed run of the origin's design over the whole data set (see `baseline_upload`)."""
        run_dir, prefix = self.new_run_dir("baseline")
        try:
            local = await anyio.to_thread.run_sync(self.populate, run_dir, self.pristine)
            entries = sorted((p for p in local.iterdir() if not p.name.startswith(".")),
                             key=lambda p: os.fsencode(p.name))
            sizes = [tree_size(p)[0] for p in entries]
            client = await anyio.to_thread.run_sync(self.boto3_client)
            scratch = run_dir / "tmp"
            scratch.mkdir()
            with self.meter() as meter:
                started = time.perf_counter()
                totals = await anyio.to_thread.run_sync(functools.partial(
                    baseline_upload, client, entries, bucket=self.target.bucket, prefix=prefix,
                    completed_dir=local / "completed", scratch_dir=scratch, check=anyio.from_thread.check_cancelled,
                ))
                wall = time.perf_counter() - started
        finally:
            await self.discard(run_dir, prefix)
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

    def report(self, runs: Sequence[RunResult]) -> BenchmarkReport:
        probe = self.run_settings(self.root, concurrency=1)
        settings = {
            "part_size": probe.part_size,
            "parts_in_flight": probe.parts_in_flight,
            "multipart_threshold": probe.multipart_threshold,
            "compression_level": probe.compression_level,
            "checksum_mode": probe.checksum_mode,
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
        for stage, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[stage] += seconds
    return archive_bytes, stages


@dataclass(frozen=True)
class BaselineTotals:
    archive_bytes: int
    stage_seconds: dict[str, float]


def baseline_upload(client: Any, entries: Sequence[Path], *, bucket: str, prefix: str, completed_dir: Path,
                    scratch_dir: Path, check: Callable[[], None] | None = None) -> BaselineTotals:
    """The origin's design, as the speed-up's reference: one entry at a time, `tarfile` "w:gz" (zlib level 9) to a
    temp file, boto3 `upload_fileobj` (its default transfer config), then `os.rename` into the completed dir.
    No verification, no records. Blocking; `check` is called between entries (to honour cancellation)."""
    from botocore.exceptions import BotoCoreError, ClientError
    from boto3.exceptions import Boto3Error

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


async def run_benchmark(config: BenchmarkConfig, *, on_progress: ProgressCallback | None = None) -> BenchmarkReport:
    """Time the baseline (unless switched off) and amgmt at every point of concurrency x part size x parts in
    flight, `repeat` times each.

    The baseline runs first, before amgmt's compression workers exist (they would count in its RSS); then an
    untimed warm-up; then amgmt's repeats, interleaved so that drift hits every configuration alike."""
    progress = on_progress or (lambda _line: None)
    grid = [(c, p, f) for p in config.part_sizes for f in config.parts_in_flight for c in config.concurrencies]
    total = config.repeat * (len(grid) + (1 if config.baseline else 0))
    runs: list[RunResult] = []
    async with BenchmarkSession(config, on_progress=progress) as session:
        for repeat in range(1, config.repeat + 1 if config.baseline else 1):
            progress(f"[{len(runs) + 1}/{total}] baseline (tarfile gzip -9 + boto3, one entry at a time)")
            runs.append(await session.run_baseline(repeat=repeat))
            progress(_run_line(runs[-1]))
        if config.warmup:
            await session.warm_up()
        for repeat in range(1, config.repeat + 1):
            for concurrency, part_size, in_flight in grid:
                shown = ", ".join(x for x in (f"concurrency {concurrency}",
                                              part_size and f"part size {format_size(part_size)}",
                                              in_flight and f"{in_flight} parts in flight") if x)
                progress(f"[{len(runs) + 1}/{total}] amgmt {shown}")
                runs.append(await session.run_amgmt(concurrency=concurrency, part_size=part_size,
                                                    parts_in_flight=in_flight, repeat=repeat))
                progress(_run_line(runs[-1]))
        return session.report(runs)


def _run_line(run: RunResult) -> str:
    line = (f"    {run.wall_seconds:.2f} s, {run.mib_per_second:.1f} MiB/s, "
            f"client CPU {run.usage.client_cpu_seconds:.1f} s")
    if run.usage.server_cpu_seconds is not None:
        line += f", server CPU {run.usage.server_cpu_seconds:.1f} s"
    if run.usage.other_cpu_seconds:
        line += f", other processes' CPU {run.usage.other_cpu_seconds:.1f} s"
    if run.failures:
        line += f", {len(run.failures)} not done: {run.failures[0]}"
    return line


# -- saving tuned settings ------------------------------------------------------------------------------------


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


def save_tuned_settings(values: Mapping[str, str], *, environ: Mapping[str, str], config_path: Path | None = None,
                        now: datetime | None = None) -> SavedSettings:
    """Write `values` (MGMT_* keys) into the config file with `settings.write_config_values`.

    Keys already in the file are replaced where they stand and every other line is kept; new keys are appended under
    a "# tuned by" comment. Without `config_path`, when amgmt's own file does not exist yet but the origin's
    (~/.config/mgmt/config) does, the new file starts as a copy of it: amgmt reads only the first config file it
    finds, so the origin's other settings would be lost otherwise.
    """
    path = tuned_config_path(environ, config_path)
    when = (now or utcnow()).astimezone().strftime("%Y-%m-%d %H:%M")
    seeded_from = write_config_values(path, values, comment=f"tuned by `amgmt benchmark --tune --save` on {when}",
                                      seed_from=default_config_path(environ) if config_path is None else None)
    return SavedSettings(path=path, values=dict(values), seeded_from=seeded_from)


# -- the machine ----------------------------------------------------------------------------------------------


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
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
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
