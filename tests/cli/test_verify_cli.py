"""`amgmt verify` as a user runs it against the real moto server: HEAD checks (size, ETag) of what was recorded as
uploaded, --deep (download, archive and source SHA-256), what is missing or changed recorded and shown by `status`,
exit 1 as `rclone check`, and --json."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from amgmt.cli.progress_bar import TqdmReporter
from amgmt.models import OperationRecord, UploadRecord, utcnow
from amgmt.objects.check import CheckResult, compare_head
from amgmt.s3 import ObjectHead

MEDIA = {"a.mp4": 300_000, "IMG_1.jpg": 2000, "album/x.jpg": 5000, "album/sub/y.txt": b"hello"}


@pytest.fixture
def uploaded(amgmt, make_media):  # type: ignore[no-untyped-def]
    make_media(MEDIA)
    run = amgmt("upload", "all")
    assert run.code == 0, run
    return run


def test_all_objects_as_uploaded_exit_0(amgmt, uploaded) -> None:
    run = amgmt("verify", "--all")
    deep = amgmt("verify", "--all", "--deep", "--json")

    assert run.code == 0, run
    assert run.stdout.startswith("3 objects checked (HEAD) in "), run
    assert run.stdout.rstrip().endswith(": ok 3"), run
    assert deep.code == 0, deep
    report = json.loads(deep.stdout)
    assert report["deep"] is True and report["counts"] == {"ok": 3}
    assert {o["key"]: o["checked"] for o in report["objects"]} == {
        key: ["size", "etag", "sha256", "source-sha256"] for key in ("IMG_1.jpg.tar.gz", "a.mp4.tar.gz", "album.tar.gz")
    }


def test_missing_and_changed_objects_exit_1_and_are_recorded(amgmt, uploaded, s3_client, bucket) -> None:
    s3_client.delete_object(Bucket=bucket, Key="a.mp4.tar.gz")
    s3_client.put_object(Bucket=bucket, Key="IMG_1.jpg.tar.gz", Body=b"somebody else's bytes")

    run = amgmt("verify", "--all")
    one = amgmt("verify", "album", "--json")
    status = amgmt("status", "a.mp4")

    assert run.code == 1, run
    assert "3 objects checked (HEAD) in " in run.stdout and "changed 1, missing 1, ok 1" in run.stdout, run
    assert "  missing  a.mp4.tar.gz: no object at the key" in run.stdout, run
    assert "  changed  IMG_1.jpg.tar.gz: size 21, recorded " in run.stdout, run
    assert one.code == 0 and json.loads(one.stdout)["counts"] == {"ok": 1}, one
    assert status.code == 0, status
    assert "verify  failed" in status.stdout and "missing: no object at the key" in status.stdout, status
    history = amgmt("history", "--type", "verify", "--json")
    results = sorted((op["target_name"], op["status"], op["metadata"]["result"]) for op in json.loads(history.stdout))
    assert results == [
        ("IMG_1.jpg", "failed", "changed"),
        ("a.mp4", "failed", "missing"),
        ("album", "success", "ok"),
        ("album", "success", "ok"),
    ]


def test_deep_compares_the_recorded_source_sha256(amgmt, uploaded, local_dir: Path) -> None:
    """HEAD cannot see the source digest; --deep recomputes it from the archive's members (a directory's manifest)."""
    db = local_dir / "completed" / ".metadata" / "operations.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE operations SET checksum_original = ? WHERE target_name = 'album'", ["0" * 64])

    head = amgmt("verify", "album")
    deep = amgmt("verify", "album", "--deep")

    assert head.code == 0, head
    assert deep.code == 1, deep
    assert "changed  album.tar.gz: s3://" in deep.stdout and f"source SHA-256" in deep.stdout, deep
    assert f"recorded {'0' * 64}" in deep.stdout, deep


def test_bad_input_is_one_line_exit_2(amgmt, uploaded) -> None:
    for args, message in [
        ((), "name the objects to verify, or give --all or --since WHEN"),
        (("a.mp4", "--all"), "give NAMES or --all, not both"),
        (("--since", "yesterday-ish"), "--since 'yesterday-ish': expected a date"),
        (("nothing.mov",), "nothing named 'nothing.mov'"),
    ]:
        run = amgmt("verify", *args)
        assert run.code == 2, run
        assert run.stderr.startswith("amgmt: error: ") and message in run.stderr, run
        assert len(run.stderr.strip().splitlines()) == 1, run


def test_since_selects_recent_uploads(amgmt, uploaded) -> None:
    recent = amgmt("verify", "--since", "1h", "--json")
    future = amgmt("verify", "--since", "2999-01-01", "--json")

    assert recent.code == 0 and json.loads(recent.stdout)["checked"] == 3, recent
    assert future.code == 0 and json.loads(future.stdout)["checked"] == 0, future


def test_verify_progress_bar_counts_objects(amgmt, uploaded) -> None:
    run = amgmt("verify", "--all", "--progress")

    assert run.code == 0, run
    assert "verify" in run.stderr and "3/3 objects" in run.stderr, run
    assert "success   a.mp4  s3://" in run.stderr, run


def _upload(**fields: object) -> UploadRecord:
    return UploadRecord(operation_id="x", target_path="/m/a", target_name="a", started_at=utcnow(), **fields)  # type: ignore[arg-type]


def test_compare_head_names_what_it_checked() -> None:
    upload = _upload(compressed_size=10, checksum_s3_etag="abc")
    head = ObjectHead(key="k", size=10, etag="abc", storage_class="STANDARD", metadata={}, last_modified=None)

    assert compare_head(upload, head).checked == ("size", "etag")
    assert compare_head(upload, None).result == CheckResult.MISSING
    assert compare_head(_upload(compressed_size=11, checksum_s3_etag="abc"), head).result == CheckResult.CHANGED
    assert compare_head(_upload(compressed_size=10, checksum_s3_etag="abd"), head).detail == "ETag abc, recorded abd"


def test_the_bar_writes_a_line_for_any_operation(tmp_path: Path) -> None:
    """A line per finished check, escaped, on the bar's stream (stderr), never on stdout (tqdm.write's default)."""
    record = OperationRecord(
        operation_id="x", operation_type="verify", target_path="s3://b/k", target_name="k\x1b", started_at=utcnow()
    )
    with (tmp_path / "bar").open("w+") as out:
        bar = TqdmReporter(out, desc="verify", unit="obj", noun="objects")
        bar.add_work(1, 1)
        bar.entry_done(record)
        bar.close()
        out.seek(0)
        assert "pending   k\\x1b  s3://b/k" in out.read()


def test_all_leaves_out_objects_amgmt_deleted(amgmt, uploaded) -> None:
    deleted = amgmt("delete", "album", "--yes")
    run = amgmt("verify", "--all", "--json")
    named = amgmt("verify", "album")

    assert deleted.code == 0, deleted
    assert run.code == 0, run
    assert sorted(o["key"] for o in json.loads(run.stdout)["objects"]) == ["IMG_1.jpg.tar.gz", "a.mp4.tar.gz"]
    assert named.code == 2 and "no upload of it is recorded as verified" in named.stderr, named
