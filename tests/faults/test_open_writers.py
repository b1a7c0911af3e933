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
import threading
from datetime import UTC, datetime

import amgmt.local.writers as writers_module
from amgmt.local.destinations import CompletedDir
from amgmt.local.completed import move_to_completed
from amgmt.local.writers import SharedScan, held_for_writing, writers_of

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

    assert [w.pid for w in writers_of([inode(written)])] == [writer.pid]
    assert writers_of([inode(read)]) == []
    assert writers_of([]) == []


def inode(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def test_a_shared_scan_answers_each_caller_for_its_own_files(tmp_path: Path, hold_open) -> None:  # type: ignore[no-untyped-def]
    files = [tmp_path / f"f{i}.bin" for i in range(12)]
    for f in files:
        f.write_bytes(b"x")
    writer = hold_open(files[3], "ab")
    scan = SharedScan()
    answers: dict[int, list[int]] = {}

    def ask(i: int) -> None:
        answers[i] = [w.pid for w in scan([inode(files[i])])]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers == {i: ([writer.pid] if i == 3 else []) for i in range(len(files))}
    assert 1 <= scan.scans <= len(files)
    assert scan([]) == []


def test_a_call_made_while_a_scan_runs_waits_for_the_next_scan(
        tmp_path: Path, hold_open, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The window held open: the first scan reads /proc, a writer then opens the second file, and the second call
    comes while the first scan has not returned yet. Answering it from that scan would miss the writer."""
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(b"1")
    second.write_bytes(b"2")
    real_scan = writers_module._scan
    read_proc, release = threading.Event(), threading.Event()

    def slow_first_scan(*args: object) -> object:
        found = real_scan(*args)  # type: ignore[arg-type]
        if not read_proc.is_set():
            read_proc.set()
            assert release.wait(30)
        return found

    monkeypatch.setattr(writers_module, "_scan", slow_first_scan)
    scan = SharedScan()
    answers: dict[str, list[int]] = {}
    a = threading.Thread(target=lambda: answers.setdefault("first", [w.pid for w in scan([inode(first)])]))
    a.start()
    assert read_proc.wait(30)
    writer = hold_open(second, "ab")  # the world changes after the first scan read /proc
    b = threading.Thread(target=lambda: answers.setdefault("second", [w.pid for w in scan([inode(second)])]))
    b.start()
    b.join(0.3)
    assert b.is_alive(), "answered by a scan that started before the call"
    release.set()
    a.join(30)
    b.join(30)
    assert answers == {"first": [], "second": [writer.pid]}
    assert scan.scans == 2


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


# mmap(2) through libc, then close(2): Python's own mmap.mmap keeps a duplicate descriptor, a C program does not.
MAP_WRITABLE = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open(sys.argv[1], os.O_RDWR)
address = libc.mmap(None, 1, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
assert address not in (None, ctypes.c_void_p(-1).value)
os.close(fd)
print("open", flush=True)
sys.stdin.read()
"""


def test_the_kernel_answers_for_regular_files(tmp_path: Path, hold_open) -> None:  # type: ignore[no-untyped-def]
    written, read, mapped = tmp_path / "written.bin", tmp_path / "read.bin", tmp_path / "mapped.bin"
    for f in (written, read, mapped):
        f.write_bytes(b"x")
    hold_open(written, "ab")
    hold_open(read, "rb")
    mapper = subprocess.Popen([sys.executable, "-c", MAP_WRITABLE, str(mapped)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert mapper.stdout is not None and mapper.stdout.readline().strip() == "open"
        assert held_for_writing(str(written), inode(written)) is True
        assert held_for_writing(str(read), inode(read)) is False
        # A writable mapping with its descriptor closed: no /proc/PID/fd shows it, the kernel does.
        assert held_for_writing(str(mapped), inode(mapped)) is True
        assert writers_of([inode(mapped)]) == []
    finally:
        mapper.communicate("", timeout=10)
    assert held_for_writing(str(mapped), inode(mapped)) is False
    assert held_for_writing(str(tmp_path), inode(tmp_path)) is None  # a directory: /proc is scanned instead
    assert held_for_writing(str(read), (0, 0)) is None  # not the file expected
    assert held_for_writing(str(tmp_path / "gone"), (0, 0)) is None


def test_a_file_entry_needs_no_proc_scan_and_a_directory_one_does(tmp_path: Path) -> None:
    completed = tmp_path / "completed"
    local = tmp_path / "local"
    (local / "shoot").mkdir(parents=True)
    (local / "shoot" / "a.mov").write_bytes(b"a")
    (local / "clip.mov").write_bytes(b"c")
    scan = SharedScan()
    done = CompletedDir(path=completed, preserve_structure=False, duplicate_handling="error", local_dir=local)
    move_to_completed(local / "clip.mov", done, now=datetime.now(UTC), find_writers=scan)
    assert scan.scans == 0
    move_to_completed(local / "shoot", done, now=datetime.now(UTC), find_writers=scan)
    assert scan.scans == 1
    assert (completed / "clip.mov").exists() and (completed / "shoot" / "a.mov").exists()


async def test_an_entry_mapped_writable_is_moved_back_and_taken_once_unmapped(
        make_settings, local_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """A program writing through a shared mapping (a recorder, a database) holds no writable descriptor after
    mapping: its next store lands in the file wherever it is. The kernel's answer sees it; a /proc scan would not."""
    held = local_dir / "take.mov"
    held.write_bytes(b"frame" * 4000)
    settings = make_settings()
    mapper = subprocess.Popen([sys.executable, "-c", MAP_WRITABLE, str(held)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert mapper.stdout is not None and mapper.stdout.readline().strip() == "open"
        [record] = (await upload_batch(settings, list_entries(settings)[0])).records
        assert record.status == OperationStatus.CHANGED, record.to_dict()
        assert "still held by a process" in (record.error_message or "")
        assert held.exists() and not (settings.completed_dir / "take.mov").exists()
    finally:
        mapper.communicate("", timeout=10)
    [again] = (await upload_batch(settings, list_entries(settings)[0])).records
    assert again.status == OperationStatus.SUCCESS, again.to_dict()
    assert (settings.completed_dir / "take.mov").exists()
