"""The hook runner: the record's fields in AMGMT_* and no credentials or settings in the environment; a hook
cancelled with its run is killed with its whole process group; a background child that keeps the hook's stderr
open does not hold the entry up."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio

from amgmt.models import OperationStatus, UploadRecord, new_operation_id, utcnow
from amgmt.upload.hooks import hook_environment, run_hook


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _record() -> UploadRecord:
    record = UploadRecord(
        operation_id=new_operation_id(),
        target_path="/media/a.mp4",
        target_name="a.mp4",
        started_at=utcnow(),
        s3_bucket="b",
        s3_object_key="p/a.mp4.tar.gz",
        original_size=10,
    )
    record.finish(OperationStatus.FAILED, error="upload: boom")
    return record


def test_the_environment_has_the_record_and_no_credentials_or_settings() -> None:
    base = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_SESSION_TOKEN": "t",
        "AWS_ACCESS_KEY_ID": "k",
        "MGMT_BUCKET": "b",
        "AMGMT_STATUS": "stale",
    }
    record = _record()

    env = hook_environment(record, base)

    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "AMGMT_OPERATION_ID": record.operation_id,
        "AMGMT_STATUS": "failed",
        "AMGMT_TARGET_NAME": "a.mp4",
        "AMGMT_TARGET_PATH": "/media/a.mp4",
        "AMGMT_BUCKET": "b",
        "AMGMT_KEY": "p/a.mp4.tar.gz",
        "AMGMT_SIZE": "10",
        "AMGMT_COMPRESSED_SIZE": "",
        "AMGMT_ERROR": "upload: boom",
        "AMGMT_COMPLETED_PATH": "",
    }


async def test_a_cancelled_hook_is_killed_with_its_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    env = {"PATH": os.environ["PATH"]}

    with anyio.move_on_after(1):
        await run_hook(f"sleep 60 & echo $! > {pids}; wait", env, timeout=60)

    sleeper = int(pids.read_text())
    assert not _alive(sleeper)


async def test_a_background_child_holding_stderr_does_not_hold_the_entry(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    env = {"PATH": os.environ["PATH"]}

    started = time.monotonic()
    result = await run_hook(f"sleep 60 & echo $! > {pids}; echo sent >&2; exit 0", env, timeout=30)
    took = time.monotonic() - started

    sleeper = int(pids.read_text())
    try:
        assert (result.exit, result.error) == (0, None)
        assert took < 5
    finally:
        os.kill(sleeper, signal.SIGKILL)
