"""`amgmt upload`: end to end, --json, --dry-run, and a failing entry, as a user runs them."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from clikit import snapshot

MEDIA = {"a.mp4": 1000, "dir/b.txt": b"hello", "empty-dir/": None}
KEYS = ["a.mp4.tar.gz", "dir.tar.gz", "empty-dir.tar.gz"]


def member_bytes(s3_client, bucket: str, key: str, member: str) -> bytes:  # type: ignore[no-untyped-def]
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        extracted = tar.extractfile(member)
        assert extracted is not None
        return extracted.read()


def test_upload_all(amgmt, make_media, local_dir: Path, keys, s3_client, bucket) -> None:
    make_media(MEDIA)
    original = (local_dir / "a.mp4").read_bytes()

    run = amgmt("upload", "all")

    assert run.code == 0, run
    assert "3 entries in" in run.stdout and "success 3" in run.stdout, run
    assert "Traceback" not in run.stderr
    assert keys() == KEYS
    assert member_bytes(s3_client, bucket, "a.mp4.tar.gz", "a.mp4") == original
    assert member_bytes(s3_client, bucket, "dir.tar.gz", "dir/b.txt") == b"hello"
    assert sorted(p.name for p in local_dir.iterdir()) == ["completed"]
    assert (local_dir / "completed" / "a.mp4").read_bytes() == original


def test_upload_all_json(amgmt, make_media, keys) -> None:
    make_media(MEDIA)

    run = amgmt("upload", "all", "--json")

    assert run.code == 0, run
    report = json.loads(run.stdout)
    assert report["counts"] == {"success": 3}
    assert report["bytes_in"] == 1000 + 5
    assert report["exit_code"] == 0 and report["failures"] == []
    assert sorted(op["s3_object_key"] for op in report["operations"]) == KEYS
    assert {op["status"] for op in report["operations"]} == {"success"}
    assert keys() == KEYS


def test_dry_run_changes_nothing(amgmt, make_media, tmp_path: Path, keys, bucket) -> None:
    make_media(MEDIA)
    before = snapshot(tmp_path)

    run = amgmt("upload", "all", "--dry-run")

    assert run.code == 0, run
    for key in KEYS:
        assert f"s3://{bucket}/{key}" in run.stdout, run
    assert "3 entries" in run.stdout and "dry run" in run.stdout
    assert keys() == []
    assert snapshot(tmp_path) == before


def test_dry_run_json(amgmt, make_media, tmp_path: Path, keys, bucket) -> None:
    make_media(MEDIA)
    before = snapshot(tmp_path)

    run = amgmt("upload", "a.mp4", "dir", "--dry-run", "--json")

    assert run.code == 0, run
    plan = json.loads(run.stdout)
    assert plan["dry_run"] is True
    assert [(e["target_name"], e["s3_bucket"], e["s3_object_key"], e["original_size"]) for e in plan["entries"]] == [
        ("a.mp4", bucket, "a.mp4.tar.gz", 1000),
        ("dir", bucket, "dir.tar.gz", 5),
    ]
    assert keys() == []
    assert snapshot(tmp_path) == before


def test_failing_entry_exits_1_with_the_reason(amgmt, make_media, local_dir: Path, keys, s3_client, bucket) -> None:
    make_media(MEDIA)
    s3_client.put_object(Bucket=bucket, Key="a.mp4.tar.gz", Body=b"somebody else's archive")

    run = amgmt("upload", "all")

    assert run.code == 1, run
    assert "success 2" in run.stdout and "failed 1" in run.stdout, run
    assert "a.mp4: upload: " in run.stdout and "already exists with other content" in run.stdout, run
    assert (local_dir / "a.mp4").exists()
    assert s3_client.get_object(Bucket=bucket, Key="a.mp4.tar.gz")["Body"].read() == b"somebody else's archive"
    assert keys() == KEYS
