"""The metadata database and the run lock: a database deleted during a run stops it before anything else is
moved (exit 4), and the run lock belongs to the local dir, whatever database each run uses."""

from __future__ import annotations

import fcntl
import functools
import os
import subprocess
import sys
from pathlib import Path

import anyio.to_thread
import pytest

from amgmt.local.archive import ArchiveResult, compress_entry
from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.errors import ExitCode


@pytest.mark.parametrize("lane", [False, True], ids=["one-by-one", "small-entry-lane"])
async def test_a_database_deleted_during_the_run_stops_it_before_anything_else_is_moved(
    make_settings, make_media, local_dir: Path, s3view, lane: bool
) -> None:
    make_media({"a.mp4": 3000, "b.mp4": 4000, "c.mp4": 5000})
    # One by one (the lane off), a.mp4 is done when b.mp4 is packed; in the lane the three are one batch.
    settings = make_settings(concurrency=1, small_entry_size="1MiB" if lane else "0")
    db = settings.db_path

    async def compress(source: str, archive_path: str, part_size: int, level: int, md5: bool = True) -> ArchiveResult:
        if Path(source).name == "b.mp4":  # a.mp4 is done: someone removes the database now
            for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
                path.unlink(missing_ok=True)
        job = functools.partial(compress_entry, part_size=part_size, level=level, md5=md5)
        return await anyio.to_thread.run_sync(job, source, archive_path)

    report = await upload_batch(settings, list_entries(settings)[0], compressor=compress)

    assert report.exit_code == ExitCode.STORE
    assert report.aborted == f"the metadata database {db} was deleted or replaced during the run"
    if lane:  # the batch's next stage save found the database gone: nothing sent, nothing moved
        assert sorted(str(r.status) for r in report.records) == ["failed"] * 3
        assert all((local_dir / name).exists() for name in ("a.mp4", "b.mp4", "c.mp4"))
        assert s3view.keys() == []
        return
    assert [r.status for r in report.records if r.target_name == "a.mp4"] == ["success"]
    assert (settings.completed_dir / "a.mp4").exists()
    assert (local_dir / "b.mp4").exists() and (local_dir / "c.mp4").exists()
    assert s3view.keys() == ["a.mp4.tar.gz"]


def test_two_runs_with_different_databases_on_one_local_dir_exclude_each_other(
    make_media, local_dir: Path, tmp_path: Path, cli_env: dict[str, str], s3view
) -> None:
    make_media({"a.mp4": 3000})
    # The first run holds the local dir's lock (as a running `amgmt upload --db first.db` does).
    held = os.open(local_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        second = subprocess.run(
            [sys.executable, "-m", "amgmt", "upload", "all", "--db", str(tmp_path / "second.db")],
            env={**cli_env, "XDG_STATE_HOME": str(tmp_path / "state")}, cwd=tmp_path, capture_output=True,
            text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
    finally:
        os.close(held)

    assert second.returncode == ExitCode.BUSY, second
    assert second.stdout == "" and "Traceback" not in second.stderr
    assert second.stderr.splitlines() == [
        f"amgmt: error: another amgmt run (pid {os.getpid()}) is uploading from {local_dir}; "
        "wait for it to finish, or stop it (Ctrl-C) first"
    ]
    assert (local_dir / "a.mp4").exists() and s3view.keys() == []
