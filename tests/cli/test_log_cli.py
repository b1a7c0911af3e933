"""`amgmt log`: commands that do work write run-level lines to the state dir's log, never a secret."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

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
    try:
        time.sleep(1.0)
        with log_file.open("a") as handle:
            handle.write("new 3\n")
        time.sleep(0.8)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["old 2", "new 3"]
