"""A file still held open for writing is not left in the completed dir: its next write would land there unseen by
any identity check (a recorder between two writes, a copy tool between two chunks)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.models import OperationStatus
from amgmt.local.writers import writers_of

HOLD_OPEN = "import sys; f = open(sys.argv[1], sys.argv[2]); print('open', flush=True); sys.stdin.read()"


@pytest.fixture
def hold_open() -> Iterator:  # type: ignore[type-arg]
    """hold_open(path, mode): a real process that opens `path` with `mode` and keeps it open until the test ends."""
    procs: list[subprocess.Popen[str]] = []

    def start(path: Path, mode: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(path), mode], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.communicate("", timeout=10)


def test_writers_of_sees_writers_and_not_readers(tmp_path: Path, hold_open) -> None:  # type: ignore[no-untyped-def]
    written, read = tmp_path / "written.bin", tmp_path / "read.bin"
    written.write_bytes(b"w")
    read.write_bytes(b"r")
    writer = hold_open(written, "ab")
    hold_open(read, "rb")
    inode = lambda p: (os.stat(p).st_dev, os.stat(p).st_ino)  # noqa: E731

    assert [w.pid for w in writers_of([inode(written)])] == [writer.pid]
    assert writers_of([inode(read)]) == []
    assert writers_of([]) == []


@pytest.mark.parametrize("inside_a_directory", [False, True])
async def test_an_entry_open_for_writing_is_moved_back_and_taken_once_closed(
        make_settings, local_dir: Path, hold_open, inside_a_directory: bool) -> None:  # type: ignore[no-untyped-def]
    if inside_a_directory:
        (local_dir / "shoot").mkdir()
        held = local_dir / "shoot" / "take.mov"
        entry = local_dir / "shoot"
    else:
        held = entry = local_dir / "take.mov"
    held.write_bytes(b"frame" * 4000)
    settings = make_settings()
    writer = hold_open(held, "ab")  # open for appending, nothing written (yet)

    first = await upload_batch(settings, list_entries(settings)[0])

    [record] = first.records
    assert record.status == OperationStatus.CHANGED, record.to_dict()
    assert f"still held by pid {writer.pid}" in (record.error_message or "")
    assert entry.exists() and not (settings.completed_dir / entry.name).exists()

    writer.communicate("", timeout=10)  # the writer closes the file
    second = await upload_batch(settings, list_entries(settings)[0])
    [again] = second.records
    assert again.status == OperationStatus.SUCCESS, again.to_dict()
    assert again.metadata.get("reused_existing_object") is True  # the content did not change: nothing resent
    assert (settings.completed_dir / entry.name).exists() and not entry.exists()


async def test_a_process_working_inside_a_directory_entry_keeps_it_from_moving(
        make_settings, local_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """A process whose working directory is inside the entry follows it through a same-filesystem rename and can
    create files in the completed dir by relative names: the entry is moved back, and taken once it has left."""
    shoot = local_dir / "shoot"
    (shoot / "sub").mkdir(parents=True)
    (shoot / "a.mov").write_bytes(b"a" * 3000)
    settings = make_settings()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; print('in', flush=True); sys.stdin.read()"],
                            cwd=shoot / "sub", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "in"
        [record] = (await upload_batch(settings, list_entries(settings)[0])).records
        assert record.status == OperationStatus.CHANGED, record.to_dict()
        assert f"still held by pid {proc.pid}" in (record.error_message or "")
        assert shoot.is_dir() and not (settings.completed_dir / "shoot").exists()
    finally:
        proc.communicate("", timeout=10)
    [again] = (await upload_batch(settings, list_entries(settings)[0])).records
    assert again.status == OperationStatus.SUCCESS, again.to_dict()
