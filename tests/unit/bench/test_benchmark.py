"""amgmt.bench without S3: data set specs, the CPU/RSS meter on real child processes, the report's medians and
best point, and writing tuned settings into a config file."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from amgmt.bench.datasets import DatasetSpec, dataset_spec, generate_dataset
from amgmt.bench.meter import ResourceMeter, ResourceUsage
from amgmt.bench.report import (
    BenchmarkReport,
    RunKind,
    RunResult,
    TargetInfo,
    save_tuned_settings,
    source_revision,
)
from amgmt.errors import ConfigError
from amgmt.models import utcnow
from amgmt.parts import GiB, MiB
from amgmt.config import parse_config_file

# A child that burns `pre` CPU seconds, says "ready", waits for a line, burns `during` seconds, says "done", and
# waits for stdin to close.
BURNER = """
import sys, time
def burn(seconds):
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
burn(float(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
burn(float(sys.argv[2]))
print("done", flush=True)
sys.stdin.readline()
"""


def _burner(pre: float, during: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", BURNER, str(pre), str(during)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def _go(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline() == "done\n"


def _finish(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(10)
    assert proc.stdout is not None
    proc.stdout.close()


# -- data sets -------------------------------------------------------------------------------------------------


def test_named_data_sets_match_the_issue_and_scale() -> None:
    media = dataset_spec("media")
    assert (media.videos, media.video_size, media.texts, media.text_size) == (16, 64 * MiB, 400, 128 * 1024)
    assert media.entries == 17
    assert dataset_spec("large").total_bytes == 2 * GiB
    assert dataset_spec("small").entries == 2000

    quarter = dataset_spec("media", 0.25)
    assert (quarter.video_size, quarter.text_size, quarter.entries) == (16 * MiB, 32 * 1024, 17)
    small = dataset_spec("small", 0.01)
    assert (small.photos, small.photo_size) == (20, 64 * 1024)  # counts scale, sizes do not

    with pytest.raises(ConfigError):
        dataset_spec("media", 0)
    with pytest.raises(ConfigError):
        dataset_spec("huge")


def test_generated_data_set_is_reproducible_and_as_large_as_its_spec(tmp_path: Path) -> None:
    spec = DatasetSpec("tiny", videos=2, video_size=10_000, texts=3, text_size=2_000, photos=2, photo_size=500)
    first = generate_dataset(spec, tmp_path / "a")
    second = generate_dataset(spec, tmp_path / "b")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 2 + 3 + 2
    assert sum((first / f).stat().st_size for f in files) == spec.total_bytes
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    assert len(list(first.iterdir())) == spec.entries


# -- the meter -------------------------------------------------------------------------------------------------


def test_meter_counts_a_long_lived_childs_cpu_during_the_block_only_and_keeps_the_server_apart() -> None:
    worker = _burner(pre=0.2, during=0.3)  # like anyio's workers: alive before and after the block
    server = _burner(pre=0.0, during=0.3)
    try:
        with ResourceMeter(server_pid=server.pid, interval=0.02) as meter:
            _go(worker, server)  # at once: two cores
    finally:
        _finish(worker)
        _finish(server)
    usage = meter.usage
    assert usage is not None
    # 0.3 s of the worker, not its 0.2 s before the block nor the server's 0.3 s; plus a little of ours.
    assert 0.27 <= usage.client_cpu_seconds <= 0.5
    assert 0.27 <= usage.client_children_cpu_seconds <= 0.35
    assert usage.server_cpu_seconds is not None and 0.27 <= usage.server_cpu_seconds <= 0.4
    assert usage.client_peak_rss >= usage.client_start_rss > 0
    assert usage.server_peak_rss and usage.server_peak_rss > 0
    assert usage.samples >= 3


def test_meter_counts_children_reaped_during_the_block() -> None:
    with ResourceMeter(server_pid=None) as meter:
        proc = _burner(pre=0.25, during=0.0)
        _go(proc)
        _finish(proc)
    assert meter.usage is not None
    assert meter.usage.client_cpu_seconds >= 0.25
    assert meter.usage.server_cpu_seconds is None


# -- the report ------------------------------------------------------------------------------------------------


def _run(kind: str, wall: float, *, concurrency: int = 1, part_size: int = 8 * MiB, repeat: int = 1) -> RunResult:
    usage = ResourceUsage(
        client_user_seconds=1.0,
        client_sys_seconds=0.5,
        client_children_cpu_seconds=0.5,
        client_peak_rss=100 * MiB,
        client_start_rss=90 * MiB,
        server_cpu_seconds=0.5,
        server_peak_rss=50 * MiB,
        meter_cpu_seconds=0.01,
        samples=10,
    )
    return RunResult(
        label=str(kind),
        kind=kind,
        repeat=repeat,
        concurrency=concurrency,
        part_size=part_size,
        parts_in_flight=16,
        wall_seconds=wall,
        entries=2,
        entries_ok=2,
        source_bytes=100 * MiB,
        archive_bytes=50 * MiB,
        usage=usage,
        stage_seconds={"compress": 1.0, "upload": 3.0},
        entry_seconds=5.0,
    )


def test_report_medians_speedups_and_best_point() -> None:
    runs = (
        _run(RunKind.BASELINE, 10.0),
        _run(RunKind.BASELINE, 12.0, repeat=2),
        _run(RunKind.AMGMT, 5.0),
        _run(RunKind.AMGMT, 4.0, repeat=2),
        _run(RunKind.AMGMT, 9.0, repeat=3),
        _run(RunKind.AMGMT, 2.0, concurrency=4, part_size=16 * MiB),
    )
    report = BenchmarkReport(
        started_at=utcnow(),
        machine={},
        dataset=dataset_spec("media", 0.01),
        target=TargetInfo("b", None, True, None),
        settings={},
        runs=runs,
        repeat=3,
    )
    base, amgmt1, amgmt4 = report.summaries()
    assert base.median.wall_seconds == 10.0  # lower middle of two
    assert amgmt1.median.wall_seconds == 5.0 and amgmt1.speedup == pytest.approx(2.0)
    assert amgmt4.speedup == pytest.approx(5.0)
    assert report.best() == amgmt4
    assert report.tuned_settings() == {"MGMT_PART_SIZE": "16MiB", "MGMT_CONCURRENCY": "4", "MGMT_PARTS_IN_FLIGHT": "16"}
    run = amgmt4.median
    assert run.mib_per_second == pytest.approx(50.0) and run.compression_ratio == pytest.approx(2.0)
    assert run.stage_breakdown() == {"compress": 1.0, "upload": 3.0, "other": 1.0}
    assert sum(run.stage_shares().values()) == pytest.approx(1.0)
    data = report.to_dict()
    assert data["best"]["concurrency"] == 4 and len(data["runs"]) == 6


def test_the_report_names_the_commit_of_the_checkout_it_measures() -> None:
    if not (Path(__file__).resolve().parents[3] / ".git").exists():
        pytest.skip("not a git checkout")
    revision = source_revision()
    assert revision is not None and len(revision["commit"]) == 40


# -- saving tuned settings -------------------------------------------------------------------------------------

TUNED = {"MGMT_PART_SIZE": "16MiB", "MGMT_CONCURRENCY": "8", "MGMT_PARTS_IN_FLIGHT": "32"}


def test_save_replaces_keys_in_place_and_keeps_every_other_line(tmp_path: Path) -> None:
    config = tmp_path / "xdg" / "amgmt" / "config"
    config.parent.mkdir(parents=True)
    config.write_text(
        "# my settings\nMGMT_BUCKET=media-archive\n\nexport MGMT_CONCURRENCY = 2  # old\nAWS_PROFILE=work\n"
    )
    config.chmod(0o640)
    saved = save_tuned_settings(TUNED, environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": "/nowhere"})
    assert saved.path == config and saved.seeded_from is None
    lines = config.read_text().splitlines()
    assert lines[:5] == [
        "# my settings",
        "MGMT_BUCKET=media-archive",
        "",
        "export MGMT_CONCURRENCY=8",
        "AWS_PROFILE=work",
    ]
    assert lines[-2:] == ["MGMT_PART_SIZE=16MiB", "MGMT_PARTS_IN_FLIGHT=32"]
    assert parse_config_file(config) == {"MGMT_BUCKET": "media-archive", **TUNED}
    assert config.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in config.parent.iterdir()] == ["config"]  # no temp file left


def test_save_creates_the_file_under_home_and_starts_from_the_origins_config(tmp_path: Path) -> None:
    origin = tmp_path / ".config" / "mgmt" / "config"
    origin.parent.mkdir(parents=True)
    origin.write_text("MGMT_BUCKET=from-origin\nMGMT_PART_SIZE=8MiB\n")
    saved = save_tuned_settings(TUNED, environ={"HOME": str(tmp_path)})
    assert saved.path == tmp_path / ".config" / "amgmt" / "config"
    assert saved.seeded_from == origin
    assert parse_config_file(saved.path) == {"MGMT_BUCKET": "from-origin", **TUNED}
    assert origin.read_text() == "MGMT_BUCKET=from-origin\nMGMT_PART_SIZE=8MiB\n"  # the origin's file untouched
    assert saved.path.stat().st_mode & 0o777 == 0o600


def test_save_leaves_a_malformed_config_file_alone(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("not a setting line\n")
    with pytest.raises(ConfigError):
        save_tuned_settings(TUNED, environ={}, config_path=config)
    assert config.read_text() == "not a setting line\n"


def test_save_without_home_or_xdg_asks_for_a_path() -> None:
    with pytest.raises(ConfigError, match="--config"):
        save_tuned_settings(TUNED, environ={"XDG_CONFIG_HOME": "relative/ignored"})


# -- the package without boto3 ---------------------------------------------------------------------------------

# Imports every module of the package and prints one line per failure. "refused": boto3 is installed (aioboto3 needs
# it) but amgmt's own modules may not import it; "absent": boto3 is not importable at all.
IMPORT_ALL = r"""
import builtins, importlib, pkgutil, sys, traceback
if sys.argv[1] == "absent":
    sys.modules["boto3"] = None
else:
    real_import = builtins.__import__
    def guarded(name, globals=None, locals=None, fromlist=(), level=0):
        importer = (globals or {}).get("__name__") or ""
        if level == 0 and name.split(".")[0] == "boto3" and importer.split(".")[0] == "amgmt":
            raise ImportError(f"{importer} imports {name}")
        return real_import(name, globals, locals, fromlist, level)
    builtins.__import__ = guarded
import amgmt
for info in pkgutil.walk_packages(amgmt.__path__, "amgmt."):
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        frames = [f.filename for f in traceback.extract_tb(exc.__traceback__)]
        print(info.name, f"{type(exc).__name__}: {exc}", frames[-1], sep="\t")
"""


def _import_failures(mode: str) -> list[list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, mode], capture_output=True, text=True, timeout=120, check=True
    )
    return [line.split("\t") for line in done.stdout.splitlines()]


def test_no_module_of_the_package_imports_boto3() -> None:
    package = Path(__file__).resolve().parents[3] / "amgmt"
    for path in package.rglob("*.py"):  # at any depth: a lazy import inside a function counts too
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            assert not any(n.split(".")[0] == "boto3" for n in names), f"{path}:{node.lineno} imports boto3"
    assert _import_failures("refused") == []


def test_every_module_imports_without_boto3_but_through_aioboto3() -> None:
    failures = _import_failures("absent")
    # aioboto3 (the S3 layer's library) imports boto3 itself; every other module must import without it.
    assert [f for f in failures if "/aioboto3/" not in f[2]] == []
    failed = {f[0] for f in failures}
    assert not failed & {
        "amgmt.bench",
        "amgmt.bench.datasets",
        "amgmt.bench.meter",
        "amgmt.bench.report",
        "amgmt.bench.localserver",
    }


def test_benchmark_runs_never_record_into_the_users_catalog(tmp_path: Path) -> None:
    # A user's MGMT_DB_URL (issue 14) must not receive benchmark records: each run has its own SQLite file.
    from amgmt.bench.datasets import dataset_spec
    from amgmt.bench.runner import BenchmarkConfig, BenchmarkSession

    environ = {"MGMT_DB_URL": "postgresql://amgmt:secret@127.0.0.1:5432/catalog", "HOME": str(tmp_path)}
    session = BenchmarkSession(BenchmarkConfig(dataset_spec("small", 0.01), environ=environ))
    settings = session.run_settings(tmp_path / "run", concurrency=1)
    assert settings.db_url is None
    assert settings.db_path == tmp_path / "run" / "local" / "completed" / ".metadata" / "operations.db"


def test_the_cpu_breakdown_adds_up_to_the_clients_cpu_and_is_reported_per_gib() -> None:
    from amgmt import cpu
    from amgmt.bench.report import EVENT_LOOP, MAIN_REST, PACK_REST, cpu_breakdown

    usage = ResourceUsage(
        client_user_seconds=7.0,
        client_sys_seconds=1.0,
        client_children_cpu_seconds=5.0,
        client_peak_rss=1,
        client_start_rss=1,
        server_cpu_seconds=None,
        server_peak_rss=None,
        meter_cpu_seconds=0.0,
        samples=1,
    )
    steps = {
        cpu.SHA256_SOURCE: 1.0,
        cpu.MD5: 2.0,
        cpu.READ_PARTS: 0.5,
        cpu.PACKED_IN_THREADS: 0.25,
        cpu.DEFLATE: 0.25,
    }  # the in-thread pack's 0.25 s is one of those steps, run in the main process
    rows = cpu_breakdown(usage, steps, loop_seconds=1.5)

    assert rows[PACK_REST] == pytest.approx(5.0 - (3.25 - 0.25))  # the workers' CPU beyond their measured steps
    assert rows[EVENT_LOOP] == 1.5 and rows[cpu.READ_PARTS] == 0.5
    assert rows[MAIN_REST] == pytest.approx(3.0 - 1.5 - 0.5 - 0.25)
    assert sum(rows.values()) == pytest.approx(usage.client_cpu_seconds)
    run = RunResult(
        label="amgmt",
        kind=RunKind.AMGMT,
        repeat=1,
        concurrency=8,
        part_size=None,
        parts_in_flight=None,
        wall_seconds=1.0,
        entries=1,
        entries_ok=1,
        source_bytes=2 * GiB,
        archive_bytes=GiB,
        usage=usage,
        cpu_steps=rows,
    )
    assert run.cpu_per_gib()[cpu.MD5] == 1.0
    assert run.to_dict()["cpu_seconds_per_gib_by_step"][EVENT_LOOP] == 0.75


def test_a_step_clock_charges_the_threads_cpu_time() -> None:
    import hashlib
    import threading

    from amgmt import cpu

    clock = cpu.StepClock()

    def work() -> None:
        started = cpu.now()
        hashlib.sha256(b"x" * (8 * MiB)).digest()
        clock.add(cpu.SHA256_SOURCE, started)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = clock.snapshot()
    assert first[cpu.SHA256_SOURCE] > 0
    clock.merge({cpu.SHA256_SOURCE: 1.0, cpu.MD5: 2.0})
    assert cpu.since(first, clock.snapshot()) == {cpu.SHA256_SOURCE: pytest.approx(1.0), cpu.MD5: 2.0}


def test_the_client_cpu_per_entry_is_reported() -> None:
    """`amgmt benchmark --dataset small`'s figure (issue 12): client CPU (user + sys, workers included) per entry
    done, in the table and the JSON."""
    import dataclasses

    from amgmt.cli.benchmark_cmd import render_table

    run = _run(RunKind.AMGMT, 2.0)  # 1.5 CPU-s for 2 entries
    assert run.cpu_ms_per_entry == 750.0
    assert run.to_dict()["cpu_ms_per_entry"] == 750.0
    assert dataclasses.replace(run, entries_ok=0).cpu_ms_per_entry is None
    report = BenchmarkReport(
        started_at=utcnow(),
        machine={},
        dataset=dataset_spec("small", 0.01),
        target=TargetInfo("b", None, True, None),
        settings={"compression_level": 6},
        runs=(run,),
        repeat=1,
    )
    header, *rows = render_table(report).splitlines()
    assert "CPU ms/ENTRY" in header and any("750.00" in row for row in rows)
