"""`amgmt watch` as a real process against the real (moto) server: entries written slowly, held open, dropped in a
burst or growing as directories are taken once, after they settle; a stop finishes what is in flight; a kill -9
and a restart lose nothing and upload nothing twice."""

from __future__ import annotations

import hashlib
import io
import json
import random
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from amgmt.parts import MiB
from watchkit import WatchProcess, query, wait_for

SLOW_WRITER = """
import sys, time
path, count, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
for i in range(count):
    with open(path, 'ab') as f:
        f.write(b'%06d frame of a slow recording\\n' % i)
    if i < count - 1:
        time.sleep(gap)
print(time.time(), flush=True)
"""

GROWING_DIR = """
import os, sys, time
root, count, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
os.makedirs(root, exist_ok=True)
for i in range(count):
    sub = os.path.join(root, 'sub') if i >= count // 2 else root
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f'take{i:02d}.txt'), 'w') as f:
        f.write(f'take {i}\\n' * 100)
    if i < count - 1:
        time.sleep(gap)
print(time.time(), flush=True)
"""

HOLD_OPEN = ("import sys; f = open(sys.argv[1], 'ab'); f.write(b'x' * 1000); f.flush(); print('open', flush=True);"
             " sys.stdin.read()")


@pytest.fixture
def watch_env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return dict(cli_env, XDG_CONFIG_HOME=str(tmp_path / "xdg"), XDG_STATE_HOME=str(tmp_path / "state"))


@pytest.fixture
def start_watch(watch_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    started: list[WatchProcess] = []

    def start(*args: str, kill_at: str | None = None, env: dict[str, str] | None = None) -> WatchProcess:
        watch = WatchProcess({**watch_env, **(env or {})}, tmp_path / "out", *args, kill_at=kill_at)
        started.append(watch)
        watch.wait_started()
        return watch

    yield start
    for watch in started:
        watch.kill()


def run_amgmt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "amgmt", *args], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def operations(db: Path, name: str) -> list[dict[str, Any]]:
    rows = query(db, "SELECT status, started_at, metadata FROM operations WHERE target_name = ? ORDER BY started_at",
                 name)
    return [{"status": s, "started_at": datetime.fromisoformat(t), "metadata": json.loads(m or "{}")}
            for s, t, m in rows]


