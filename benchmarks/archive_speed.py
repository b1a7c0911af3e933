"""Speed of `amgmt.local.archive.compress_entry` on generated data: MiB/s (wall) and CPU-seconds per GiB, median
of N runs.

    .venv/bin/python benchmarks/archive_speed.py                        # the current code, level 1
    .venv/bin/python benchmarks/archive_speed.py --baseline HEAD        # ... side by side with the archive code at HEAD
    .venv/bin/python benchmarks/archive_speed.py --variants current,inline,block2m --levels 1,2 --rss

Data sets (written once to a temp dir, so they are in the page cache): "video", one file of random bytes
(--video-mib, 512), and "text", a directory of --files (400) log-like text files of --file-kib (128) KiB each.
Every run compresses into a staging dir on the same file system (as amgmt does: not fsynced) and deletes the archive;
one untimed call per variant comes first, as a worker process that has compressed before.

Variants run alternately (run 1 of every variant, then run 2, ...), so drift on a shared, noisy machine hits them
alike. Columns: MiB/s is source bytes over wall time; CPU s/GiB is user+sys of this whole process (every thread,
getrusage RUSAGE_SELF) per GiB of source; "main" is the calling thread's share (RUSAGE_THREAD), the rest ran in
compress_entry's helper threads; fsync is the wall time of fsync calls (0 now; a --baseline from before they were
dropped shows them); ratio is source/archive bytes; others
is how many CPUs other processes kept busy meanwhile (from /proc/stat: wall times taken while others > ~0.1 are
not comparable), and "quiet MiB/s (n)" the median over the n runs with others < 0.15; with --rss, the peak RSS
growth over the call (VmRSS sampled every 5 ms, which slightly inflates CPU). CPU seconds are much steadier than
wall time when other processes compete for the cores. A variant sets module attributes (KNOBS) of amgmt.local.archive
or amgmt.local.deflate, whichever has it (a --baseline from before the split: its one module).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from amgmt.local import archive, deflate

MiB = 1024 * 1024
GiB = 1024 * MiB
QUIET = 0.15  # "quiet MiB/s": the median over runs while other processes used less than this many CPUs
REPO = Path(__file__).resolve().parent.parent

# name -> module attributes to set for the run (restored afterwards); "current" is the module as it is.
KNOBS: dict[str, dict[str, object]] = {
    "current": {},
    "inline": {"_HELPER_THREADS": False},  # everything in the calling thread (what a 1-CPU machine does)
    "blocks4": {"_BLOCKS": 4},  # one more block in flight between the reading and the deflate thread
    "outputs2": {"_QUEUED_OUTPUTS": 2},  # one more deflated block waiting for the writer thread
    "block256k": {"_BLOCK_SIZE": 256 * 1024},
    "block512k": {"_BLOCK_SIZE": 512 * 1024},
    "block2m": {"_BLOCK_SIZE": 2 * MiB},
    "block4m": {"_BLOCK_SIZE": 4 * MiB},
}


@dataclass
class Variant:
    name: str
    module: ModuleType  # the one with compress_entry
    knobs: dict[str, object]
    homes: tuple[ModuleType, ...]  # where the knobs live
    level: int


@dataclass
class Sample:
    wall: float
    cpu: float
    main_cpu: float
    fsync: float
    archive_size: int
    rss_growth: int
    others: float  # CPUs other processes used meanwhile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="where to write the data and archives (default: a temp dir, removed after)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--video-mib", type=int, default=512)
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--file-kib", type=int, default=128)
    parser.add_argument("--levels", default="1", help="comma-separated igzip levels (default 1)")
    parser.add_argument("--variants", default="current", help=f"comma-separated, of: {', '.join(KNOBS)}")
    parser.add_argument("--baseline", metavar="REV", help="also run the archive code as of this git revision")
    parser.add_argument("--datasets", default="video,text")
    parser.add_argument("--part-size-mib", type=int, default=16)
    parser.add_argument("--rss", action="store_true", help="sample RSS during each call")
    args = parser.parse_args()

    variants = []
    for level in (int(v) for v in args.levels.split(",")):
        if args.baseline:
            baseline = load_revision(args.baseline)
            variants.append(Variant(f"{args.baseline}", baseline, {}, (baseline,), level))
        for name in args.variants.split(","):
            variants.append(Variant(name, archive, KNOBS[name], (archive, deflate), level))

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="archive-speed-"))
    try:
        datasets = make_data(base, args.datasets.split(","), args.video_mib, args.files, args.file_kib)
        staging = base / "staging"
        staging.mkdir(exist_ok=True)
        results: dict[tuple[int, str], list[Sample]] = {}
        smallest = min(datasets.values(), key=lambda d: d[1])[0]
        for variant in variants:  # untimed: first-call costs (imports, fresh memory) as in a warm worker process
            measure(variant, smallest, staging / "out.tar.gz", args.part_size_mib * MiB, False)
        for run in range(args.runs):
            for index, variant in enumerate(variants):
                for dataset, (source, size) in datasets.items():
                    sample = measure(variant, source, staging / "out.tar.gz", args.part_size_mib * MiB, args.rss)
                    results.setdefault((index, dataset), []).append(sample)
                    print(
                        f"run {run + 1} {label(variant):24} {dataset:6} {size / MiB / sample.wall:7.0f} MiB/s"
                        f" {sample.cpu / size * GiB:6.2f} CPU-s/GiB  others {sample.others:.2f} CPUs",
                        file=sys.stderr,
                    )
        report(variants, datasets, results, args)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


def label(variant: Variant) -> str:
    return f"{variant.name} L{variant.level}"


def load_revision(rev: str) -> ModuleType:
    """The archive module as of a git revision, imported as a separate module: amgmt/local/archive.py (or, before
    the subpackages, amgmt/archive.py) when it is one file; a later revision imports its own deflate.py and
    archive_file.py from amgmt.local, so compare such revisions by checking them out instead."""
    for path in ("amgmt/local/archive.py", "amgmt/archive.py"):
        shown = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], capture_output=True, text=True)
        if shown.returncode == 0:
            break
    else:
        raise SystemExit(f"no archive module at {rev}")
    text = shown.stdout
    with tempfile.TemporaryDirectory(prefix="archive-rev-") as directory:
        path = Path(directory) / "archive_at_rev.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(f"archive_at_{rev}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return module


def make_data(base: Path, names: list[str], video_mib: int, files: int, file_kib: int) -> dict[str, tuple[str, int]]:
    """dataset name -> (source path, bytes of file data)."""
    datasets = {}
    if "video" in names:
        video = base / "video.mov"
        if not video.exists() or video.stat().st_size != video_mib * MiB:
            with open(video, "wb") as f:
                for _ in range(video_mib):
                    f.write(os.urandom(MiB))
        datasets["video"] = (str(video), video_mib * MiB)
    if "text" in names:
        root = base / "text"
        size = file_kib * 1024
        if not root.exists() or len(os.listdir(root)) != files:
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            corpus = log_text(max(8 * MiB, 2 * size))
            rng = random.Random(7)
            for i in range(files):
                start = rng.randrange(len(corpus) - size)
                (root / f"log-{i:04d}.txt").write_bytes(corpus[start : start + size])
        datasets["text"] = (str(root), files * size)
    return datasets


def log_text(size: int) -> bytes:
    """Deterministic log-like text (timestamps, levels, words from a Zipf-ish vocabulary): compresses ~4x."""
    rng = random.Random(1)
    letters = "etaoinshrdlucmfwypvbgkqjxz"
    vocab = ["".join(rng.choices(letters[: rng.randint(6, 26)], k=rng.randint(2, 10))) for _ in range(3000)]
    weights = [1 / (rank + 1) for rank in range(len(vocab))]
    levels = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"]
    lines = []
    total = 0
    second = 0
    while total < size:
        second += rng.randint(0, 3)
        words = " ".join(rng.choices(vocab, weights, k=rng.randint(4, 14)))
        day, hour, minute = 1 + second // 86400 % 28, second // 3600 % 24, second // 60 % 60
        line = f"2024-05-{day:02d} {hour:02d}:{minute:02d}:{second % 60:02d} {rng.choice(levels):5}"
        line += f" worker-{rng.randint(1, 8)} {words} id={rng.randint(0, 99999)}\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def measure(variant: Variant, source: str, target: Path, part_size: int, rss: bool) -> Sample:
    module = variant.module
    homes = {name: next(home for home in variant.homes if hasattr(home, name)) for name in variant.knobs}
    saved = {name: getattr(homes[name], name) for name in variant.knobs}
    fsync_time = 0.0
    real_fsync = os.fsync

    def timed_fsync(fd: int) -> None:
        nonlocal fsync_time
        start = time.perf_counter()
        real_fsync(fd)
        fsync_time += time.perf_counter() - start

    sampler = RssSampler() if rss else None
    try:
        for name, value in variant.knobs.items():
            setattr(homes[name], name, value)
        os.fsync = timed_fsync
        if sampler:
            sampler.start()
        busy_before = machine_busy()
        before, before_thread = cpu_times()
        start = time.perf_counter()
        result = module.compress_entry(source, str(target), part_size=part_size, level=variant.level)
        wall = time.perf_counter() - start
        after, after_thread = cpu_times()
        busy_after = machine_busy()
    finally:
        os.fsync = real_fsync
        for name, value in saved.items():
            setattr(homes[name], name, value)
        growth = sampler.stop() if sampler else 0
    os.unlink(target)
    others = max(0.0, (busy_after - busy_before - (after - before)) / wall)
    return Sample(wall, after - before, after_thread - before_thread, fsync_time, result.archive_size, growth, others)


def machine_busy() -> float:
    """CPU-seconds all processes have used since boot (/proc/stat: all but idle and iowait); 0 if unknown."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def cpu_times() -> tuple[float, float]:
    """(user+sys of the whole process, user+sys of the calling thread)."""
    process = resource.getrusage(resource.RUSAGE_SELF)
    thread = resource.getrusage(resource.RUSAGE_THREAD)
    return process.ru_utime + process.ru_stime, thread.ru_utime + thread.ru_stime


