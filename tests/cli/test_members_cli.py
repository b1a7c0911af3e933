"""Files inside directory archives, as a user reaches them: `search` finds a member and names its archive, and
`download NAME --member PATH` writes just that member (or a member directory's subtree), streaming the archive from
S3 without storing it, refusing unsafe paths and existing files."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

from clikit import snapshot


def _card(make_media) -> Path:  # type: ignore[no-untyped-def]
    return make_media({
        "trip/DCIM/100GOPRO/IMG_1009.JPG": 3000,
        "trip/DCIM/100GOPRO/IMG_1010.JPG": 4000,
        "trip/DCIM/101GOPRO/GX010234.MP4": 6000,
        "trip/notes.txt": b"day one\n",
        "IMG_1010 copy.jpg": 700,
    })


def test_search_finds_members_and_names_their_archive(amgmt, make_media, local_dir: Path,  # type: ignore[no-untyped-def]
                                                      bucket: str) -> None:
    _card(make_media)
    assert amgmt("upload", "all").code == 0, "upload"

    run = amgmt("search", "img_1010", "--json")
    assert run.code == 0, run
    got = json.loads(run.stdout)
    assert [o["key"] for o in got["objects"]] == ["IMG_1010 copy.jpg.tar.gz"]  # the existing match stays
    [member] = got["members"]
    assert member["path"] == "trip/DCIM/100GOPRO/IMG_1010.JPG" and member["kind"] == "file"
    assert member["size"] == 4000 and member["key"] == "trip.tar.gz" and member["entry"] == "trip"
    assert member["modified_at"].endswith("Z") and member["uploaded_at"].endswith("Z")

    run = amgmt("search", "GOPRO")
    assert run.code == 0, run
    block = run.stdout.split("inside the archives: ")[1]
    assert block.startswith("5 members matching 'GOPRO', 12.7 KiB")  # 2 directories and 3 files
    assert "trip/DCIM/101GOPRO/GX010234.MP4" in block and "trip.tar.gz" in block

    # `search local` looks at the local dir only; a match nowhere is an empty block, not an error
    assert "members" not in json.loads(amgmt("search", "IMG", "local", "--json").stdout)
    assert "inside the archives: 0 members matching 'nothing-like-it'" in amgmt("search", "nothing-like-it").stdout


def test_download_member_writes_just_that_member(amgmt, make_media, local_dir: Path,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path) -> None:
    _card(make_media)
    original = (local_dir / "trip/DCIM/100GOPRO/IMG_1010.JPG").read_bytes()
    assert amgmt("upload", "all").code == 0

    # the path as search shows it, or without the entry's name in front
    for n, path in enumerate(["trip/DCIM/100GOPRO/IMG_1010.JPG", "DCIM/100GOPRO/IMG_1010.JPG"]):
        run = amgmt("download", "trip", "--member", path, "--to", f"out{n}", "--json")
        assert run.code == 0, run
        got = json.loads(run.stdout)
        assert snapshot(tmp_path / f"out{n}") == {"IMG_1010.JPG": 4000}, "only the member, no archive"
        assert (tmp_path / f"out{n}/IMG_1010.JPG").read_bytes() == original
        assert got["member"]["path"] == "trip/DCIM/100GOPRO/IMG_1010.JPG"
        # a small archive is read to its end anyway (one range): its SHA-256 is checked too
        assert got["verified_by"] == ["size", "member list", "archive sha256"]
        assert got["member"]["member_list_recorded"]
        assert got["sha256"] and got["local_path"] == str(tmp_path / f"out{n}/IMG_1010.JPG")
    mtime = (local_dir / "completed/trip/DCIM/100GOPRO/IMG_1010.JPG").stat().st_mtime
    assert (tmp_path / "out0/IMG_1010.JPG").stat().st_mtime == int(mtime)

    run = amgmt("download", "trip", "--member", "trip/DCIM/100GOPRO/IMG_1010.JPG", "--to", "out0")
    assert run.code == 2 and "1 path already exists" in run.stderr and "--force" in run.stderr, run
    run = amgmt("download", "trip", "--member", "trip/DCIM/100GOPRO/IMG_1010.JPG", "--to", "out0", "--force")
    assert run.code == 0, run
    assert "1 replaced" in run.stdout

    # a bare file name: the one member of that name; a name several members have is refused, naming them
    run = amgmt("download", "trip", "--member", "GX010234.MP4", "--to", "bare")
    assert run.code == 0 and snapshot(tmp_path / "bare") == {"GX010234.MP4": 6000}, run
    make_media({"trip2/a/clip.mp4": 10, "trip2/b/clip.mp4": 20})
    assert amgmt("upload", "trip2").code == 0
    run = amgmt("download", "trip2", "--member", "clip.mp4", "--to", "bare")
    assert run.code == 2 and "several members" in run.stderr and "trip2/a/clip.mp4, trip2/b/clip.mp4" in run.stderr

    # a member directory: its whole subtree, under its own name
    run = amgmt("download", "trip", "--member", "trip/DCIM", "--to", "tree")
    assert run.code == 0, run
    assert snapshot(tmp_path / "tree") == {
        "DCIM": None, "DCIM/100GOPRO": None, "DCIM/100GOPRO/IMG_1009.JPG": 3000,
        "DCIM/100GOPRO/IMG_1010.JPG": 4000, "DCIM/101GOPRO": None, "DCIM/101GOPRO/GX010234.MP4": 6000,
    }
    assert "(3 files, 3 directories, 12.7 KiB)" in run.stdout

    # each is recorded as a download of the member
    db = sqlite3.connect(local_dir / "completed/.metadata/operations.db")
    rows = db.execute("SELECT status, json_extract(metadata, '$.member') FROM operations "
                      "WHERE operation_type = 'download' ORDER BY started_at").fetchall()
    assert rows[-1] == ("success", "trip/DCIM")


def test_download_member_stops_reading_after_the_member(amgmt, make_media, local_dir: Path,  # type: ignore[no-untyped-def]
                                                        tmp_path: Path) -> None:
    """The first member of a 12 MiB archive read in 5 MiB ranges: one or two ranges are read, not the archive."""
    make_media({"big/a-first.bin": 100_000, "big/z-last.bin": 12 * 1024 * 1024})
    assert amgmt("upload", "all", env={"MGMT_PART_SIZE": "5MiB"}).code == 0

    run = amgmt("download", "big", "--member", "a-first.bin", "--to", "out", "--json", env={"MGMT_PART_SIZE": "5MiB"})
    assert run.code == 0, run
    member = json.loads(run.stdout)["member"]
    assert member["archive_size"] > 12 * 1024 * 1024
    assert member["archive_bytes_read"] <= 10 * 1024 * 1024, member
    assert json.loads(run.stdout)["verified_by"] == ["size", "member list"]  # not the archive's checksum
    assert "not verified: the archive's checksum" in amgmt(
        "download", "big", "--member", "a-first.bin", "--to", "again", env={"MGMT_PART_SIZE": "5MiB"}).stdout
    assert (tmp_path / "out/a-first.bin").read_bytes() == (local_dir / "completed/big/a-first.bin").read_bytes()


def test_download_member_refuses_bad_paths(amgmt, make_media, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _card(make_media)
    assert amgmt("upload", "all").code == 0
    for path in ("../etc/passwd", "trip/../../x", "", "/"):
        run = amgmt("download", "trip", "--member", path, "--to", "out")
        assert run.code == 2 and "--member" in run.stderr and "Traceback" not in run.stderr, run
    run = amgmt("download", "trip", "--member", "DCIM/IMG_9999.JPG", "--to", "out")
    assert run.code == 2 and "holds no member 'DCIM/IMG_9999.JPG'" in run.stderr, run
    run = amgmt("download", "trip", "--member", "notes.txt", "--extract", "--to", "out")
    assert run.code == 2 and "cannot be combined with --extract" in run.stderr, run
    assert not (tmp_path / "out").exists()


def _hostile_archive() -> bytes:
    """A tar.gz of a directory `evil` whose members try to leave the destination."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, kind, extra in (("evil", tarfile.DIRTYPE, ""), ("evil/ok.txt", tarfile.REGTYPE, ""),
                                  ("evil/link", tarfile.SYMTYPE, "/etc"), ("evil/link/passwd", tarfile.REGTYPE, "")):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = extra
            data = b"x" * 10 if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def test_download_member_refuses_unsafe_members(amgmt, s3_client, bucket: str,  # type: ignore[no-untyped-def]
                                                tmp_path: Path) -> None:
    """An archive amgmt did not make (no record, no member list): the same checks as --extract, member by member."""
    s3_client.put_object(Bucket=bucket, Key="evil.tar.gz", Body=_hostile_archive())
    run = amgmt("download", "evil.tar.gz", "--member", "evil", "--to", "out")
    assert run.code == 1 and "refusing to write 'evil/link'" in run.stderr and "a link to an absolute path" in run.stderr
    assert not os.path.lexists(tmp_path / "out/evil/link") and not os.path.lexists("/etc/passwd.partial")

    run = amgmt("download", "evil.tar.gz", "--member", "evil/ok.txt", "--to", "ok", "--json")
    assert run.code == 0, run
    got = json.loads(run.stdout)
    # no member list: the whole archive was read (it had to be), so its checksum... is unknown without a record
    assert got["member"]["member_list_recorded"] is False and got["verified_by"] == ["size"]
    assert (tmp_path / "ok/ok.txt").read_bytes() == b"x" * 10


