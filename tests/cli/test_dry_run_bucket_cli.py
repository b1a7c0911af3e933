"""`upload --dry-run` asks the bucket: skips (this content is at the key), conflicts (other content), what
--on-conflict would make of them, and new keys; it sends and changes nothing. The predictions match the real run."""

from __future__ import annotations

import json
from pathlib import Path

from clikit import snapshot


def _setup(amgmt, local_dir: Path, s3_client, bucket) -> None:  # type: ignore[no-untyped-def]
    (local_dir / "same.mp4").write_bytes(b"same" * 1000)
    (local_dir / "card").mkdir()
    (local_dir / "card" / "a.jpg").write_bytes(b"a" * 100)
    assert amgmt("upload", "same.mp4", "card").code == 0
    (local_dir / "same.mp4").write_bytes(b"same" * 1000)  # the same content again
    (local_dir / "card").mkdir()
    (local_dir / "card" / "a.jpg").write_bytes(b"b" * 100)  # a directory of the same size, other content
    (local_dir / "clip.mp4").write_bytes(b"mine" * 500)
    s3_client.put_object(Bucket=bucket, Key="clip.mp4.tar.gz", Body=b"somebody else's")  # other content
    s3_client.put_object(Bucket=bucket, Key="clip-2.mp4.tar.gz", Body=b"and another")
    (local_dir / "new.mp4").write_bytes(b"new")


def test_dry_run_predicts_skips_and_conflicts_and_sends_nothing(amgmt, local_dir: Path, tmp_path: Path, s3_client,
                                                                bucket, keys) -> None:
    _setup(amgmt, local_dir, s3_client, bucket)
    before_keys, before = keys(), snapshot(tmp_path)

    run = amgmt("upload", "all", "--dry-run")
    as_json = amgmt("upload", "all", "--dry-run", "--json", "--on-conflict", "rename")

    assert run.code == 0, run
    actions = {line.split()[0]: line.split()[-1] for line in run.stdout.splitlines()[1:] if "s3://" in line
               and not line.startswith(("skip:", "conflict:", "exists:"))}
    assert actions == {"card": "exists", "clip.mp4": "conflict", "new.mp4": "upload", "same.mp4": "skip"}, run
    assert "conflict: clip.mp4: s3://" in run.stdout and "holds an object amgmt did not upload" in run.stdout
    assert "predicted: conflict 1, exists 1, skip 1, upload 1" in run.stdout
    entries = {e["target_name"]: e for e in json.loads(as_json.stdout)["entries"]}
    assert entries["clip.mp4"]["action"] == "upload" and entries["clip.mp4"]["predicted_key"] == "clip-3.mp4.tar.gz"
    assert entries["same.mp4"]["action"] == "skip" and entries["new.mp4"]["predicted_key"] == "new.mp4.tar.gz"
    assert keys() == before_keys and snapshot(tmp_path) == before, "nothing sent, nothing changed"

    real = amgmt("upload", "all", "--json", "--on-conflict", "rename")
    done = {op["target_name"]: (op["status"], op["s3_object_key"]) for op in json.loads(real.stdout)["operations"]}
    assert done["same.mp4"][0] == "skipped"
    assert done["clip.mp4"] == ("success", "clip-3.mp4.tar.gz")
    assert done["new.mp4"] == ("success", "new.mp4.tar.gz")


def test_dry_run_needs_the_bucket(amgmt, local_dir: Path) -> None:
    (local_dir / "a.mp4").write_bytes(b"a")

    run = amgmt("upload", "all", "--dry-run", env={"MGMT_ENDPOINT_URL": "http://127.0.0.1:9"})

    assert run.code == 3, run
    assert run.stderr.startswith("amgmt: error: ") and "Traceback" not in run.stderr


def test_dry_run_with_overwrite_uploads_everything_but_a_second_entry_of_one_key(amgmt, local_dir: Path, s3_client,
                                                                                 bucket) -> None:
    (local_dir / "clip.mp4").write_bytes(b"mine")
    s3_client.put_object(Bucket=bucket, Key="clip.mp4.tar.gz", Body=b"somebody else's")
    for card in ("a", "b"):
        (local_dir / card).mkdir()
        (local_dir / card / "x.mp4").write_bytes(card.encode())

    run = amgmt("upload", "clip.mp4", "a/x.mp4", "b/x.mp4", "--dry-run", "--json", "--overwrite")

    assert run.code == 0, run
    entries = json.loads(run.stdout)["entries"]
    assert [(e["target_path"].split("/")[-2:], e["action"]) for e in entries] == [
        (["media", "clip.mp4"], "upload"), (["a", "x.mp4"], "upload"), (["b", "x.mp4"], "conflict")]
    assert "--overwrite uploads it again" in entries[0]["reason"]
    assert entries[2]["reason"] == "the key of x.mp4 in this run"
