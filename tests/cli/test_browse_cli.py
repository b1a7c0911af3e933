"""`amgmt ls`, `search`, `stats`, the `history` export formats and shell completion, run as a user runs them."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from amgmt.models import UPLOAD_FIELDS, OperationStatus, Stage, UploadRecord, new_operation_id
from amgmt.store import MetadataStore

PAGE = 1000  # ListObjectsV2's page: the bucket below holds more than one


@pytest.fixture
def ran(amgmt, make_media, s3_client, bucket) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """One run: Clip.MP4 and dir succeed (and move away), taken.mov fails (other content at its key); then
    new-Holiday.mov appears. Operations by target name."""
    make_media({"Clip.MP4": 1000, "dir/b.txt": b"hello", "taken.mov": 2000})
    s3_client.put_object(Bucket=bucket, Key="taken.mov.tar.gz", Body=b"other")
    assert amgmt("upload", "all").code == 1
    make_media({"new-Holiday.mov": 300})
    run = amgmt("history", "--json")
    assert run.code == 0, run
    return {op["target_name"]: op for op in json.loads(run.stdout)}


def test_ls_shows_local_state_and_objects(amgmt, ran: dict[str, dict], bucket: str) -> None:
    run = amgmt("ls")
    assert run.code == 0, run
    local, objects = run.stdout.split("\n\n")
    lines = local.splitlines()
    assert lines[0].endswith(": 2 entries, 2.2 KiB") and lines[1].split() == ["NAME", "KIND", "SIZE", "UPLOAD",
                                                                              "TRIED", "IN", "S3"]
    assert lines[2].split()[:5] == ["new-Holiday.mov", "file", "300", "B", "never"]
    assert lines[2].split()[-1] == "no"
    assert lines[3].split()[:5] == ["taken.mov", "file", "2.0", "KiB", "failed"] and lines[3].split()[-1] == "yes"
    lines = objects.splitlines()
    assert lines[0].startswith(f"s3://{bucket}/: 3 objects")
    rows = {line.split()[0]: line for line in lines[2:]}
    assert sorted(rows) == ["Clip.MP4.tar.gz", "dir.tar.gz", "taken.mov.tar.gz"]
    assert rows["Clip.MP4.tar.gz"].endswith(ran["Clip.MP4"]["operation_id"][:8])
    assert rows["taken.mov.tar.gz"].endswith(" -")  # not made by an upload recorded here

    run = amgmt("ls", "local", "--json")
    assert run.code == 0, run
    data = json.loads(run.stdout)
    assert data["objects"] is None
    taken = next(e for e in data["local"] if e["name"] == "taken.mov")
    assert taken["upload_status"] == "failed" and taken["operation_id"] == ran["taken.mov"]["operation_id"]
    assert taken["changed_since"] is False and taken["in_s3"] is None and taken["key"] == "taken.mov.tar.gz"

    run = amgmt("search", "HOLIDAY")
    assert run.code == 0, run
    assert "new-Holiday.mov" in run.stdout and "1 entry matching 'HOLIDAY'" in run.stdout
    assert ": 0 objects matching 'HOLIDAY'" in run.stdout
    run = amgmt("search", "zzz", "local")
    assert run.code == 0 and run.stdout.strip().endswith(": 0 entries matching 'zzz'"), run


def test_ls_and_search_read_every_page(amgmt, make_media, s3_client, bucket: str) -> None:
    keys = [f"media/{i:04d}-{'Take' if i % 250 == 0 else 'clip'}.mov.tar.gz" for i in range(PAGE + 5)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: s3_client.put_object(Bucket=bucket, Key=key, Body=b"x"), keys))
    s3_client.put_object(Bucket=bucket, Key="elsewhere/take.mov.tar.gz", Body=b"x")
    make_media({"TAKE-local.mov": 10, "other.mov": 10})
    env = {"MGMT_OBJECT_PREFIX": "media"}

    run = amgmt("ls", "s3", "--json", env=env)
    assert run.code == 0, run
    data = json.loads(run.stdout)
    assert data["local"] is None and data["prefix"] == "media/"
    assert [o["key"] for o in data["objects"]] == keys  # all of them, in key order, nothing from elsewhere/
    assert {o["storage_class"] for o in data["objects"]} == {"STANDARD"}

    run = amgmt("search", "tAkE", "--json", env=env)
    assert run.code == 0, run
    data = json.loads(run.stdout)
    assert [e["name"] for e in data["local"]] == ["TAKE-local.mov"]
    assert [o["key"] for o in data["objects"]] == [k for k in keys if "Take" in k]
    assert len(data["objects"]) == 5  # 0, 250, 500, 750, 1000: the last one on the second page

    run = amgmt("search", "take", "s3", env=env)
    assert run.code == 0, run
    assert run.stdout.splitlines()[0] == f"s3://{bucket}/media/: 5 objects matching 'take', 5 B"
    assert "TAKE-local.mov" not in run.stdout


def test_ls_needs_a_bucket_except_for_local(amgmt, make_media) -> None:
    make_media({"a.mp4": 10})
    run = amgmt("ls", drop=("MGMT_BUCKET",))
    assert run.code == 2 and "MGMT_BUCKET" in run.stderr, run
    run = amgmt("ls", "local", drop=("MGMT_BUCKET",))
    assert run.code == 0 and "a.mp4" in run.stdout, run
    run = amgmt("ls", "--bucket", "no-such-bucket-here")
    assert run.code == 3 and "does not exist" in run.stderr, run
    run = amgmt("search", "")
    assert run.code == 2 and run.stderr == "amgmt: error: the search keyword is empty\n", run


# -- history export ----------------------------------------------------------------------------------------------


def test_history_exports_and_filters(amgmt, ran: dict[str, dict]) -> None:
    run = amgmt("history", "--format", "csv")
    assert run.code == 0, run
    rows = list(csv.DictReader(io.StringIO(run.stdout)))
    assert csv.reader(io.StringIO(run.stdout)).__next__() == list(UPLOAD_FIELDS)
    by_name = {r["target_name"]: r for r in rows}
    assert sorted(by_name) == sorted(ran)
    for name, op in ran.items():
        row = by_name[name]
        assert row["operation_id"] == op["operation_id"] and row["status"] == op["status"]
        assert row["original_size"] == str(op["original_size"])
        assert json.loads(row["metadata"]) == op["metadata"]
        assert json.loads(row["command_args"]) == op["command_args"]
    assert by_name["taken.mov"]["error_message"] == ran["taken.mov"]["error_message"]
    assert by_name["Clip.MP4"]["error_message"] == ""  # None

    as_format = amgmt("history", "--format", "json")
    as_flag = amgmt("history", "--json")
    assert as_format.code == as_flag.code == 0
    assert json.loads(as_format.stdout) == json.loads(as_flag.stdout)
    run = amgmt("history", "--json", "--format", "csv")
    assert run.code == 2 and "--json and --format csv" in run.stderr, run

    def names(*args: str) -> list[str]:
        run = amgmt("history", "--json", *args)
        assert run.code == 0, run
        return sorted(op["target_name"] for op in json.loads(run.stdout))

    assert names("--location", "completed") == ["Clip.MP4", "dir"]  # the originals moved there
    assert names("--location", "local") == ["Clip.MP4", "dir", "taken.mov"]
    assert names("--until", "2000-01-01") == []
    assert names("--until", "2999-01-01", "--target", "CLIP") == ["Clip.MP4"]

    run = amgmt("history", "--format", "csv", "-n", "1")
    assert run.code == 0, run
    assert len(list(csv.DictReader(io.StringIO(run.stdout)))) == 1
    assert run.stderr == "amgmt: showing the newest 1 matching operation; -n 0 for all\n"  # "1 operation" (issue 15)
    assert amgmt("history", "-n", "3").stderr == ""


# -- stats -------------------------------------------------------------------------------------------------------

MONDAY = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)
MiB = 1024 * 1024


def _upload(name: str, day: int, status: OperationStatus, size: int, seconds: float,
            error: str | None = None) -> UploadRecord:
    started = MONDAY + timedelta(days=day)
    record = UploadRecord(operation_id=new_operation_id(), target_path=f"/media/{name}", target_name=name,
                          started_at=started, original_size=size, compressed_size=size // 4, s3_bucket="b",
                          s3_object_key=f"{name}.tar.gz", stage=Stage.DONE if error is None else Stage.VERIFY)
    record.finish(status, error=error, when=started + timedelta(seconds=seconds))
    return record


def test_stats_of_known_records(amgmt, local_dir: Path) -> None:
    records = [
        _upload("a.mp4", 0, OperationStatus.SUCCESS, 8 * MiB, 2.0),
        _upload("b.mp4", 1, OperationStatus.SUCCESS, 4 * MiB, 2.0),
        _upload("c.mp4", 8, OperationStatus.FAILED, MiB, 1.0, "verify: s3://b/c.mp4.tar.gz is missing after the upload"),
        _upload("d.mp4", 9, OperationStatus.FAILED, MiB, 1.0, "verify: s3://b/d.mp4.tar.gz is missing after the upload"),
    ]

    async def save() -> None:
        async with MetadataStore(local_dir / "completed" / ".metadata" / "operations.db") as store:
            for record in records:
                await store.save_operation(record)

    asyncio.run(save())
    run = amgmt("stats", "--json", env={"TZ": "UTC"})
    assert run.code == 0, run
    data = json.loads(run.stdout)
    assert (data["operations"], data["entries"], data["original_bytes"], data["uploaded_bytes"]) == (
        4, 2, 12 * MiB, 3 * MiB)
    # issue 15: throughput over the runs' wall time (6 s: the failed entries took run time too), not 12 MiB / 4 s
    assert data["compression_ratio"] == 4.0 and data["throughput"] == 2 * MiB and data["wall_seconds"] == 6.0
    assert [(d["period"], d["entries"], d["failures"]) for d in data["per_day"]] == [
        ("2026-11-23", 1, 0), ("2026-11-24", 1, 0), ("2026-12-01", 0, 1), ("2026-12-02", 0, 1)]
    assert [(w["period"], w["original_bytes"]) for w in data["per_week"]] == [("2026-W48", 12 * MiB), ("2026-W49", 0)]
    assert [(f["reason"], f["count"]) for f in data["failures"]] == [("verify: <object> is missing after the upload", 2)]

    run = amgmt("stats", "--since", "2026-12-01", env={"TZ": "UTC"})
    assert run.code == 0, run
    assert run.stdout.startswith("uploads since 2026-12-01 00:00:00: 2 operations\n")
    assert "2      failed  verify: <object> is missing after the upload" in run.stdout

    run = amgmt("stats", "--since", "yesterday")
    assert run.code == 2 and "--since 'yesterday'" in run.stderr, run


def test_stats_without_a_database(amgmt) -> None:
    run = amgmt("stats")
    assert run.code == 2 and "no metadata database" in run.stderr, run


# -- completion --------------------------------------------------------------------------------------------------


def complete(amgmt, line: str, shell: str = "bash"):  # type: ignore[no-untyped-def]
    """What `amgmt` answers the shell's completion request for the command line `line` (cursor at its end)."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    return amgmt(env={"_AMGMT_COMPLETE": f"{shell}_complete", "COMP_WORDS": line, "COMP_CWORD": str(cword)})