def test_a_broken_archive_leaves_no_partial_member(amgmt, s3_client, bucket: str,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path) -> None:
    """Not a gzip at all, or cut off in the middle of the member: exit 1, one line, nothing left in the destination."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("cut/big.bin")
        data = os.urandom(3 * 1024 * 1024)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    whole = out.getvalue()
    s3_client.put_object(Bucket=bucket, Key="cut.tar.gz", Body=whole[: len(whole) // 2])
    s3_client.put_object(Bucket=bucket, Key="junk.tar.gz", Body=b"this is not gzip at all" * 100)

    for key in ("cut.tar.gz", "junk.tar.gz"):
        run = amgmt("download", key, "--member", "cut/big.bin", "--to", "out")
        assert run.code == 1 and "not a readable tar.gz" in run.stderr and "Traceback" not in run.stderr, run
        assert list((tmp_path / "out").iterdir()) == []


def test_a_ctrl_c_while_a_member_streams_leaves_nothing_and_is_recorded(amgmt, make_media, cli_env,  # type: ignore[no-untyped-def]
                                                                        local_dir: Path, tmp_path: Path) -> None:
    """SIGINT at the exact moment the third range of the archive is asked for (the member half written): exit 130,
    no member and no .partial in the destination, the download recorded as cancelled."""
    make_media({"big/a.bin": 1000, "big/z-last.bin": 14 * 1024 * 1024})
    assert amgmt("upload", "all", env={"MGMT_PART_SIZE": "5MiB"}).code == 0
    killpoint = Path(__file__).parents[1] / "faults" / "killpoint.py"
    env = dict(cli_env, MGMT_PART_SIZE="5MiB", MGMT_PARTS_IN_FLIGHT="1",
               XDG_STATE_HOME=str(tmp_path.with_name(tmp_path.name + "-state")),
               AMGMT_KILL_AT="amgmt.s3.client.S3Bucket.get_range|big.tar.gz|3|before|SIGINT")
    done = subprocess.run([sys.executable, str(killpoint), "download", "big", "--member", "z-last.bin", "--to",
                           "out"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    assert done.returncode == 130, done
    assert "Traceback" not in done.stderr
    assert list((tmp_path / "out").iterdir()) == []
    db = sqlite3.connect(local_dir / "completed/.metadata/operations.db")
    assert db.execute("SELECT status FROM operations WHERE operation_type = 'download'").fetchall() == [("cancelled",)]
