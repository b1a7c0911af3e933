"""Real processes killed with SIGKILL mid-run, then a re-run: nothing lost, nothing twice, the upload resumed."""

from __future__ import annotations

import hashlib
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.models import OperationStatus
from amgmt.parts import MiB
from amgmt.store import MetadataStore


def _count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as conn:
            return int(conn.execute(sql).fetchone()[0])
    except sqlite3.Error:
        return 0


def _start_upload(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "amgmt", "upload", "all", "--no-progress", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _object_sha256(s3_client: Any, bucket: str, key: str) -> str:
    return hashlib.sha256(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


async def test_killed_multipart_upload_resumes_and_sends_only_the_missing_parts(
    make_settings, local_dir: Path, cli_env: dict[str, str], s3_client: Any, bucket: str
) -> None:
    data = random.Random(5).randbytes(200 * MiB)
    (local_dir / "film.mov").write_bytes(data)
    source_sha = hashlib.sha256(data).hexdigest()
    del data
    settings = make_settings(part_size="5MiB", parts_in_flight=2, concurrency=1)
    total_parts = 41  # 200 MiB + tar/gzip overhead in 5 MiB parts
    env = dict(cli_env, MGMT_PART_SIZE="5MiB", MGMT_PARTS_IN_FLIGHT="2", MGMT_CONCURRENCY="1")

    proc = _start_upload(env)
    deadline = time.monotonic() + 120
    while _count(settings.db_path, "SELECT count(*) FROM upload_parts") < total_parts // 2:
        assert proc.poll() is None, "the upload finished before it could be killed"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    journaled = _count(settings.db_path, "SELECT count(*) FROM upload_parts")
    assert journaled >= total_parts // 2
    # The crash left its trail: a pending record, an open multipart upload, a staging archive; the original stays.
    assert (local_dir / "film.mov").exists()
    assert len(s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
    assert any(settings.staging_dir.iterdir())

    report = await upload_batch(settings, list_entries(settings)[0])

    [record] = report.records
    assert record.status == OperationStatus.SUCCESS, record.error_message
    assert record.part_count == total_parts
    meta = record.metadata
    assert meta["parts_reused"] >= journaled
    assert meta["parts_sent"] + meta["parts_reused"] == total_parts
    assert meta["parts_sent"] <= total_parts - journaled  # the missing half, nothing more
    assert meta["resumed_upload_id"]
    assert record.checksum_original == source_sha
    assert _object_sha256(s3_client, bucket, record.s3_object_key) == record.checksum_compressed
    assert (settings.completed_dir / "film.mov").exists() and not (local_dir / "film.mov").exists()
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list(settings.staging_dir.iterdir()) == []
    async with MetadataStore(settings.db_path) as store:
        history = await store.list_operations(limit=None)
    assert sorted(r.status for r in history) == ["cancelled", "success"]
    [dead] = [r for r in history if r.status == "cancelled"]
    assert "killed or crashed" in (dead.error_message or "") and dead.error_message.startswith("upload")


@pytest.mark.parametrize("seed", [11, 12])
async def test_repeated_kills_at_random_moments_then_a_rerun_finish_everything_exactly_once(
    make_settings, local_dir: Path, cli_env: dict[str, str], s3_client: Any, bucket: str, seed: int
) -> None:
    rng = random.Random(seed)
    originals: dict[str, str] = {}
    for i in range(6):
        name = f"clip{i}.mp4"
        data = rng.randbytes(rng.choice([64 * 1024, 3 * MiB, 12 * MiB]))
        (local_dir / name).write_bytes(data)
        originals[name] = hashlib.sha256(data).hexdigest()
    folder = local_dir / "project"
    folder.mkdir()
    for i in range(30):
        (folder / f"t{i}.csv").write_text(f"{i}," * 2000)
    settings = make_settings(part_size="5MiB")
    env = dict(cli_env, MGMT_PART_SIZE="5MiB", MGMT_CONCURRENCY="3")

    kills = 0
    for _ in range(5):
        proc = _start_upload(env)
        time.sleep(rng.uniform(0.3, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        # Whatever moment it died at, no original is gone unless its object is in the bucket.
        keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])}
        for name in originals:
            if not (local_dir / name).exists():
                assert f"{name}.tar.gz" in keys, f"{name} moved without an object"
    assert kills >= 1

    report = await upload_batch(settings, list_entries(settings)[0])
    assert report.exit_code == 0, report.to_dict()["failures"]

    completed = settings.completed_dir
    for name, sha in originals.items():
        assert not (local_dir / name).exists()
        assert hashlib.sha256((completed / name).read_bytes()).hexdigest() == sha
        assert [p.name for p in completed.iterdir() if p.name.endswith(name)] == [name], "moved twice"
    assert (completed / "project").is_dir() and not folder.exists()
    objects = s3_client.list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in objects) == sorted([f"{n}.tar.gz" for n in originals] + ["project.tar.gz"])
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list(settings.staging_dir.iterdir()) == []
    async with MetadataStore(settings.db_path) as store:
        history = await store.list_operations(limit=None)
    assert not [r for r in history if r.status == OperationStatus.PENDING]
    done = [r for r in history if r.status == OperationStatus.SUCCESS]
    assert sorted(r.target_name for r in done) == sorted([*originals, "project"])
    for record in done:
        assert _object_sha256(s3_client, bucket, record.s3_object_key) == record.checksum_compressed