def archive_members(s3_client: Any, bucket: str, key: str) -> dict[str, bytes]:
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def keys(s3_client: Any, bucket: str) -> list[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_a_file_written_slowly_is_uploaded_once_after_the_writer_stops(
    start_watch, make_settings, local_dir: Path, s3_client: Any, bucket: str
) -> None:  # type: ignore[no-untyped-def]
    db = make_settings().db_path
    watch = start_watch("--settle", "2")
    recording = local_dir / "slow.log"
    # The writer: a write every 0.5 s for 10 s, never 2 s without a change, so never settled while it runs.
    writer = subprocess.run([sys.executable, "-c", SLOW_WRITER, str(recording), "21", "0.5"],
                            capture_output=True, text=True, timeout=60, check=True)
    written_until = float(writer.stdout.strip())
    final = recording.read_bytes()

    wait_for(lambda: [o for o in operations(db, "slow.log") if o["status"] == "success"], what="the upload")

    [operation] = operations(db, "slow.log")  # one operation: no attempt before it settled
    assert operation["started_at"].timestamp() >= written_until + 2.0 - 0.05, (operation, written_until)
    assert archive_members(s3_client, bucket, "slow.log.tar.gz") == {"slow.log": final}
    assert (local_dir / "completed" / "slow.log").read_bytes() == final and not recording.exists()
    assert keys(s3_client, bucket) == ["slow.log.tar.gz"]
    assert watch.stop() == 0, str(watch)
    assert [line for line in watch.lines() if " slow.log" in line and "success" in line], str(watch)


def test_a_file_held_open_for_writing_is_not_taken_until_it_is_closed_and_status_says_why(
    start_watch, make_settings, local_dir: Path, watch_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    db = make_settings().db_path
    held = local_dir / "recording.mov"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(held)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        watch = start_watch("--settle", "0.5")
        status = wait_for(lambda: (r := run_amgmt(watch_env, "watch", "--status")).returncode == 0
                          and f"held open by pid {holder.pid}" in r.stdout and r, what="status to name the holder")
        assert "recording.mov" in status.stdout and "watching" in status.stdout, status.stdout
        time.sleep(2.0)  # four times --settle, unchanged all along: only the open handle keeps it back
        assert operations(db, "recording.mov") == [] and held.exists()
        as_json = json.loads(run_amgmt(watch_env, "watch", "--status", "--json").stdout)
        assert as_json["running"] is True and as_json["pid"] == watch.pid
        assert as_json["waiting"][0]["target_name"] == "recording.mov"
        assert f"pid {holder.pid}" in as_json["waiting"][0]["held_by"]
        assert run_amgmt(watch_env, "watch", "--once").returncode == 5  # one watch (one run) per local dir
        assert run_amgmt(watch_env, "upload", "all").returncode == 5
    finally:
        holder.communicate("", timeout=10)
    closed_at = time.time()
    wait_for(lambda: [o for o in operations(db, "recording.mov") if o["status"] == "success"], what="the upload")
    [operation] = operations(db, "recording.mov")
    assert operation["started_at"].timestamp() >= closed_at - 0.05
    assert watch.stop() == 0, str(watch)
    stopped = run_amgmt(watch_env, "watch", "--status", "--json")
    assert stopped.returncode == 1
    state = json.loads(stopped.stdout)
    assert (state["running"], state["state"], state["counts"]) == (False, "stopped", {"success": 1})


def test_a_directory_that_keeps_receiving_files_is_taken_once_it_settles_with_every_file(
    start_watch, make_settings, local_dir: Path, s3_client: Any, bucket: str
) -> None:  # type: ignore[no-untyped-def]
    db = make_settings().db_path
    watch = start_watch("--settle", "1")
    writer = subprocess.run([sys.executable, "-c", GROWING_DIR, str(local_dir / "shoot"), "10", "0.3"],
                            capture_output=True, text=True, timeout=30, check=True)
    written_until = float(writer.stdout.strip())
    expected = {str(p.relative_to(local_dir)): p.read_bytes() for p in (local_dir / "shoot").rglob("*") if p.is_file()}
    assert len(expected) == 10

    wait_for(lambda: [o for o in operations(db, "shoot") if o["status"] == "success"], what="the upload")

    [operation] = operations(db, "shoot")
    assert operation["started_at"].timestamp() >= written_until + 1.0 - 0.05
    assert archive_members(s3_client, bucket, "shoot.tar.gz") == expected
    assert watch.stop() == 0, str(watch)


def test_a_burst_of_files_is_uploaded_each_exactly_once_with_bounded_memory(
    start_watch, make_settings, local_dir: Path, s3_client: Any, bucket: str
) -> None:  # type: ignore[no-untyped-def]
    db = make_settings().db_path
    watch = start_watch("--settle", "0.5", "--concurrency", "8")
    rng = random.Random(7)
    names = [f"card{i:03d}.jpg" for i in range(500)]  # the burst: 500 small files and one large one
    for name in names:
        (local_dir / name).write_bytes(rng.randbytes(2048))
    (local_dir / "clip.mov").write_bytes(rng.randbytes(12 * MiB))  # a multipart upload among them
    names.append("clip.mov")

    wait_for(lambda: sorted(p.name for p in local_dir.iterdir()) == ["completed"], timeout=240,
             what="every entry to be moved")
    peak_rss_kib = int(next(line.split()[1] for line in Path(f"/proc/{watch.pid}/status").read_text().splitlines()
                            if line.startswith("VmHWM:")))
    assert watch.stop() == 0, str(watch)

    rows = query(db, "SELECT target_name, status FROM operations")
    assert sorted(rows) == sorted((name, "success") for name in names)  # each once, nothing failed or twice
    assert keys(s3_client, bucket) == sorted(f"{name}.tar.gz" for name in names)
    assert sorted(p.name for p in (local_dir / "completed").iterdir() if not p.name.startswith(".")) == sorted(names)
    # The parts budget is 64 MiB; the process with its libraries takes about 100 MiB more. 500 waiting entries
    # cost a few KiB each, never their contents.
    assert peak_rss_kib < 400 * 1024, peak_rss_kib


def test_sigterm_finishes_the_entry_in_flight_takes_no_other_and_exits_0(
    start_watch, make_settings, local_dir: Path, s3_client: Any, bucket: str, watch_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    db = make_settings().db_path
    rng = random.Random(3)
    for name in ("a.bin", "b.bin"):
        (local_dir / name).write_bytes(rng.randbytes(3 * MiB))
    # SIGTERM at the exact moment the first entry looks at its key (stage upload): it is in flight.
    watch = start_watch("--settle", "0.3", "--concurrency", "1",
                        kill_at="amgmt.s3.client.S3Bucket.head_object|.tar.gz|1|before|SIGTERM")
    assert watch.wait() == 0, str(watch)

    done = query(db, "SELECT target_name, status FROM operations")
    assert len(done) == 1 and done[0][1] == "success", done  # finished, not cancelled
    [finished_name] = [done[0][0]]
    [other] = [n for n in ("a.bin", "b.bin") if n != finished_name]
    assert (local_dir / "completed" / finished_name).exists() and (local_dir / other).exists()
    assert keys(s3_client, bucket) == [f"{finished_name}.tar.gz"]
    assert any("stopped: success 1 (exit 0)" in line for line in watch.lines()), str(watch)

    again = run_amgmt(watch_env, "watch", "--once", "--settle", "0.3")
    assert again.returncode == 0, again.stderr
    assert sorted(query(db, "SELECT target_name, status FROM operations")) == [("a.bin", "success"),
                                                                                ("b.bin", "success")]


def test_kill_9_mid_upload_then_a_restart_resumes_and_uploads_nothing_twice(
    start_watch, make_settings, local_dir: Path, s3_client: Any, bucket: str, watch_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    db = settings.db_path
    data = random.Random(9).randbytes(12 * MiB)
    (local_dir / "film.mov").write_bytes(data)
    (local_dir / "notes.txt").write_text("shot list\n" * 50)
    env = {"MGMT_PART_SIZE": "5MiB", "MGMT_PARTS_IN_FLIGHT": "1", "MGMT_CONCURRENCY": "1"}
    killed = start_watch("--settle", "0.3", env=env,
                         kill_at="amgmt.s3.multipart.MultipartUpload.send_part||2|after")  # 2 of 3 parts sent
    assert killed.wait() == -signal.SIGKILL, str(killed)
    assert (local_dir / "film.mov").exists()
    assert len(s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
    dead = run_amgmt(watch_env, "watch", "--status", "--json")
    assert dead.returncode == 1 and json.loads(dead.stdout)["state"] == "dead", dead.stdout

    watch = start_watch("--settle", "0.3", env=env)
    wait_for(lambda: sorted(p.name for p in local_dir.iterdir()) == ["completed"], timeout=60, what="both moved")
    assert watch.stop() == 0, str(watch)

    film = operations(db, "film.mov")
    assert [o["status"] for o in film] == ["cancelled", "success"], film
    resumed = film[1]["metadata"]
    assert resumed["parts_reused"] >= 2 and resumed["parts_sent"] + resumed["parts_reused"] == 3, resumed
    assert [o["status"] for o in operations(db, "notes.txt")].count("success") == 1
    assert keys(s3_client, bucket) == ["film.mov.tar.gz", "notes.txt.tar.gz"]
    assert archive_members(s3_client, bucket, "film.mov.tar.gz") == {"film.mov": data}
    assert hashlib.sha256((local_dir / "completed" / "film.mov").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list(settings.staging_dir.iterdir()) == []
