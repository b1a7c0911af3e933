"""The compression pool's workers: started on demand, reused, closed or killed with their scope, and reaped only by
asyncio's child watcher. The race that used to print "Unknown child process pid N" is made certain here instead of
rare: a worker that exits on its own, a kill sent after that exit (through `Popen.send_signal`, whose poll reaps the
dead worker, in anyio's worker handling), and the watcher's thread late to its waitpid."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_process
import pytest

from amgmt.errors import CompressionError
from amgmt.upload.compressor import CompressionPool

REAPER_DELAY = 0.5  # seconds the child watcher's thread waits, once its child has exited, before its waitpid


def wait_until_exited(pid: int) -> None:
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.fixture
def late_kill_slow_reaper(monkeypatch: pytest.MonkeyPatch) -> None:
    """The window where the world changes, held open: a worker that dies on its own is signalled only once it has
    exited (Popen.send_signal and pidfd_send_signal wait for that), and asyncio's child watcher reaps it only
    REAPER_DELAY later (its thread's waitpid waits). Whoever reaps in between makes the watcher log."""
    real_waitpid, real_send, real_pidfd_send = os.waitpid, subprocess.Popen.send_signal, signal.pidfd_send_signal

    def waitpid(pid: int, options: int) -> tuple[int, int]:
        if options == 0 and threading.current_thread() is not threading.main_thread():
            wait_until_exited(pid)
            time.sleep(REAPER_DELAY)
        return real_waitpid(pid, options)

    def send_signal(self: subprocess.Popen[bytes], sig: int) -> None:
        wait_until_exited(self.pid)
        real_send(self, sig)

    def pidfd_send_signal(pidfd: int, sig: int, *args: Any) -> None:
        fdinfo = Path(f"/proc/self/fdinfo/{pidfd}").read_text()
        wait_until_exited(int(fdinfo.split("Pid:")[1].split()[0]))
        real_pidfd_send(pidfd, sig, *args)

    monkeypatch.setattr(os, "waitpid", waitpid)
    monkeypatch.setattr(subprocess.Popen, "send_signal", send_signal)
    monkeypatch.setattr(signal, "pidfd_send_signal", pidfd_send_signal)


def reaping_noise(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "asyncio" and "child process" in r.getMessage()]


def alive(pid: int) -> bool:
    """Running (not exited, or exited and not yet reaped: a zombie is not alive)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def children() -> list[int]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == me:
                found.append(int(entry))
    return found


async def test_a_worker_killed_mid_job_fails_that_job_and_is_reaped_silently(
    late_kill_slow_reaper: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The job kills its own worker (as the OOM killer would): that job fails, one line; the next job gets a new
    worker; nothing but the child watcher reaps the dead one."""
    caplog.set_level(logging.DEBUG, logger="asyncio")
    before = set(children())
    async with CompressionPool(anyio.CapacityLimiter(2)) as pool:
        first = await pool.run(os.getpid, describe="pid")
        with pytest.raises(CompressionError, match="^the compression worker died while dying$"):
            await pool.run(signal.raise_signal, signal.SIGKILL, describe="dying")
        assert not alive(first)
        assert await pool.run(os.getpid, describe="pid") != first  # a new worker took its place
    assert reaping_noise(caplog) == []
    assert set(children()) == before


async def test_anyio_worker_handling_logs_the_reaping_race_under_the_same_conditions(
    late_kill_slow_reaper: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The control: what the pool replaced. Under the same slowed watcher, anyio's to_process answers a dead worker
    with Popen.send_signal, whose poll reaps it first: asyncio then logs the line users saw."""
    caplog.set_level(logging.DEBUG, logger="asyncio")
    with pytest.raises(anyio.BrokenWorkerProcess):
        await anyio.to_process.run_sync(signal.raise_signal, signal.SIGKILL)
    with anyio.move_on_after(REAPER_DELAY * 10):  # until the watcher's thread finds its child gone
        while not reaping_noise(caplog):
            await anyio.sleep(0.05)
    assert any("Unknown child process pid" in line for line in reaping_noise(caplog))


async def test_a_cancelled_job_kills_its_worker_and_waits_for_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    before = set(children())
    async with CompressionPool(anyio.CapacityLimiter(2)) as pool:
        with anyio.move_on_after(0.3):
            await pool.run(time.sleep, 60, describe="sleeping")
        assert not pool._busy and not pool._idle
    assert set(children()) == before
    assert reaping_noise(caplog) == []


async def test_workers_are_reused_then_closed_with_the_scope(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    before = set(children())
    async with CompressionPool(anyio.CapacityLimiter(1)) as pool:
        first = await pool.run(os.getpid, describe="pid")
        second = await pool.run(os.getpid, describe="pid")
        assert first == second != os.getpid()
        with pytest.raises(ZeroDivisionError):  # the job's own error, raised here; the worker stays usable
            await pool.run(divmod, 1, 0, describe="dividing")
        assert await pool.run(os.getpid, describe="pid") == first
    assert not alive(first)
    assert set(children()) == before
    assert reaping_noise(caplog) == []


async def test_a_small_file_is_packed_in_a_thread_and_a_large_one_in_a_worker(tmp_path: Path) -> None:
    small, large = tmp_path / "small.txt", tmp_path / "large.bin"
    small.write_bytes(b"s" * 1000)
    large.write_bytes(os.urandom(2 * 1024 * 1024))
    async with CompressionPool(anyio.CapacityLimiter(2)) as pool:
        a = await pool(str(small), str(tmp_path / "small.tar.gz"), 8 * 1024 * 1024, 1)
        assert not pool._idle  # no worker was started for it
        b = await pool(str(large), str(tmp_path / "large.tar.gz"), 8 * 1024 * 1024, 1)
        assert len(pool._idle) == 1
    assert a.source_size == 1000 and b.source_size == 2 * 1024 * 1024
