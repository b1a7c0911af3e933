"""`--hook CMD` / MGMT_HOOK as a user runs it: after each entry ends, the command runs with the record in AMGMT_*
variables and without credentials; a failing, missing or slow hook (killed with its whole process group) is
logged and recorded, and never changes an entry's outcome or the exit code."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from clikit import SECRET

from amgmt.models import OperationRecord
from amgmt.store import MetadataStore

FIELDS = (
    "AMGMT_OPERATION_ID",
    "AMGMT_STATUS",
    "AMGMT_TARGET_NAME",
    "AMGMT_TARGET_PATH",
    "AMGMT_BUCKET",
    "AMGMT_KEY",
    "AMGMT_SIZE",
    "AMGMT_COMPRESSED_SIZE",
    "AMGMT_ERROR",
    "AMGMT_COMPLETED_PATH",
)


def records(local_dir: Path) -> dict[str, OperationRecord]:
    """The latest upload record of each entry name."""

    async def read() -> list[OperationRecord]:
        async with MetadataStore(local_dir / "completed" / ".metadata" / "operations.db") as store:
            return await store.list_operations(operation_type="upload", limit=None)

    latest: dict[str, OperationRecord] = {}
    for record in asyncio.run(read()):  # newest first
        latest.setdefault(record.target_name, record)
    return latest


def env_dumps(out: Path) -> dict[str, dict[str, str]]:
    """The environments the hook saw (`env -0 > OUT/$AMGMT_TARGET_NAME.env`), by entry name."""
    seen = {}
    for dump in out.glob("*.env"):
        pairs = [item.split("=", 1) for item in dump.read_text().split("\0") if "=" in item]
        seen[dump.name.removesuffix(".env")] = dict(pairs)
    return seen


def test_the_hook_gets_each_entry_record_in_its_environment_and_no_credentials(
    amgmt, make_media, local_dir: Path, tmp_path: Path, s3_client: Any, bucket: str
) -> None:
    make_media({"a.mp4": 1000, "b.mp4": 300})
    s3_client.put_object(Bucket=bucket, Key="b.mp4.tar.gz", Body=b"somebody else's")  # b fails: other content
    out = tmp_path / "hook-out"
    out.mkdir()

    run = amgmt(
        "upload", "all", "--hook", f'env -0 > "{out}/$AMGMT_TARGET_NAME.env"',
        env={"AWS_SESSION_TOKEN": "token-" + SECRET, "MGMT_CONCURRENCY": "2"},
    )

    assert run.code == 1, run  # one entry failed: the hook changes nothing of that
    seen = env_dumps(out)
    assert sorted(seen) == ["a.mp4", "b.mp4"], run
    recs = records(local_dir)
    a, b = seen["a.mp4"], seen["b.mp4"]
    assert all(name in a and name in b for name in FIELDS)
    assert (a["AMGMT_OPERATION_ID"], a["AMGMT_STATUS"], a["AMGMT_ERROR"]) == (
        recs["a.mp4"].operation_id, "success", "")
    assert (a["AMGMT_TARGET_NAME"], a["AMGMT_TARGET_PATH"]) == ("a.mp4", str(local_dir / "a.mp4"))
    assert (a["AMGMT_BUCKET"], a["AMGMT_KEY"], a["AMGMT_SIZE"]) == (bucket, "a.mp4.tar.gz", "1000")
    assert int(a["AMGMT_COMPRESSED_SIZE"]) > 0
    assert a["AMGMT_COMPLETED_PATH"] == str(local_dir / "completed" / "a.mp4")
    assert (b["AMGMT_OPERATION_ID"], b["AMGMT_STATUS"]) == (recs["b.mp4"].operation_id, "failed")
    assert "already exists" in b["AMGMT_ERROR"] and b["AMGMT_ERROR"] == recs["b.mp4"].error_message
    assert b["AMGMT_COMPLETED_PATH"] == "" and (local_dir / "b.mp4").exists()
    for env in (a, b):
        assert SECRET not in "".join(env.values())
        assert not [name for name in env if name.startswith(("AWS_", "MGMT_"))], env
        assert env["PATH"] == os.environ["PATH"]
    assert recs["a.mp4"].metadata["hook"]["exit"] == 0 and recs["a.mp4"].metadata["hook"]["error"] is None
    assert recs["a.mp4"].status == "success" and recs["b.mp4"].metadata["hook"]["exit"] == 0


def test_a_failing_or_missing_hook_is_recorded_and_changes_nothing(amgmt, make_media, local_dir: Path) -> None:
    make_media({"a.mp4": 1000, "b.mp4": 2000})

    failing = amgmt("upload", "a.mp4", "--hook", "echo 'webhook said no' >&2; exit 3")
    missing = amgmt("upload", "b.mp4", env={"MGMT_HOOK": str(local_dir / "no-such-hook")})

    assert failing.code == missing.code == 0, (failing, missing)
    recs = records(local_dir)
    assert recs["a.mp4"].status == recs["b.mp4"].status == "success"
    assert (local_dir / "completed" / "a.mp4").exists() and (local_dir / "completed" / "b.mp4").exists()
    hook_a, hook_b = recs["a.mp4"].metadata["hook"], recs["b.mp4"].metadata["hook"]
    assert (hook_a["exit"], hook_a["error"]) == (3, "exit 3: webhook said no")
    assert hook_b["exit"] == 127 and hook_b["error"].startswith("exit 127: ") and "no-such-hook" in hook_b["error"]
    log = (Path(str(local_dir.parent) + "-state") / "amgmt" / "amgmt.log").read_text()
    assert f"entry {recs['a.mp4'].operation_id}: hook failed: exit 3: webhook said no" in log


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # killed; its reaper (pid 1 of a container) may not have collected it yet


def test_a_slow_hook_is_killed_with_its_whole_process_group(amgmt, make_media, local_dir: Path, tmp_path: Path) -> None:
    make_media({"a.mp4": 1000, "b.mp4": 2000})
    pids = tmp_path / "pids"

    started = time.monotonic()
    run = amgmt(
        "upload", "all", "-c", "2", "--hook", f"sleep 60 & echo $! >> {pids}; wait",
        env={"MGMT_HOOK_TIMEOUT": "0.5"},
    )
    took = time.monotonic() - started

    assert run.code == 0, run
    assert took < 20, took  # not the hooks' 60 s
    recs = records(local_dir)
    for name in ("a.mp4", "b.mp4"):
        assert recs[name].status == "success"
        hook = recs[name].metadata["hook"]
        assert hook["exit"] is None and hook["error"] == "killed after 0.5 s (MGMT_HOOK_TIMEOUT)", hook
        assert 0.5 <= hook["seconds"] < 10
    sleepers = [int(line) for line in pids.read_text().split()]
    assert len(sleepers) == 2
    assert all(_gone(pid) for pid in sleepers), sleepers


def test_retry_and_watch_take_the_hook_too(amgmt, make_media, local_dir: Path, tmp_path: Path, s3_client, bucket) -> None:
    make_media({"a.mp4": 1000, "c.mp4": 500})
    s3_client.put_object(Bucket=bucket, Key="a.mp4.tar.gz", Body=b"other")
    seen = tmp_path / "seen"
    hook = f'echo "$AMGMT_TARGET_NAME $AMGMT_STATUS" >> {seen}'

    first = amgmt("upload", "a.mp4")
    s3_client.delete_object(Bucket=bucket, Key="a.mp4.tar.gz")
    retried = amgmt("retry", "--failed", "--hook", hook)
    watched = amgmt("watch", "--once", "--settle", "0.1", env={"MGMT_HOOK": hook})

    assert (first.code, retried.code, watched.code) == (1, 0, 0), (first, retried, watched)
    assert seen.read_text().splitlines() == ["a.mp4 success", "c.mp4 success"]