class RssSampler:
    def __init__(self) -> None:
        self._stop = threading.Event()
        self._peak = 0
        self._base = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def start(self) -> None:
        self._base = self._peak = self.rss()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self.rss())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self._peak, self.rss()) - self._base


def report(
    variants: list[Variant],
    datasets: dict[str, tuple[str, int]],
    results: dict[tuple[int, str], list[Sample]],
    args: argparse.Namespace,
) -> None:
    print(
        f"compress_entry, median of {args.runs}; {os.cpu_count()} CPUs, Python {sys.version.split()[0]},"
        f" part size {args.part_size_mib} MiB"
    )
    header = "| variant | data | MiB/s | quiet MiB/s (n) | CPU s/GiB | main s/GiB | fsync ms | ratio | others |"
    header += " RSS MiB |" if args.rss else ""
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for index, variant in enumerate(variants):
        for dataset, (_source, size) in datasets.items():
            samples = results[(index, dataset)]
            wall = statistics.median(s.wall for s in samples)
            cpu = statistics.median(s.cpu for s in samples)
            main_cpu = statistics.median(s.main_cpu for s in samples)
            fsync = statistics.median(s.fsync for s in samples)
            others = statistics.median(s.others for s in samples)
            quiet = [s.wall for s in samples if s.others < QUIET]
            quiet_speed = f"{size / MiB / statistics.median(quiet):.0f} ({len(quiet)})" if quiet else "- (0)"
            ratio = size / samples[0].archive_size
            row = (
                f"| {label(variant)} | {dataset} | {size / MiB / wall:.0f} | {quiet_speed} | {cpu / size * GiB:.2f}"
                f" | {main_cpu / size * GiB:.2f} | {fsync * 1000:.0f} | {ratio:.2f} | {others:.2f} |"
            )
            if args.rss:
                row += f" {max(s.rss_growth for s in samples) / MiB:.1f} |"
            print(row)


if __name__ == "__main__":
    main()
