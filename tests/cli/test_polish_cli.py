"""Everyday polish of issue 15 as a user sees it: -v/--debug after the command, -q, one timestamp format in every
--json, "1 entry", warnings about mistyped config keys, and `config set KEY=VALUE`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
LOOKS_LIKE_A_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def times_in(data: Any, path: str = "") -> list[tuple[str, str]]:
    """(where, value) of every string that looks like a date and time, anywhere in a JSON document."""
    if isinstance(data, dict):
        return [t for k, v in data.items() for t in times_in(v, f"{path}.{k}")]
    if isinstance(data, list):
        return [t for i, v in enumerate(data) for t in times_in(v, f"{path}[{i}]")]
    return [(path, data)] if isinstance(data, str) and LOOKS_LIKE_A_TIME.match(data) else []


def test_verbose_and_debug_after_the_command(amgmt, make_media) -> None:
    make_media({"a.mp4": 100})

    run = amgmt("upload", "all", "-v")
    history = amgmt("history", "--debug", "-n", "1")

    assert run.code == 0, run
    assert "INFO amgmt: batch start: 1 entry, bucket " in run.stderr, run
    assert history.code == 0, history


def test_quiet_prints_only_what_failed(amgmt, make_media, s3_client, bucket, keys) -> None:
    make_media({"a.mp4": 100, "b.mp4": 200})
    s3_client.put_object(Bucket=bucket, Key="b.mp4.tar.gz", Body=b"other content")

    run = amgmt("upload", "all", "-q", "--progress")
    verify = amgmt("-q", "verify", "--all")
    dry = amgmt("upload", "all", "--dry-run", "--quiet")

    assert run.code == 1, run
    assert run.stdout == "", run
    assert run.stderr.startswith("failed    b.mp4: upload: ") and len(run.stderr.splitlines()) == 1, run
    assert verify.code == 0 and verify.stdout == verify.stderr == "", verify
    assert dry.code == 0 and dry.stderr == "" and "ENTRY" in dry.stdout and "dry run" not in dry.stdout, dry
    assert keys() == ["a.mp4.tar.gz", "b.mp4.tar.gz"]


def test_one_entry_not_one_entries(amgmt, make_media) -> None:
    make_media({"a.mp4": 100, "b.mp4": 10})

    dry = amgmt("upload", "a.mp4", "--dry-run")
    run = amgmt("upload", "a.mp4")
    amgmt("upload", "b.mp4")
    history = amgmt("history", "-n", "1")

    assert "1 entry, 100 B (dry run: nothing done)" in dry.stdout, dry
    assert run.stdout.startswith("1 entry in "), run
    assert "showing the newest 1 matching operation;" in history.stderr, history


def test_every_json_time_is_iso_utc_z(amgmt, make_media, tmp_path: Path) -> None:
    make_media({"a.mp4": 100, "dir/b.txt": b"hello"})
    outputs = {"upload": amgmt("upload", "all", "--json")}
    op = json.loads(outputs["upload"].stdout)["operations"][0]["operation_id"]
    outputs |= {
        "history": amgmt("history", "--json"),
        "show": amgmt("show", op, "--json"),
        "status": amgmt("status", "a.mp4", "--json"),
        "ls": amgmt("ls", "all", "--json"),
        "search": amgmt("search", "a", "--json"),
        "stats": amgmt("stats", "--json"),
        "verify": amgmt("verify", "--all", "--json"),
        "download": amgmt("download", "a.mp4", "--to", str(tmp_path / "dl"), "--json"),
        "delete": amgmt("delete", "dir", "--yes", "--json"),
    }
    outputs["status after delete"] = amgmt("status", "dir", "--json")
    seen = 0
    for name, run in outputs.items():
        assert run.code == 0, run
        for where, value in times_in(json.loads(run.stdout)):
            assert ISO_Z.match(value), f"amgmt {name} --json: {where} = {value!r}"
            seen += 1
    assert seen >= 20


def test_config_warns_about_mistyped_keys_and_set_takes_key_equals_value(amgmt, tmp_path: Path) -> None:
    config = tmp_path / "amgmt.conf"
    config.write_text("MGMT_BUKET=b\nAWS_SECRET_ACCESS_KEY=never-shown\n")

    shown = amgmt("config", "--config", str(config))
    quiet = amgmt("config", "--config", str(config), "-q")
    written = amgmt("config", "set", "MGMT_CONCURRENCY=4", "--config", str(config))
    alone = amgmt("config", "set", "MGMT_CONCURRENCY", "--config", str(config))
    mistyped = amgmt("config", "set", "MGMT_BUKET=x", "--config", str(config))

    assert shown.code == 0, shown
    assert shown.stderr == (
        f"amgmt: warning: config file {config} line 1: MGMT_BUKET is not an amgmt setting "
        "(did you mean MGMT_BUCKET?); ignored\n"
    ), shown
    assert quiet.code == 0 and quiet.stderr == "", quiet
    assert written.code == 0 and written.stdout == f"MGMT_CONCURRENCY=4 written to {config}\n", written
    assert config.read_text().splitlines()[-1] == "MGMT_CONCURRENCY=4"
    assert alone.code == 2 and alone.stderr.startswith("amgmt: error: give KEY=VALUE or KEY VALUE"), alone
    assert mistyped.code == 2 and "did you mean MGMT_BUCKET?" in mistyped.stderr, mistyped


def test_without_a_terminal_each_finished_entry_is_a_line_on_stderr(amgmt, make_media, s3_client, bucket) -> None:
    """cron, CI, `| tee`: no bar, but a line per entry as it ends (before: only the summary), none under --json."""
    make_media({"a.mp4": 100, "b.mp4": 200})
    s3_client.put_object(Bucket=bucket, Key="b.mp4.tar.gz", Body=b"other content")

    run = amgmt("upload", "all")
    make_media({"c.mp4": 300})
    scripted = amgmt("upload", "all", "--json")

    assert run.code == 1, run
    lines = run.stderr.splitlines()
    assert any(re.match(r"^success +a\.mp4 +100 B +a\.mp4\.tar\.gz$", line) for line in lines), run
    assert any(re.match(r"^failed +b\.mp4 +200 B +.*already", line) for line in lines), run
    assert not any(line.startswith("success   c.mp4") for line in scripted.stderr.splitlines()), scripted
    assert json.loads(scripted.stdout)["counts"].get("success") == 1, scripted
