"""`amgmt download`, `amgmt status` and `amgmt delete` as a user runs them (a subprocess, stdin not a terminal):
output, --json, exit codes, and what they leave in the bucket, on disk and in the records."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from clikit import SECRET, snapshot


def moto_restores(endpoint_url: str, times: int | None) -> None:
    """moto moves a restore none -> in progress -> restored, one step once `times` requests reached the object
    (None: its default, at once)."""
    path, body = ("unset-transition", {"model_name": "s3::keyrestore"}) if times is None else (
        "set-transition", {"model_name": "s3::keyrestore", "transition": {"progression": "manual", "times": times}})
    request = urllib.request.Request(f"{endpoint_url}/moto-api/state-manager/{path}", method="POST",
                                     data=json.dumps(body).encode())
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except OSError as exc:
        pytest.skip(f"not a moto server with a state manager: {exc}")


def test_download_status_and_json(amgmt, make_media, s3_client, bucket,  # type: ignore[no-untyped-def]
                                  tmp_path: Path) -> None:
    make_media({"clip.mp4": 300_000, "album/a.jpg": b"jpeg bytes", "album/raw/b.cr2": 5000})
    assert amgmt("upload", "all").code == 0

    run = amgmt("download", "clip.mp4", "--to", "out", "--json")
    assert run.code == 0, run
    got = json.loads(run.stdout)
    assert got["state"] == "downloaded" and got["key"] == "clip.mp4.tar.gz" and got["found_by"] == "name"
    assert got["verified_by"] == ["size", "etag", "sha256"]
    assert got["local_path"] == str(tmp_path / "out/clip.mp4.tar.gz")
    body = s3_client.get_object(Bucket=bucket, Key="clip.mp4.tar.gz")["Body"].read()
    assert (tmp_path / "out/clip.mp4.tar.gz").read_bytes() == body and got["size"] == len(body)

    run = amgmt("download", "album", "--to", "out", "--extract")
    assert run.code == 0, run
    assert run.stdout.startswith(f"extracted s3://{bucket}/album.tar.gz (")
    assert "album (2 files, 2 directories" in run.stdout
    assert "verified: size, etag, sha256" in run.stdout
    assert (tmp_path / "out/album/raw/b.cr2").stat().st_size == 5000 and not (tmp_path / "out/album.tar.gz").exists()

    run = amgmt("status", "clip.mp4")
    assert run.code == 0, run
    lines = run.stdout.splitlines()
    assert lines[0] == f"s3://{bucket}/clip.mp4.tar.gz"
    assert "the entry name 'clip.mp4'" in lines[1] and any("STANDARD" in line for line in lines)
    assert any(line.split()[:3] == ["storage", "class", "STANDARD"] for line in lines)
    table = lines[lines.index("operations (2, newest first):") + 1 :]
    assert table[0].split() == ["ID", "TYPE", "STATUS", "STARTED", "TOOK", "DETAIL"]
    assert [row.split()[1:3] for row in table[1:]] == [["download", "success"], ["upload", "success"]]
    assert table[1].endswith("out/clip.mp4.tar.gz")  # long paths are cut in the middle to fit

    run = amgmt("status", "clip.mp4.tar.gz", "--json")
    assert run.code == 0, run
    status = json.loads(run.stdout)
    assert status["found_by"] == "key" and status["object"]["size"] == len(body)
    assert status["object"]["storage_class"] == "STANDARD" and status["object"]["needs_restore"] is False
    assert "amgmt-archive-sha256" in status["object"]["metadata"]
    assert [op["operation_type"] for op in status["operations"]] == ["download", "upload"]
    assert status["operations"][0]["metadata"]["local_sha256"] == got["sha256"]


def test_download_refusals_and_unknown_names(amgmt, make_media, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_media({"clip.mp4": 1000})
    assert amgmt("upload", "all").code == 0
    (tmp_path / "out").mkdir()
    (tmp_path / "out/clip.mp4.tar.gz").write_bytes(b"mine")
    before = snapshot(tmp_path / "out")

    run = amgmt("download", "clip.mp4", "--to", "out")
    assert run.code == 2 and run.stderr == "amgmt: error: out/clip.mp4.tar.gz exists; use --force to replace it\n", run
    assert snapshot(tmp_path / "out") == before and (tmp_path / "out/clip.mp4.tar.gz").read_bytes() == b"mine"
    assert amgmt("download", "clip.mp4", "--to", "out", "--force").code == 0
    assert (tmp_path / "out/clip.mp4.tar.gz").read_bytes() != b"mine"

    run = amgmt("download", "nothing.mov")
    assert run.code == 2 and "nothing named 'nothing.mov'" in run.stderr and run.stdout == "", run
    run = amgmt("status", "nothing.mov", "--json")
    assert run.code == 2 and run.stdout == "", run


def test_delete_asks_then_keeps_the_records(amgmt, make_media, keys, bucket) -> None:  # type: ignore[no-untyped-def]
    make_media({"clip.mp4": 1000, "other.mp4": 500})
    assert amgmt("upload", "all").code == 0

    run = amgmt("delete", "clip.mp4")  # stdin is not a terminal and there is no --yes
    assert run.code == 2, run
    assert run.stdout.startswith(f"will delete s3://{bucket}/clip.mp4.tar.gz\n") and "upload " in run.stdout
    assert "without confirmation: stdin is not a terminal; pass --yes" in run.stderr
    assert keys() == ["clip.mp4.tar.gz", "other.mp4.tar.gz"]

    run = amgmt("delete", "clip.mp4", "--yes", "--json")
    assert run.code == 0, run
    done = json.loads(run.stdout)  # the plan went to stderr: stdout is only the JSON
    assert done["deleted"] is True and done["key"] == "clip.mp4.tar.gz" and done["upload_records_marked_deleted"] == 1
    assert keys() == ["other.mp4.tar.gz"]

    status = json.loads(amgmt("status", "clip.mp4", "--json").stdout)
    assert status["object"] is None
    delete, upload = status["operations"]
    assert delete["operation_type"] == "delete" and delete["operation_id"] == done["operation_id"]
    assert upload["status"] == "success" and upload["s3_file_record"]["status"] == "deleted"

    run = amgmt("delete", "clip.mp4", "--yes")
    assert run.code == 2 and "clip.mp4.tar.gz does not exist (amgmt deleted it at" in run.stderr, run
    run = amgmt("delete", "never-uploaded.tar.gz", "--yes")
    assert run.code == 2 and "nothing named 'never-uploaded.tar.gz'" in run.stderr, run
    assert keys() == ["other.mp4.tar.gz"]


def test_glacier_download_asks_for_a_restore_then_waits(amgmt, make_media,  # type: ignore[no-untyped-def]
                                                        tmp_path: Path) -> None:
    make_media({"cold.wav": 2000})
    assert amgmt("upload", "all", "--storage-class", "GLACIER").code == 0

    run = amgmt("download", "cold.wav", "--to", "out", "--tier", "Expedited", "--days", "1")
    assert run.code == 75, run
    assert ", GLACIER): restore requested (Expedited tier, readable for 1 day once done; usually 1-5 minutes)" \
        in run.stdout
    assert "nothing downloaded yet" in run.stdout and not (tmp_path / "out").exists()

    # moto completes restores at once: the status shows the copy, and --wait downloads without waiting
    status = json.loads(amgmt("status", "cold.wav", "--json").stdout)
    assert status["object"]["restore"]["ongoing"] is False and status["object"]["needs_restore"] is False
    assert [op["operation_type"] for op in status["operations"]] == ["restore", "upload"]
    run = amgmt("download", "cold.wav", "--to", "out", "--wait", "--poll-interval", "0.1", "--json")
    assert run.code == 0, run
    got = json.loads(run.stdout)
    assert got["state"] == "downloaded" and got["storage_class"] == "GLACIER" and got["restore_request"] is None
    assert (tmp_path / "out/cold.wav.tar.gz").is_file()


def test_ctrl_c_while_waiting_for_a_restore(amgmt, make_media, cli_env, s3_server,  # type: ignore[no-untyped-def]
                                            tmp_path: Path) -> None:
    make_media({"cold.wav": 2000})
    assert amgmt("upload", "all", "--storage-class", "GLACIER").code == 0
    moto_restores(s3_server.endpoint_url, 1)
    try:
        run = amgmt("download", "cold.wav")
        assert run.code == 75 and "(Standard tier, readable for 3 days once done; usually 3-5 hours)" in run.stdout
        assert json.loads(amgmt("status", "cold.wav", "--json").stdout)["object"]["restore"]["ongoing"] is True
        moto_restores(s3_server.endpoint_url, 10**9)  # and there it stays
        env = dict(cli_env, AWS_SECRET_ACCESS_KEY=SECRET, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
        proc = subprocess.Popen([sys.executable, "-m", "amgmt", "download", "cold.wav", "--to", "out", "--wait",
                                 "--poll-interval", "0.1"], env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith("restore of cold.wav (GLACIER) in progress: waited "), first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        moto_restores(s3_server.endpoint_url, None)
    assert proc.returncode == 130, (out, err)
    assert err.splitlines()[-1] == "amgmt: interrupted: nothing was kept (a restore already asked for goes on in S3)"
    assert out == "" and not (tmp_path / "out").exists() and "Traceback" not in err
