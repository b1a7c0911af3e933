"""`amgmt log`: commands that do work write run-level lines to the state dir's log, never a secret."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

from clikit import SECRET


def test_upload_logs_entry_status_and_log_shows_last_lines(amgmt, make_media, tmp_path: Path) -> None:
    make_media({"a.mp4": 1000, "b.mov": 2000})
    run = amgmt("-v", "upload", "all")
    assert run.code == 0, run
    assert "batch end" in run.stderr  # -v also prints the log lines

    log_file = tmp_path.with_name(tmp_path.name + "-state") / "amgmt" / "amgmt.log"
    text = log_file.read_text()
    assert SECRET not in text
    assert "batch start: 2 entries" in text
    entry_lines = [line for line in text.splitlines() if " entry " in line]
    assert len(entry_lines) == 2 and all("success" in line for line in entry_lines)
    assert any("a.mp4 -> a.mp4.tar.gz" in line for line in entry_lines)

    run = amgmt("log", "-n", "2")
    assert run.code == 0, run
    assert run.stdout.splitlines() == text.splitlines()[-2:]


def test_help_writes_no_log(amgmt, tmp_path: Path) -> None:
    assert amgmt("upload", "--help").code == 0
    assert not (tmp_path.with_name(tmp_path.name + "-state")).exists()


def test_log_follow_prints_new_lines_until_ctrl_c(amgmt, tmp_path: Path, cli_env: dict[str, str]) -> None:
    log_file = tmp_path.with_name(tmp_path.name + "-state") / "amgmt" / "amgmt.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_text("old 1\nold 2\n")
    env = dict(cli_env, XDG_STATE_HOME=str(tmp_path.with_name(tmp_path.name + "-state")))
    proc = subprocess.Popen([sys.executable, "-m", "amgmt", "log", "-n", "1", "--follow"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        # Each step waits for what the command printed (it flushes every line), never for a sleep to be long enough.
        assert _next_line(proc.stdout) == "old 2"  # the end is read: what is appended from now on is new
        with log_file.open("a") as handle:
            handle.write("new 3\n")
        assert _next_line(proc.stdout) == "new 3"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out == ""


def _next_line(stream: IO[str], timeout: float = 30.0) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no line printed in time"
    return stream.readline().rstrip("\n")


def test_every_changing_command_is_logged_with_its_local_dir_and_outcome(amgmt, make_media, local_dir: Path,
                                                                          tmp_path: Path) -> None:
    """upload, download, delete, cleanup, config set: a line as each starts (arguments, no secret) and one as it
    ends (local dir, exit code and why); commands that only read (history, search, watch --status) are not logged."""
    make_media({"a.mp4": 1000})
    hook = "true https://hooks.example/T0/HOOK-TOKEN-41d2"  # a webhook's URL holds its token
    assert amgmt("upload", "all", "--hook", hook, "--concurrency", "2").code == 0
    assert amgmt("download", "a.mp4", "--to", "out").code == 0
    assert amgmt("delete", "no-such-thing", "--yes").code == 2
    assert amgmt("cleanup").code == 0
    assert amgmt("config", "set", f"MGMT_HOOK={hook}").code == 0
    for reading in (("history",), ("search", "a"), ("watch", "--status"), ("log",)):
        amgmt(*reading)

    text = (tmp_path.with_name(tmp_path.name + "-state") / "amgmt" / "amgmt.log").read_text()
    assert SECRET not in text and "HOOK-TOKEN-41d2" not in text
    lines = [line.split(" amgmt.command: ", 1)[1] for line in text.splitlines() if " amgmt.command: " in line]
    started = [line.split(" (pid ")[0] for line in lines if " started: " in line]
    assert started == [
        "command upload started: amgmt upload all --hook <hidden> --concurrency 2",
        "command download started: amgmt download a.mp4 --to out",
        "command delete started: amgmt delete no-such-thing --yes",
        "command cleanup started: amgmt cleanup",
        "command config set started: amgmt config set MGMT_HOOK=<hidden>",
    ]
    ended = [line for line in lines if " ended: " in line]
    assert len(ended) == 5
    assert ended[0].startswith("command upload ended: exit 0 (done) in ") and ended[0].endswith(f"local dir {local_dir}")
    assert ended[1].startswith("command download ended: exit 0 (done)")
    assert ended[2].startswith("command delete ended: exit 2 (bad input)") and "nothing named 'no-such-thing'" in ended[2]
    assert ended[4].startswith("command config set ended: exit 0 (done)")
