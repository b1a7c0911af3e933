"""`amgmt upload --exclude/--include` and MGMT_EXCLUDE as a user runs them: filters choose whole entries (in the
order given on the command line), and never leave a file out of an entry's archive."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

MEDIA = {"a.mp4": 1000, "b.tmp": 10, "IMG_1.jpg": 20, "wedding/clip.mp4": 30, "wedding/scratch.tmp": b"keep me"}


def members(s3_client, bucket: str, key: str) -> list[str]:  # type: ignore[no-untyped-def]
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        return sorted(tar.getnames())


def test_exclude_leaves_entries_out_but_never_files_of_an_archive(
    amgmt, make_media, local_dir: Path, keys, s3_client, bucket
) -> None:
    make_media(MEDIA)

    run = amgmt("upload", "all", "--exclude", "*.tmp", "--exclude", "IMG_*")

    assert run.code == 0, run
    assert "2 entries in" in run.stdout and "excluded by the filters: 2 entries" in run.stdout, run
    assert keys() == ["a.mp4.tar.gz", "wedding.tar.gz"]
    # the directory entry's own *.tmp file is in its archive, as it is in completed/
    assert "wedding/scratch.tmp" in members(s3_client, bucket, "wedding.tar.gz")
    assert (local_dir / "completed" / "wedding" / "scratch.tmp").read_bytes() == b"keep me"
    assert sorted(p.name for p in local_dir.iterdir()) == ["IMG_1.jpg", "b.tmp", "completed"]


def test_the_order_of_exclude_and_include_decides(amgmt, make_media, keys) -> None:
    make_media(MEDIA)

    only_mp4 = amgmt("upload", "all", "--dry-run", "--json", "--exclude", "*", "--include", "*.mp4")
    nothing = amgmt("upload", "all", "--dry-run", "--json", "--include", "*.mp4", "--exclude", "*")
    leading_include = amgmt("upload", "all", "--dry-run", "--include", "*.jpg")

    assert only_mp4.code == nothing.code == leading_include.code == 0, (only_mp4, nothing, leading_include)
    plan = json.loads(only_mp4.stdout)
    assert [e["target_name"] for e in plan["entries"]] == ["a.mp4"]
    assert plan["excluded"] == ["IMG_1.jpg (--exclude '*')", "b.tmp (--exclude '*')", "wedding (--exclude '*')"]
    assert json.loads(nothing.stdout)["entries"] == []
    assert "IMG_1.jpg" in leading_include.stdout and "1 entry, 20 B (dry run" in leading_include.stdout
    assert "excluded: a.mp4 (no --include matches it)" in leading_include.stdout, leading_include
    assert keys() == []


def test_mgmt_exclude_from_the_config_file_and_names_given(amgmt, make_media, tmp_path: Path, keys) -> None:
    make_media(MEDIA)
    config = tmp_path / "amgmt.conf"
    config.write_text("MGMT_EXCLUDE='*.tmp, *.jpg'\n")

    run = amgmt("upload", "--config", str(config), "a.mp4", "b.tmp", "IMG_1.jpg")
    # a leading --include takes back what MGMT_EXCLUDE leaves out, and only that
    again = amgmt("upload", "--config", str(config), "all", "--include", "IMG_*")

    assert run.code == 0 and again.code == 0, (run, again)
    assert "1 entry in" in run.stdout and "excluded by the filters: 2 entries" in run.stdout, run
    assert keys() == ["IMG_1.jpg.tar.gz", "a.mp4.tar.gz"]
    shown = amgmt("config", "--config", str(config))
    assert "MGMT_EXCLUDE" in shown.stdout and "*.tmp,*.jpg" in shown.stdout, shown


def test_a_bad_pattern_is_one_line_and_exit_2(amgmt, make_media, keys) -> None:
    make_media(MEDIA)

    run = amgmt("upload", "all", "--exclude", "")

    assert run.code == 2, run
    assert run.stderr.strip() == "amgmt: error: --exclude '': expected a shell pattern such as '*.tmp'", run
    assert keys() == []
