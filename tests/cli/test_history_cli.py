"""`amgmt history` (table, --json, filters) and `amgmt show` (id prefix, --json) after a real run."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def recorded(amgmt, make_media, s3_client, bucket) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """One run: a.mp4 and dir succeed, taken.mov fails (other content at its key). Operations by target name."""
    make_media({"a.mp4": 1000, "dir/b.txt": b"hello", "taken.mov": 2000})
    s3_client.put_object(Bucket=bucket, Key="taken.mov.tar.gz", Body=b"other")
    assert amgmt("upload", "all").code == 1
    run = amgmt("history", "--json")
    assert run.code == 0, run
    return {op["target_name"]: op for op in json.loads(run.stdout)}


def names(run) -> list[str]:  # type: ignore[no-untyped-def]
    assert run.code == 0, run
    return sorted(op["target_name"] for op in json.loads(run.stdout))


def test_history_table_and_json(amgmt, recorded: dict[str, dict], bucket: str) -> None:
    assert sorted(recorded) == ["a.mp4", "dir", "taken.mov"]
    assert {n: op["status"] for n, op in recorded.items()} == {"a.mp4": "success", "dir": "success",
                                                                "taken.mov": "failed"}
    assert recorded["a.mp4"]["s3_bucket"] == bucket and recorded["a.mp4"]["s3_object_key"] == "a.mp4.tar.gz"
    assert recorded["taken.mov"]["error_message"].startswith("upload: ")
    assert "source_file_record" not in recorded["a.mp4"]  # the file records are for `show`

    run = amgmt("history")
    assert run.code == 0, run
    lines = run.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "TYPE", "TARGET", "STATUS"]
    assert len(lines) == 4
    for name, op in recorded.items():
        row = next(line for line in lines if line.startswith(op["operation_id"][:8]))
        assert name in row and op["status"] in row
        if op["status"] == "failed":
            assert "upload: " in row  # the reason itself is cut to fit the column; `show` has it whole


def test_history_filters(amgmt, recorded: dict[str, dict]) -> None:
    assert names(amgmt("history", "--json", "--status", "failed")) == ["taken.mov"]
    assert len(names(amgmt("history", "--json", "--limit", "1"))) == 1
    assert names(amgmt("history", "--json", "--target", "A.MP4")) == ["a.mp4"]
    assert names(amgmt("history", "--json", "--since", "1h")) == ["a.mp4", "dir", "taken.mov"]
    run = amgmt("history", "--status", "cancelled")
    assert run.code == 0 and "no operations recorded matching these filters" in run.stdout, run


def test_show_by_prefix(amgmt, recorded: dict[str, dict]) -> None:
    op = recorded["a.mp4"]
    prefix = op["operation_id"][:8]

    run = amgmt("show", prefix)
    assert run.code == 0, run
    assert op["operation_id"] in run.stdout
    assert "source_file_record:" in run.stdout and "completed_file_record:" in run.stdout

    run = amgmt("show", prefix, "--json")
    assert run.code == 0, run
    full = json.loads(run.stdout)
    assert full["operation_id"] == op["operation_id"] and full["status"] == "success"
    assert full["source_file_record"]["size"] == 1000
    assert full["s3_file_record"]["path"] == "a.mp4.tar.gz"
    assert full["completed_file_record"]["location"] == "completed"
