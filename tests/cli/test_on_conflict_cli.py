"""--on-conflict fail|rename|overwrite (MGMT_ON_CONFLICT): a second card's GX010234.MP4 meets the first one's verified
object at its key. Real files, the moto server, the CLI in a subprocess."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

NAME = "GX010234.MP4"
KEY = "GX010234.MP4.tar.gz"


def _member(s3_client: Any, bucket: str, key: str) -> bytes:
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        member = tar.extractfile(NAME)
        assert member is not None
        return member.read()


def _card(local_dir: Path, content: bytes) -> None:
    (local_dir / NAME).write_bytes(content)


def _first_card_uploaded(amgmt: Any, local_dir: Path) -> None:
    _card(local_dir, b"card one " * 1000)
    run = amgmt("upload", NAME)
    assert run.code == 0, run


def test_default_fails_and_names_the_two_ways_out(amgmt, local_dir: Path, s3_client, bucket, keys) -> None:
    _first_card_uploaded(amgmt, local_dir)
    _card(local_dir, b"card two " * 1000)

    run = amgmt("upload", NAME)

    assert run.code == 1, run
    assert "already exists with other content; use --on-conflict rename" in run.stdout + run.stderr, run
    assert (local_dir / NAME).read_bytes() == b"card two " * 1000, "the original stays"
    assert keys() == [KEY]
    assert _member(s3_client, bucket, KEY) == b"card one " * 1000


def test_rename_uploads_under_a_derived_key_that_download_and_status_find(amgmt, local_dir: Path, tmp_path: Path,
                                                                          s3_client, bucket, keys) -> None:
    _first_card_uploaded(amgmt, local_dir)
    _card(local_dir, b"card two " * 1000)

    run = amgmt("upload", NAME, "--on-conflict", "rename", "--json")

    assert run.code == 0, run
    [op] = json.loads(run.stdout)["operations"]
    assert op["status"] == "success" and op["s3_object_key"] == "GX010234-2.MP4.tar.gz"
    assert op["metadata"]["renamed_from"] == KEY
    assert keys() == ["GX010234-2.MP4.tar.gz", KEY]
    assert _member(s3_client, bucket, KEY) == b"card one " * 1000, "the first card's object is untouched"
    assert _member(s3_client, bucket, "GX010234-2.MP4.tar.gz") == b"card two " * 1000
    assert not (local_dir / NAME).exists(), "verified, so moved"

    # A third card, set in the environment: -2 holds the second card, so -3.
    _card(local_dir, b"card three " * 1000)
    run = amgmt("upload", NAME, "--json", env={"MGMT_ON_CONFLICT": "rename"})
    assert run.code == 0, run
    assert json.loads(run.stdout)["operations"][0]["s3_object_key"] == "GX010234-3.MP4.tar.gz"

    # The history finds the renamed objects: by key, and by name (the newest).
    run = amgmt("status", "GX010234-2.MP4.tar.gz", "--json")
    assert run.code == 0, run
    assert json.loads(run.stdout)["name"] == NAME
    run = amgmt("download", NAME, "--to", "out", "--extract")
    assert run.code == 0, run
    assert (tmp_path / "out" / NAME).read_bytes() == b"card three " * 1000


def test_rename_gives_two_cards_of_one_run_their_own_keys(amgmt, local_dir: Path, s3_client, bucket, keys) -> None:
    for card, content in (("card1", b"one " * 500), ("card2", b"two " * 500)):
        (local_dir / card).mkdir()
        (local_dir / card / NAME).write_bytes(content)

    run = amgmt("upload", f"card1/{NAME}", f"card2/{NAME}", "--on-conflict", "rename", "--json")

    assert run.code == 0, run
    by_card = {Path(op["target_path"]).parent.name: op["s3_object_key"] for op in json.loads(run.stdout)["operations"]}
    assert by_card == {"card1": KEY, "card2": "GX010234-2.MP4.tar.gz"}
    assert _member(s3_client, bucket, KEY) == b"one " * 500
    assert _member(s3_client, bucket, "GX010234-2.MP4.tar.gz") == b"two " * 500


def test_overwrite_replaces_and_marks_the_older_record_superseded(amgmt, local_dir: Path, s3_client, bucket,
                                                                   keys) -> None:
    _first_card_uploaded(amgmt, local_dir)
    first = json.loads(amgmt("history", "--json").stdout)
    _card(local_dir, b"card two " * 1000)

    run = amgmt("upload", NAME, "--on-conflict", "overwrite", "--json")

    assert run.code == 0, run
    [op] = json.loads(run.stdout)["operations"]
    assert op["status"] == "success" and op["s3_object_key"] == KEY
    assert op["metadata"]["replaced_conflicting_object"] is True
    assert op["verification_method"], "the new object is verified before its original moves"
    assert keys() == [KEY]
    assert _member(s3_client, bucket, KEY) == b"card two " * 1000
    run = amgmt("show", _first_id(first), "--json")
    assert run.code == 0, run
    s3_file = json.loads(run.stdout)["s3_file_record"]
    assert s3_file["status"] == "deleted"
    assert s3_file["tags"]["superseded_by_operation_id"] == op["operation_id"]


def test_identical_content_is_still_skipped_under_overwrite(amgmt, local_dir: Path) -> None:
    _first_card_uploaded(amgmt, local_dir)
    _card(local_dir, b"card one " * 1000)

    run = amgmt("upload", NAME, "--on-conflict", "overwrite", "--json")

    assert run.code == 0, run
    assert json.loads(run.stdout)["operations"][0]["status"] == "skipped"


def test_a_bad_mode_is_one_line_and_exit_2(amgmt, local_dir: Path) -> None:
    _card(local_dir, b"x")
    for args, env in ((("--on-conflict", "merge"), {}), ((), {"MGMT_ON_CONFLICT": "keep"})):
        run = amgmt("upload", NAME, *args, env=env)
        assert run.code == 2, run
        assert run.stderr.startswith("amgmt: error: MGMT_ON_CONFLICT=") and run.stderr.count("\n") == 1, run
        assert "expected one of fail, rename, overwrite" in run.stderr


def _first_id(history: Any) -> str:
    rows = history if isinstance(history, list) else history.get("operations", [])
    return str(rows[0]["operation_id"])


def test_retry_and_watch_take_the_mode_too(amgmt, local_dir: Path, s3_client, bucket, keys) -> None:
    _first_card_uploaded(amgmt, local_dir)
    _card(local_dir, b"card two " * 1000)
    assert amgmt("upload", NAME).code == 1

    retried = amgmt("retry", "--failed", "--on-conflict", "rename", "--json")

    assert retried.code == 0, retried
    assert json.loads(retried.stdout)["operations"][0]["s3_object_key"] == "GX010234-2.MP4.tar.gz"
    assert _member(s3_client, bucket, "GX010234-2.MP4.tar.gz") == b"card two " * 1000

    _card(local_dir, b"card three " * 1000)
    watched = amgmt("watch", "--once", "--settle", "0.1", "--on-conflict", "rename", "--json", timeout=60)

    assert watched.code == 0, watched
    assert "GX010234-3.MP4.tar.gz" in keys(), watched
    assert _member(s3_client, bucket, "GX010234-3.MP4.tar.gz") == b"card three " * 1000
