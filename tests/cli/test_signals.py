"""`amgmt local-s3` and `amgmt demo` stop cleanly on SIGTERM, SIGINT (Ctrl-C) and SIGHUP: no traceback, the documented
exit code, and no moto server (or other child) left behind. They run as real processes, signalled from outside."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from amgmt.bench.localserver import free_port

MARKER = "AMGMT_TEST_SIGNALS_RUN"
pytestmark = pytest.mark.timeout(120)


def marked_processes(run_id: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose environment carries this test's marker: the command and all
    it started (the moto server, `amgmt upload`, its compression workers), wherever they were reparented."""
    found = []
    needle = f"{MARKER}={run_id}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if needle not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # exited, not yet reaped by its parent
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        found.append((int(entry), cmdline))
    return found


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def run_id() -> Iterator[str]:
    """A marker for the processes of one test; any it leaves behind are killed after the test (which has failed)."""
    value = uuid.uuid4().hex
    yield value
    for pid, _ in marked_processes(value):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_amgmt(run_id: str, cwd: Path, *args: str) -> subprocess.Popen[str]:
    # Its own session, as a shell gives a foreground job its own process group: killpg then acts like the terminal.
    return subprocess.Popen([sys.executable, "-m", "amgmt", *args], cwd=cwd, env=dict(os.environ, **{MARKER: run_id}),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def signal_and_wait(proc: subprocess.Popen[str], signum: int, *, to_group: bool, timeout: float) -> str:
    """Send `signum` to the process (or to its whole group, as a terminal's Ctrl-C does) and wait for it to exit;
    returns its stderr."""
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=timeout)
    return stderr


def read_until(proc: subprocess.Popen[str], pattern: str) -> re.Match[str]:
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    proc.wait(30)
    raise AssertionError(f"{pattern!r} never printed (exit {proc.returncode}); stdout:\n{''.join(seen)}")


@pytest.mark.parametrize(("signum", "to_group"), [
    (signal.SIGTERM, False),  # kill PID, a service manager
    (signal.SIGINT, True),  # Ctrl-C in the terminal: the whole foreground process group
    (signal.SIGINT, False),
    (signal.SIGHUP, True),  # the terminal closes
])
def test_local_s3_stops_the_server_and_exits_0(run_id: str, tmp_path: Path, signum: int, to_group: bool) -> None:
    port = free_port()
    proc = start_amgmt(run_id, tmp_path, "local-s3", "--port", str(port))
    try:
        server_pid = int(read_until(proc, r"\(pid (\d+)\)").group(1))
        read_until(proc, "press Ctrl-C to stop")
        assert not port_is_free(port)
        stderr = signal_and_wait(proc, signum, to_group=to_group, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stderr.strip() == "local S3 server stopped"
    assert port_is_free(port)
    assert not marked_processes(run_id)
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)


@pytest.mark.parametrize(("signum", "to_group"), [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_demo_stops_the_upload_and_the_server_and_exits_130(run_id: str, tmp_path: Path, signum: int,
                                                            to_group: bool) -> None:
    proc = start_amgmt(run_id, tmp_path, "demo", "--dir", str(tmp_path / "demo"), "-c", "2")
    try:
        port = int(read_until(proc, r"local S3 server: http://127\.0\.0\.1:(\d+)").group(1))
        # Signalled while `amgmt upload` compresses: its workers exist once its own signal handler is installed.
        wait_for(lambda: any("amgmt.upload.worker" in cmd for _, cmd in marked_processes(run_id)), proc)
        stderr = signal_and_wait(proc, signum, to_group=to_group, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert port_is_free(port)
    assert not marked_processes(run_id)


def test_a_ctrl_c_before_the_upload_handles_signals_is_one_line_and_130(tmp_path: Path, cli_env: dict[str, str],
                                                                         local_dir: Path) -> None:
    """SIGINT at an exact early call (listing the entries, before the signal watcher runs): before the fix a
    111-line traceback ending in KeyboardInterrupt."""
    (local_dir / "clip.mp4").write_bytes(b"x" * 100)
    killpoint = Path(__file__).parents[1] / "faults" / "killpoint.py"
    done = subprocess.run([sys.executable, str(killpoint), "upload", "all", "--no-progress"],
                          env=dict(cli_env, AMGMT_KILL_AT="amgmt.local.entries.list_entries||1|before|SIGINT"),
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 130, done
    assert done.stderr.strip() == "amgmt: interrupted", done.stderr
    assert (local_dir / "clip.mp4").exists()
