"""`amgmt benchmark` end to end: the real binary, a tiny data set, the embedded server (or the test server), --json,
the origin's baseline (benchmarks/origin.py, the same command with boto3), --tune --save into a config file, and no
credentials written into os.environ."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from amgmt.bench import runner
from amgmt.bench.datasets import dataset_spec
from amgmt.bench.localserver import LocalS3Server
from amgmt.config import format_size, parse_config_file


ORIGIN = Path(__file__).resolve().parents[2] / "benchmarks" / "origin.py"


def _amgmt(*args: str, env: dict[str, str] | None = None, command: tuple[str, ...] = ("-m", "amgmt")
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *command, *args], env=env or dict(os.environ), text=True,
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)


def _check_run(run: dict[str, Any], *, entries: int, total: int) -> None:
    assert run["wall_seconds"] > 0
    assert run["entries"] == run["entries_ok"] == entries and run["failures"] == []
    assert run["source_bytes"] == total
    assert 0 < run["archive_bytes"] and run["compression_ratio"] > 0
    assert run["mib_per_second"] > 0 and run["entries_per_second"] > 0
    assert run["client_cpu_seconds"] >= 0 and run["client_peak_rss"] > 0
    assert abs(sum(run["stage_shares"].values()) - 1) < 0.01, run["stage_shares"]


def test_benchmark_runs_the_pipeline_and_the_baseline_on_the_embedded_server(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    work = tmp_path / "work"
    done = _amgmt("--scale", "0.005", "--concurrency", "1,2", "--json", str(out), "--workdir", str(work),
                  command=(str(ORIGIN),))  # `amgmt benchmark` with the origin's baseline
    assert done.returncode == 0, done.stderr
    spec = dataset_spec("media", 0.005)
    data = json.loads(out.read_text())

    assert data["dataset"]["total_bytes"] == spec.total_bytes and data["dataset"]["entries"] == 17
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["python"]
    assert all(data["machine"]["versions"][name] for name in ("amgmt", "aioboto3", "botocore", "isal"))
    assert data["target"]["embedded"] is True
    kinds = [(r["kind"], r["concurrency"]) for r in data["runs"]]
    assert kinds == [("baseline", 1), ("amgmt", 1), ("amgmt", 2)]
    for run in data["runs"]:
        _check_run(run, entries=spec.entries, total=spec.total_bytes)
        assert run["server_cpu_seconds"] > 0 and run["server_peak_rss"] > 0  # moto did the receiving
    baseline, amgmt1, _ = data["runs"]
    assert set(baseline["stage_seconds"]) == {"compress", "upload", "move", "cleanup"}
    assert {"validate", "compress", "upload", "verify", "move", "cleanup"} <= set(amgmt1["stage_seconds"])
    assert all(s["speedup_vs_baseline"] > 0 for s in data["summary"])

    assert "SPEED-UP" in done.stdout and "baseline" in done.stdout and "COMPRESS" in done.stdout
    assert "warm-up" in done.stderr  # progress lines go to stderr
    assert list(work.iterdir()) == []  # the work dir is removed


def test_tune_picks_a_grid_point_and_saves_it_without_clobbering_the_config(
    tmp_path: Path, s3_server: LocalS3Server, bucket: str, s3_client: Any
) -> None:
    config = tmp_path / "xdg" / "amgmt" / "config"
    config.parent.mkdir(parents=True)
    config.write_text("# mine\nMGMT_BUCKET=keep-me\nexport MGMT_PART_SIZE=5MiB\nMGMT_STORAGE_CLASS=STANDARD\n")
    out = tmp_path / "tune.json"
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    done = _amgmt("benchmark", "--tune", "--save", "--dataset", "small", "--scale", "0.002", "--part-size", "5,6",
                  "--concurrency", "1,2", "--endpoint-url", s3_server.endpoint_url, "--bucket", bucket,
                  "--server-pid", str(s3_server.pid), "--json", str(out), "--workdir", str(tmp_path), "-q",
                  env=env)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())

    grid = {(r["part_size"], r["concurrency"]) for r in data["runs"]}
    assert grid == {(5 * 1024 * 1024, 1), (5 * 1024 * 1024, 2), (6 * 1024 * 1024, 1), (6 * 1024 * 1024, 2)}
    assert all(r["kind"] == "amgmt" for r in data["runs"])  # no baseline when tuning
    for run in data["runs"]:
        _check_run(run, entries=4, total=dataset_spec("small", 0.002).total_bytes)
        assert run["server_cpu_seconds"] >= 0  # the given --server-pid is measured
    best = data["best"]
    assert (best["part_size"], best["concurrency"]) in grid

    text = config.read_text()
    assert text.startswith("# mine\nMGMT_BUCKET=keep-me\n")
    assert f"export MGMT_PART_SIZE={format_size(best['part_size'])}\n" in text
    assert parse_config_file(config) == {
        "MGMT_BUCKET": "keep-me",
        "MGMT_STORAGE_CLASS": "STANDARD",
        "MGMT_PART_SIZE": format_size(best["part_size"]),
        "MGMT_CONCURRENCY": str(best["concurrency"]),
        "MGMT_PARTS_IN_FLIGHT": str(best["parts_in_flight"]),
    }
    assert f"saved to {config}" in done.stdout and "best: MGMT_PART_SIZE=" in done.stdout
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0  # the benchmark's objects are gone


def test_save_needs_tune_and_endpoint_needs_bucket(tmp_path: Path) -> None:
    done = _amgmt("benchmark", "--save")
    assert done.returncode == 2 and "--save needs --tune" in done.stderr
    done = _amgmt("benchmark", "--endpoint-url", "http://127.0.0.1:1")
    assert done.returncode == 2 and "needs --bucket" in done.stderr


def test_the_baseline_is_not_part_of_amgmt_and_says_where_it_is() -> None:
    done = _amgmt("benchmark", "--baseline")
    assert done.returncode == 2 and "benchmarks/origin.py" in done.stderr and "boto3" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


async def test_credentials_are_passed_explicitly_not_through_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    # No credentials anywhere in the AWS chain: the runs work only if the embedded server's keys are passed.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    before = dict(os.environ)
    seen: list[dict[str, str]] = []
    real_upload_batch = runner.upload_batch

    async def spying_upload_batch(*args: Any, **kwargs: Any) -> Any:
        seen.append(dict(os.environ))
        return await real_upload_batch(*args, **kwargs)

    monkeypatch.setattr(runner, "upload_batch", spying_upload_batch)
    config = runner.BenchmarkConfig(dataset=dataset_spec("small", 0.002), concurrencies=(2,), workdir=tmp_path,
                                    environ={})
    report = await runner.run_benchmark(config)
    assert not report.failed and [r.kind for r in report.runs] == ["amgmt"]
    assert len(seen) == 2 and all(env == before for env in seen)  # the warm-up and the timed run
    assert dict(os.environ) == before
