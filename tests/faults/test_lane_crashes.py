"""The small-entry lane killed with SIGKILL at exact points of a batch (tests/faults/killpoint.py), then a re-run:
every entry ends verified, moved and recorded exactly once, or is left in place and uploaded by the re-run; nothing
is lost, nothing moved unverified, no record left pending.

The batch's stage saves are one transaction each: a kill inside one (its rows written, no COMMIT) must leave the
records at the stage before (for the move save: nothing moved, all verified in S3 and in place); a kill between two
moves of a batch leaves some originals moved and the rest in place, all recorded at stage `move`."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

KILLPOINT = Path(__file__).parent / "killpoint.py"
ENTRIES = 24


def _cli(env: dict[str, str], *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(KILLPOINT)] if kill_at else [sys.executable, "-m", "amgmt"]
    return subprocess.run([*command, *args], env={**env, "AMGMT_KILL_AT": kill_at or ""}, capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(sql).fetchall()


def _photos(local_dir: Path) -> dict[str, bytes]:
    rng = random.Random(12)
    photos = {f"IMG_{i:04d}.jpg": rng.randbytes(rng.choice([3000, 20_000, 70_000])) for i in range(ENTRIES)}
    for name, data in photos.items():
        (local_dir / name).write_bytes(data)
    return photos


def _env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    # One lane (concurrency 1 allows one batch in flight): all the entries form one batch of the lane.
    return {**cli_env, "XDG_STATE_HOME": str(tmp_path / "state"), "MGMT_CONCURRENCY": "1",
            "MGMT_SMALL_ENTRY_SIZE": "1MiB"}


def _assert_repaired(local_dir: Path, photos: dict[str, bytes], db: Path, s3_client: Any, bucket: str) -> None:
    """After the re-run: each photo in completed/ with its bytes, none left behind; each name has exactly one
    success whose object is the archive it recorded; no record pending; no staging archive left."""
    completed = local_dir / "completed"
    for name, data in photos.items():
        assert not (local_dir / name).exists(), name
        assert (completed / name).read_bytes() == data, name
    assert sorted(p.name for p in completed.iterdir() if not p.name.startswith(".")) == sorted(photos)
    rows = _rows(db, "SELECT target_name, status, s3_object_key, checksum_compressed, checksum_original,"
                     " completed_dir_path FROM operations")
    assert not [r for r in rows if r[1] == "pending"]
    successes = [r for r in rows if r[1] == "success"]
    assert sorted(r[0] for r in successes) == sorted(photos)  # exactly one success per entry
    for name, _, key, archive_sha, source_sha, moved_to in successes:
        assert source_sha == hashlib.sha256(photos[name]).hexdigest()
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == archive_sha, name
        assert moved_to == str(completed / name)
    assert list((completed / ".metadata" / "staging").iterdir()) == []


@pytest.mark.parametrize(
    ("kill_at", "stage_left"),
    [
        # inside the batch's move-stage transaction: its rows written, not committed
        ("amgmt.store.sqlite.write_rows|'move'|1|after", "verify"),
        # inside the batch's last transaction (after every move): the records still say `move`
        ("amgmt.store.sqlite.write_rows|'done'|1|after", "move"),
    ],
    ids=["in-the-move-save", "in-the-final-save"],
)
def test_a_kill_while_a_batch_is_half_saved_is_repaired_by_the_next_run(
    cli_env: dict[str, str], local_dir: Path, tmp_path: Path, s3_client: Any, bucket: str, kill_at: str,
    stage_left: str,
) -> None:
    photos = _photos(local_dir)
    env = _env(cli_env, tmp_path)
    db = local_dir / "completed" / ".metadata" / "operations.db"

    killed = _cli(env, "upload", "all", "--no-progress", kill_at=kill_at)

    assert killed.returncode == -signal.SIGKILL, killed
    rows = _rows(db, "SELECT status, stage, verification_method, s3_object_key FROM operations")
    # The transaction the kill landed in is not there at all: every record is pending at the stage before it
    # (`verify`: saved on entering it; `move`: saved verified), none half-written; every object is in S3.
    assert len(rows) == ENTRIES
    assert all(status == "pending" and stage == stage_left for status, stage, _, _ in rows), rows
    assert all(bool(method) == (stage_left == "move") for _, _, method, _ in rows), rows
    for *_, key in rows:
        s3_client.head_object(Bucket=bucket, Key=key)
    in_place = [name for name in photos if (local_dir / name).exists()]
    if stage_left == "verify":  # the move's save never committed: nothing may have moved
        assert sorted(in_place) == sorted(photos)
    else:  # every move happened before the last save
        assert in_place == []

    rerun = _cli(env, "upload", "all", "--no-progress", "--json")

    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["recovered"]["interrupted_operations"], report["recovered"]
    _assert_repaired(local_dir, photos, db, s3_client, bucket)
    if stage_left == "move":  # recovery proved and finished every move: nothing was uploaded again
        assert report["entries"] == 0
        assert _rows(db, "SELECT count(*) FROM operations") == [(ENTRIES,)]


def test_a_kill_while_a_batch_is_half_moved_is_repaired_by_the_next_run(
    cli_env: dict[str, str], local_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    photos = _photos(local_dir)
    env = _env(cli_env, tmp_path)
    db = local_dir / "completed" / ".metadata" / "operations.db"

    # After the 7th original of the batch was moved (the batch's moves run one after another in one thread).
    killed = _cli(env, "upload", "all", "--no-progress",
                  kill_at="amgmt.local.completed.move_to_completed|/media/|7|after")

    assert killed.returncode == -signal.SIGKILL, killed
    moved = sorted(p.name for p in (local_dir / "completed").iterdir() if not p.name.startswith("."))
    assert len(moved) == 7
    rows = _rows(db, "SELECT status, stage, verification_method FROM operations")
    assert len(rows) == ENTRIES and all(r[:2] == ("pending", "move") and r[2] for r in rows), rows

    rerun = _cli(env, "upload", "all", "--no-progress", "--json")

    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    # Recovery proved the 7 moves (success); the 17 left in place were recorded cancelled and uploaded again.
    assert sorted(report["recovered"]["finished_moves"]) == sorted(str(local_dir / n) for n in moved)
    assert report["entries"] == ENTRIES - 7 and report["counts"] == {"success": ENTRIES - 7}
    _assert_repaired(local_dir, photos, db, s3_client, bucket)
    recovered = _rows(db, "SELECT count(*) FROM operations WHERE status = 'success' AND metadata LIKE '%recovered%'")
    assert recovered == [(7,)]