def test_completion_of_commands_and_options(amgmt) -> None:
    run = complete(amgmt, "amgmt up")
    assert run.code == 0 and run.stdout == "plain,upload\n", run
    run = complete(amgmt, "amgmt s")
    assert run.stdout.splitlines() == ["plain,search", "plain,show", "plain,stats", "plain,status"]
    run = complete(amgmt, "amgmt history --for")
    assert run.stdout == "plain,--format\n", run
    run = complete(amgmt, "amgmt ls ")
    assert run.stdout.splitlines() == ["plain,local", "plain,s3", "plain,all"]
    run = complete(amgmt, "amgmt ", shell="zsh")
    assert "upload\nPack, upload, verify and move entries of the local dir.\n" in run.stdout, run


def test_completion_of_entry_names(amgmt, make_media, local_dir: Path) -> None:
    make_media({"holiday.mp4": 1, "hobby dir/x": 1, ".hidden": 1, "other.mov": 1})
    run = complete(amgmt, "amgmt upload ho")
    assert run.code == 0, run
    assert run.stdout.splitlines() == ["plain,hobby\\\\ dir", "plain,holiday.mp4"]  # escaped for bash's `read`
    run = complete(amgmt, "amgmt upload ho", shell="zsh")
    assert run.stdout.splitlines()[1::3] == ["hobby dir", "holiday.mp4"]
    run = complete(amgmt, "amgmt upload ")
    assert run.stdout.splitlines() == ["plain,hobby\\\\ dir", "plain,holiday.mp4", "plain,other.mov", "plain,all"]
    run = complete(amgmt, "amgmt upload holiday.mp4 ")  # a name already given, and `all`, are not offered again
    assert run.stdout.splitlines() == ["plain,hobby\\\\ dir", "plain,other.mov"]
    elsewhere = local_dir.parent / "elsewhere"
    (elsewhere / "far.mov").mkdir(parents=True)
    run = complete(amgmt, f"amgmt upload --local-dir {elsewhere} ")
    assert run.stdout.splitlines() == ["plain,far.mov", "plain,all"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_inserts_a_completed_name_with_a_space_as_one_word(amgmt, make_media, cli_env) -> None:  # type: ignore[no-untyped-def]
    make_media({"wedding project/x": 1, "50% off$.mp4": 1})
    script = amgmt(env={"_AMGMT_COMPLETE": "bash_source"})
    assert script.code == 0 and "complete -o nosort -F _amgmt_completion amgmt" in script.stdout, script
    amgmt_bin = Path(sys.executable).with_name("amgmt")
    probe = (
        script.stdout.replace(" $1)", f" {amgmt_bin})")  # the script calls `amgmt`; here: this venv's one
        + '\nfor cur in "wed" "50"; do COMP_WORDS=(amgmt upload "$cur"); COMP_CWORD=2; COMPREPLY=()\n'
        '_amgmt_completion amgmt; eval "words=(${COMPREPLY[0]})"; printf "<%s>\\n" "${words[@]}"; done\n'
    )
    done = subprocess.run(["bash", "-c", probe], env=cli_env, capture_output=True, text=True, timeout=30)
    assert done.stdout == "<wedding project>\n<50% off$.mp4>\n", done
