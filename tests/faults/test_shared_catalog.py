"""Several `amgmt upload all` processes on one local dir with a PostgreSQL catalog (issue 14): each entry claimed by
exactly one run, a dead run's entries taken over once its lease runs out (its multipart upload resumed, only the
missing parts sent), and a run that stalled past its lease fenced off before it writes a key or moves an original.
Real CLI processes, a real PostgreSQL server, the moto server behind tests/faults/faultproxy.py (which counts every
request per key and part); crash and stall points by tests/faults/killpoint.py, never by a sleep."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from faultproxy import FaultProxy

from amgmt.parts import MiB
from amgmt.store.postgres import PostgresStore

pytestmark = pytest.mark.pg
KILLPOINT = Path(__file__).parent / "killpoint.py"
LEASE = 2  # MGMT_LEASE_SECONDS of the takeover tests


def write_random(path: Path, size: int, seed: int) -> None:
    path.write_bytes(random.Random(seed).randbytes(size))


def _start(env: dict[str, str], host: str, *, kill_at: str = "", json_out: bool = True) -> subprocess.Popen[str]:
    args = ["upload", "all", "--no-progress", *(["--json"] if json_out else [])]
    command = [sys.executable, str(KILLPOINT), *args] if kill_at else [sys.executable, "-m", "amgmt", *args]
    return subprocess.Popen(
        command,
        env={**env, "MGMT_HOST_ID": host, **({"AMGMT_KILL_AT": kill_at} if kill_at else {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _amgmt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "amgmt", *args], env=env, capture_output=True, text=True, timeout=60)


def _history(env: dict[str, str]) -> list[dict[str, Any]]:
    run = _amgmt(env, "history", "--json", "-n", "0")
    assert run.returncode == 0, run.stderr
    return list(json.loads(run.stdout))


def _runs(env: dict[str, str]) -> list[dict[str, Any]]:
    run = _amgmt(env, "fleet", "--json")
    assert run.returncode == 0, run.stderr
    return [{**r, "host_id": host["host_id"]} for host in json.loads(run.stdout) for r in host["runs"]]


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP: state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def _wait(predicate: Any, what: str, proc: subprocess.Popen[str] | None = None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first: {proc.communicate()}")
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _per_key(proxy: FaultProxy, operation: str) -> Counter[str]:
    return Counter(e.key for e in proxy.events if e.operation == operation and e.status and e.status < 300)


def _parts(proxy: FaultProxy, key: str) -> Counter[int]:
    return Counter(
        e.part_number
        for e in proxy.events
        if e.operation == "UploadPart" and e.key == key and e.status and e.status < 300 and e.part_number
    )


async def _journaled_parts(pg_url: str) -> set[int]:
    async with PostgresStore(pg_url) as store:
        rows = await store._fetch("test", "SELECT part_number FROM upload_parts", [])
    return {int(row["part_number"]) for row in rows}


def _moved(local_dir: Path) -> list[str]:
    return sorted(p.name for p in (local_dir / "completed").iterdir() if p.name != ".metadata")


def test_three_runs_on_one_folder_upload_every_entry_exactly_once(
    cli_env: dict[str, str], local_dir: Path, s3_server: Any, s3_client: Any, bucket: str, pg_url: str
) -> None:
    small = [f"clip{i:03d}.txt" for i in range(295)]
    for i, name in enumerate(small):
        (local_dir / name).write_bytes(os.urandom(500 + 13 * i))
    large = [f"take{i}.mov" for i in range(5)]
    for i, name in enumerate(large):
        write_random(local_dir / name, 12 * MiB, seed=100 + i)
    with FaultProxy(s3_server.endpoint_url, enabled=False) as proxy:
        env = dict(cli_env, MGMT_ENDPOINT_URL=proxy.url, MGMT_DB_URL=pg_url, MGMT_PART_SIZE="5MiB")
        env["MGMT_MULTIPART_THRESHOLD"] = "5MiB"
        started = time.monotonic()
        procs = [_start(env, f"ingest-{n}") for n in range(3)]
        outs = [p.communicate(timeout=120) for p in procs]
        took = time.monotonic() - started
    reports = [json.loads(out) for out, _ in outs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    # Every entry was done by exactly one run; the others left it to that run (not a failure).
    done = Counter(op["target_name"] for r in reports for op in r["operations"])
    assert sorted(done) == sorted(small + large) and set(done.values()) == {1}, done
    for report in reports:
        assert report["counts"].get("success", 0) + len(report["elsewhere"]) == 300, report["counts"]
    assert sum(1 for r in reports if r["counts"].get("success")) >= 2  # the work was shared, not done by one
    # One success record per entry in the catalog, none pending, recorded by three hosts.
    history = [op for op in _history(env) if op["operation_type"] == "upload"]
    assert Counter(op["status"] for op in history) == {"success": 300}
    assert Counter(op["target_name"] for op in history) == Counter(small + large)
    # One object per entry, each written once: one PUT of each small one, each part of a large one sent once.
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, MaxKeys=1000)["Contents"])
    assert keys == sorted(f"{name}.tar.gz" for name in small + large)
    puts = _per_key(proxy, "PutObject")
    assert all(puts[f"{name}.tar.gz"] == 1 for name in small), [n for n in small if puts[f"{n}.tar.gz"] != 1]
    for name in large:
        key = f"{name}.tar.gz"
        assert _parts(proxy, key) == {1: 1, 2: 1, 3: 1}, (key, _parts(proxy, key))
        assert _per_key(proxy, "CreateMultipartUpload")[key] == 1
        assert _per_key(proxy, "CompleteMultipartUpload")[key] == 1
    # Every original moved once, nothing left behind.
    assert _moved(local_dir) == sorted(small + large)
    assert sorted(p.name for p in local_dir.iterdir()) == ["completed"]
    assert took < 90, took


def test_a_killed_run_s_entry_is_taken_over_after_its_lease_and_resumed(
    cli_env: dict[str, str], local_dir: Path, s3_server: Any, s3_client: Any, bucket: str, pg_url: str
) -> None:
    write_random(local_dir / "reel.mov", 12 * MiB, seed=7)  # 3 parts of 5 MiB
    (local_dir / "note.txt").write_bytes(b"a small one")
    key = "reel.mov.tar.gz"
    with FaultProxy(s3_server.endpoint_url, enabled=False) as proxy:
        env = dict(cli_env, MGMT_ENDPOINT_URL=proxy.url, MGMT_DB_URL=pg_url, MGMT_PART_SIZE="5MiB")
        env.update(MGMT_MULTIPART_THRESHOLD="5MiB", MGMT_PARTS_IN_FLIGHT="1", MGMT_LEASE_SECONDS=str(LEASE))
        # Killed right after the second part of the reel was sent (parts go one at a time here).
        kill_at = "amgmt.s3.multipart.MultipartUpload.send_part|reel.mov|2|after"
        victim = _start(env, "ingest-a", kill_at=kill_at)
        victim.communicate(timeout=120)
        killed = time.monotonic()
        assert victim.returncode == -signal.SIGKILL
        before = _parts(proxy, key)  # the third may have gone out meanwhile (its budget freed as the second ended)
        assert before in ({1: 1, 2: 1}, {1: 1, 2: 1, 3: 1}), before
        journaled = anyio.run(_journaled_parts, pg_url)  # what the shared journal proves of them
        assert {1, 2} <= journaled <= set(before), journaled
        assert (local_dir / "reel.mov").exists()
        # A run started at once leaves the reel alone: the dead run's claim still holds until its lease runs out.
        early = _start(env, "ingest-b")
        out, err = early.communicate(timeout=60)
        assert early.returncode == 0, err
        report = json.loads(out)
        if "reel.mov" in report["elsewhere"]:  # (a loaded machine may have been slower than the lease)
            assert (local_dir / "reel.mov").exists() and _parts(proxy, key) == before
            # The next run once the lease ran out takes it over.
            _wait(lambda: not any(r["alive"] and r["host_id"] == "ingest-a" for r in _runs(env)), "lease to run out")
            later = _start(env, "ingest-b")
            out, err = later.communicate(timeout=60)
            assert later.returncode == 0, err
            report = json.loads(out)
        takeover = time.monotonic() - killed
        [reel] = [op for op in report["operations"] if op["target_name"] == "reel.mov"]
    assert reel["status"] == "success", reel
    # Resumed from the shared journal: only the missing part was sent, every part exactly once in all.
    # (A part the dead run sent but did not journal may be sent again: without part MD5s only the journal, or a
    # checksum ListParts reports, proves a part the server holds; moto reports none.)
    meta = reel["metadata"]
    assert meta["parts_reused"] >= len(journaled) and meta["parts_sent"] == 3 - meta["parts_reused"], meta
    sent = _parts(proxy, key)
    assert set(sent) == {1, 2, 3} and all(sent[n] == 1 for n in journaled), sent
    assert sum(sent.values()) == 3 + len(before) - meta["parts_reused"], (sent, before, meta)
    assert _per_key(proxy, "CreateMultipartUpload")[key] == 1
    assert _per_key(proxy, "CompleteMultipartUpload")[key] == 1
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # The dead run's operation is closed as taken over; one success; the original moved once.
    history = [op for op in _history(env) if op["target_name"] == "reel.mov"]
    assert sorted(op["status"] for op in history) == ["cancelled", "success"], history
    [dead] = [op for op in history if op["status"] == "cancelled"]
    assert dead["host_id"] == "ingest-a" and "stopped renewing its claim" in dead["error_message"], dead
    assert _moved(local_dir) == ["note.txt", "reel.mov"]
    assert sorted(p.name for p in local_dir.iterdir()) == ["completed"]
    print(f"takeover: {takeover:.2f} s after the kill (MGMT_LEASE_SECONDS={LEASE})")
    assert takeover < 30


@pytest.mark.parametrize(
    ("doing", "entry", "size", "lane"),
    [
        ("writing the key", "reel.mov", 12 * MiB, False),  # before the CompleteMultipartUpload
        ("moving the original", "clip.mov", 3000, False),
        ("moving the original", "photo.jpg", 3000, True),  # the small-entry lane's fence of its batch
    ],
)
def test_a_run_that_stalled_past_its_lease_does_not_act_on_an_entry_taken_over(
    cli_env: dict[str, str],
    local_dir: Path,
    s3_server: Any,
    s3_client: Any,
    bucket: str,
    pg_url: str,
    doing: str,
    entry: str,
    size: int,
    lane: bool,
) -> None:
    write_random(local_dir / entry, size, seed=3)
    key = f"{entry}.tar.gz"
    with FaultProxy(s3_server.endpoint_url, enabled=False) as proxy:
        env = dict(cli_env, MGMT_ENDPOINT_URL=proxy.url, MGMT_DB_URL=pg_url, MGMT_PART_SIZE="5MiB")
        env.update(MGMT_MULTIPART_THRESHOLD="5MiB", MGMT_LEASE_SECONDS=str(LEASE))
        env["MGMT_SMALL_ENTRY_SIZE"] = "1MiB" if lane else "0"
        # The first run stops (SIGSTOP: a stall, as a frozen VM or a swapping host) right before its fence.
        fence = "amgmt.upload.lane.fence_all" if lane else "amgmt.upload.pipeline.EntryPipeline._fence"
        stall_at = f"{fence}|{doing}|1|before|SIGSTOP"
        stalled = _start(env, "ingest-a", kill_at=stall_at)
        try:
            _wait(lambda: _stopped(stalled.pid), "the first run to stall", stalled)
            _wait(lambda: not any(r["alive"] and r["host_id"] == "ingest-a" for r in _runs(env)), "lease to lapse")
            other = _start(env, "ingest-b")
            out, err = other.communicate(timeout=60)
            assert other.returncode == 0, err
            [done] = json.loads(out)["operations"]
            assert done["status"] == "success", done
        finally:
            stalled.send_signal(signal.SIGCONT)
        out, err = stalled.communicate(timeout=60)
    # The stalled run woke up, found its claim gone, and stopped the entry without acting: exit 0, nothing failed.
    assert stalled.returncode == 0, err
    [lost] = json.loads(out)["operations"]
    assert lost["status"] == "cancelled" and f"not {doing}: another run took over" in lost["error_message"], lost
    # The entry ended once, by the other run: one object written once, one success, the original moved once.
    assert _per_key(proxy, "CompleteMultipartUpload")[key] + _per_key(proxy, "PutObject")[key] <= 2  # (+reservation)
    if size > 5 * MiB:
        assert _per_key(proxy, "CompleteMultipartUpload")[key] == 1
        assert set(_parts(proxy, key).values()) == {1}
    else:
        assert _per_key(proxy, "PutObject")[key] == 1
    history = [op for op in _history(env) if op["target_name"] == entry]
    assert sorted((op["host_id"], op["status"]) for op in history) == [
        ("ingest-a", "cancelled"),
        ("ingest-b", "success"),
    ], history
    assert _moved(local_dir) == [entry]
    assert sorted(p.name for p in local_dir.iterdir()) == ["completed"]
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_run_starting_beside_a_live_one_of_the_same_host_leaves_its_entries_alone(
    cli_env: dict[str, str], local_dir: Path, s3_server: Any, s3_client: Any, bucket: str, pg_url: str
) -> None:
    # Same MGMT_HOST_ID, same local dir: the first run stalls mid-entry (its record pending, at the move). The
    # second run's recovery must not take that record for a dead run's (its claim is live, its process exists): it
    # neither cancels it nor touches the entry, which the first run then finishes.
    write_random(local_dir / "clip.mov", 3000, seed=4)
    (local_dir / "other.mov").write_bytes(b"another entry")
    env = dict(cli_env, MGMT_DB_URL=pg_url, MGMT_SMALL_ENTRY_SIZE="0", MGMT_CONCURRENCY="1")
    stall_at = "amgmt.upload.pipeline.EntryPipeline._fence|moving the original|1|before|SIGSTOP"
    first = _start(env, "ingest-a", kill_at=stall_at)
    try:
        _wait(lambda: _stopped(first.pid), "the first run to stall", first)
        [held] = [op for op in _history(env) if op["status"] == "pending"]
        second = _start(env, "ingest-a")
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        report = json.loads(out)
        assert report["elsewhere"] == [held["target_name"]], report
        assert report["recovered"]["interrupted_operations"] == []
        assert [op["status"] for op in _history(env) if op["operation_id"] == held["operation_id"]] == ["pending"]
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert [(op["target_name"], op["status"]) for op in json.loads(out)["operations"]] == [
        (held["target_name"], "success")
    ]
    assert Counter(op["status"] for op in _history(env)) == {"success": 2}
    assert _moved(local_dir) == ["clip.mov", "other.mov"]
