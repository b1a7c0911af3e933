"""`amgmt retry` after a run was killed: the killed run's records are still `pending` (nothing has run on the local
dir since), and retry must take them as interrupted, resuming the multipart upload; `amgmt cleanup` keeps the
uploads a retry can still resume, says so, and its dry run reports exactly what it then does."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from amgmt.parts import MiB

KILLPOINT = Path(__file__).parent / "killpoint.py"


def _cli(env: dict[str, str], *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(KILLPOINT)] if kill_at else [sys.executable, "-m", "amgmt"]
    return subprocess.run([*command, *args], env={**env, "AMGMT_KILL_AT": kill_at or ""}, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as conn:
        return conn.execute(sql).fetchall()


def _count(db: Path, sql: str) -> int:
    try:
        return int(_rows(db, sql)[0][0]) if db.exists() else 0
    except sqlite3.Error:
        return 0


def _env(cli_env: dict[str, str], tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**cli_env, "XDG_STATE_HOME": str(tmp_path / "state"), "MGMT_CONCURRENCY": "1", **extra}


def test_retry_by_id_finishes_an_entry_whose_run_was_killed_before_the_move(
    cli_env: dict[str, str], local_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    (local_dir / "a.mp4").write_bytes(random.Random(1).randbytes(3000))
    env = _env(cli_env, tmp_path)
    db = local_dir / "completed" / ".metadata" / "operations.db"

    killed = _cli(env, "upload", "all", "--no-progress", kill_at="os.link|/media/|1|before")
    assert killed.returncode == -signal.SIGKILL, killed
    [(op_id, status)] = _rows(db, "SELECT operation_id, status FROM operations")
    assert status == "pending" and (local_dir / "a.mp4").exists()

    retried = _cli(env, "retry", op_id[:8], "--json")

    assert retried.returncode == 0, retried
    report = json.loads(retried.stdout)
    assert report["counts"] == {"success": 1} and report["ignored"] == []
    assert (local_dir / "completed" / "a.mp4").exists() and not (local_dir / "a.mp4").exists()
    statuses = dict(_rows(db, "SELECT operation_id, status FROM operations"))
    assert statuses[op_id] == "cancelled" and sorted(statuses.values()) == ["cancelled", "success"]


def test_retry_failed_resumes_the_multipart_upload_of_a_killed_run(
    cli_env: dict[str, str], local_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    data = random.Random(2).randbytes(60 * MiB)
    (local_dir / "film.mov").write_bytes(data)
    env = _env(cli_env, tmp_path, MGMT_PART_SIZE="5MiB", MGMT_PARTS_IN_FLIGHT="1")
    db = local_dir / "completed" / ".metadata" / "operations.db"
    proc = subprocess.Popen([sys.executable, "-m", "amgmt", "upload", "all", "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _count(db, "SELECT count(*) FROM upload_parts") < 2:
        assert proc.poll() is None, "the upload finished before it could be killed"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    journaled = _count(db, "SELECT count(*) FROM upload_parts")
    assert _rows(db, "SELECT status FROM operations") == [("pending",)]

    retried = _cli(env, "retry", "--failed", "--json")

    assert retried.returncode == 0, retried
    report = json.loads(retried.stdout)
    [record] = report["operations"]
    assert record["status"] == "success" and record["metadata"]["parts_reused"] >= 2, record
    assert record["metadata"]["parts_sent"] + record["metadata"]["parts_reused"] == record["part_count"]
    assert record["metadata"]["parts_reused"] <= journaled
    assert (local_dir / "completed" / "film.mov").read_bytes() == data
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_cleanup_keeps_a_resumable_upload_says_so_and_its_dry_run_reports_what_it_does(
    cli_env: dict[str, str], local_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    (local_dir / "film.mov").write_bytes(random.Random(3).randbytes(40 * MiB))
    env = _env(cli_env, tmp_path, MGMT_PART_SIZE="5MiB", MGMT_PARTS_IN_FLIGHT="1")
    db = local_dir / "completed" / ".metadata" / "operations.db"
    proc = subprocess.Popen([sys.executable, "-m", "amgmt", "upload", "all", "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _count(db, "SELECT count(*) FROM upload_parts") < 1:
        assert proc.poll() is None, "the upload finished before it could be killed"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    staging = local_dir / "completed" / ".metadata" / "staging"
    [archive] = list(staging.iterdir())  # the killed run's archive (or its .partial), tens of MiB
    [upload] = s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"]

    def lists(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
        assert run.returncode == 0, run
        found = json.loads(run.stdout)
        return {k: found[k] for k in ("interrupted_operations", "staging_files", "multipart_uploads",
                                      "kept_multipart_uploads", "staging_bytes")}

    preview = lists(_cli(env, "cleanup", "--dry-run", "--json"))
    assert archive.exists()
    done = lists(_cli(env, "cleanup", "--json"))

    assert preview == done
    assert [f["path"] for f in done["staging_files"]] == [str(archive)] and done["staging_bytes"] > 0
    assert len(done["interrupted_operations"]) == 1 and done["multipart_uploads"] == []
    [kept] = done["kept_multipart_uploads"]
    assert kept["upload_id"] == upload["UploadId"] and kept["reason"].startswith("resumable")
    assert not archive.exists()
    assert [u["UploadId"] for u in s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [upload["UploadId"]]

    text = _cli(env, "cleanup")
    assert text.returncode == 0 and "kept 1 multipart upload" in text.stdout and "resumable" in text.stdout, text
    assert "--include-resumable" in text.stdout

    everything = _cli(env, "cleanup", "--include-resumable")
    assert everything.returncode == 0 and "aborted 1 multipart upload" in everything.stdout, everything
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
