"""`amgmt watch --once`, `amgmt watch --status` with no watch, and `amgmt upload all --min-age`, as a user runs them:
what has settled is uploaded, what is still arriving (changed lately, or open for writing) is left, and says why."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Amgmt = Any  # the `amgmt` fixture of tests/cli/conftest.py

SETTLE = 1.0
# Appends to a file every 0.2 s (opening and closing it each time) until killed: young whenever it is looked at.
APPENDER = "import sys, time\nwhile True:\n    open(sys.argv[1], 'ab').write(b'.')\n    time.sleep(0.2)"
HOLD_OPEN = "import sys; f = open(sys.argv[1], 'ab'); print('open', flush=True); sys.stdin.read()"


@contextlib.contextmanager
def appending(path: Path) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-c", APPENDER, str(path)])
    try:
        wait_until_exists(path)
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)


def wait_until_exists(path: Path) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_once_uploads_what_has_settled_and_leaves_what_is_still_arriving(
    amgmt: Amgmt, local_dir: Path, keys
) -> None:  # type: ignore[no-untyped-def]
    (local_dir / "old.mov").write_bytes(b"o" * 4000)
    time.sleep(SETTLE + 0.1)
    with appending(local_dir / "young.mov"):
        first = amgmt("watch", "--once", "--settle", str(SETTLE))
    young_since = time.monotonic()

    assert first.code == 0, str(first)
    assert keys() == ["old.mov.tar.gz"]
    assert (local_dir / "young.mov").exists() and not (local_dir / "old.mov").exists()
    [left] = [line for line in first.stdout.splitlines() if " left " in line]
    assert "young.mov: changed" in left and f"younger than {SETTLE:g} s" in left, first.stdout
    assert any("success   old.mov -> old.mov.tar.gz" in line for line in first.stdout.splitlines()), first.stdout

    time.sleep(max(young_since + SETTLE + 0.1 - time.monotonic(), 0))
    second = amgmt("watch", "--once", "--json", env={"MGMT_SETTLE_SECONDS": str(SETTLE)})
    assert second.code == 0, str(second)
    events = [json.loads(line) for line in second.stdout.splitlines()]
    assert [e["event"] for e in events] == ["start", "entry", "stop"]
    assert (events[1]["target_name"], events[1]["status"]) == ("young.mov", "success")
    assert keys() == ["old.mov.tar.gz", "young.mov.tar.gz"]


def test_status_without_any_watch_is_one_line_and_exit_2(amgmt: Amgmt) -> None:
    result = amgmt("watch", "--status")
    assert result.code == 2, str(result)
    assert result.stderr.startswith("amgmt: error: no watch has run on ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_a_bad_settle_value_names_the_setting(amgmt: Amgmt) -> None:
    result = amgmt("watch", "--settle", "soon")
    assert result.code == 2 and "MGMT_SETTLE_SECONDS=soon (from flag)" in result.stderr, str(result)


def test_upload_all_min_age_leaves_young_and_open_entries(amgmt: Amgmt, local_dir: Path, keys) -> None:  # type: ignore[no-untyped-def]
    (local_dir / "old.mov").write_bytes(b"o" * 4000)
    (local_dir / "open.mov").write_bytes(b"p" * 4000)
    time.sleep(SETTLE + 0.1)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(local_dir / "open.mov")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with appending(local_dir / "young.mov"):
            result = amgmt("upload", "all", "--min-age", str(SETTLE), "--no-progress")
    finally:
        holder.communicate("", timeout=10)

    assert result.code == 0, str(result)
    assert keys() == ["old.mov.tar.gz"]
    assert "1 entry in" in result.stdout
    assert f"ignored: open.mov: open for writing by pid {holder.pid}" in result.stdout, result.stdout
    assert "ignored: young.mov: changed " in result.stdout and f"younger than {SETTLE:g} s" in result.stdout
    assert (local_dir / "young.mov").exists() and (local_dir / "open.mov").exists()

    plain = amgmt("upload", "all", "--no-progress")  # without --min-age everything goes
    assert plain.code == 0 and keys() == ["old.mov.tar.gz", "open.mov.tar.gz", "young.mov.tar.gz"], str(plain)


def test_a_missing_bucket_stops_the_watch_before_anything_with_exit_3(amgmt: Amgmt, local_dir: Path) -> None:
    (local_dir / "a.mov").write_bytes(b"a" * 100)
    result = amgmt("watch", "--settle", "0.5", "--bucket", "no-such-bucket-here")
    assert result.code == 3, str(result)
    assert result.stderr.startswith("amgmt: error: bucket 'no-such-bucket-here' does not exist")
    assert "Traceback" not in result.stderr and (local_dir / "a.mov").exists()
