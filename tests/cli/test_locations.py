"""Where the staging dir, the completed dir and the database may be, as a user sets them: a dangerous overlap with
the local dir is refused before anything is done (exit 2, one line naming the setting), and a staging dir shared
with other files loses none of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from amgmt.naming import staging_name
from clikit import snapshot

UNKNOWN_ID = "44444444-4444-4444-8444-444444444444"


def _refused(run, key: str) -> None:  # type: ignore[no-untyped-def]
    assert run.code == 2, run
    assert run.stdout == "" and "Traceback" not in run.stderr, run
    [line] = run.stderr.splitlines()
    assert line.startswith(f"amgmt: error: {key}=") and "must not" in line, run


@pytest.mark.parametrize(
    ("key", "where"),
    [
        ("MGMT_STAGING_DIR", "{local}"),
        ("MGMT_STAGING_DIR", "{local}/completed"),
        ("MGMT_STAGING_DIR", "{tmp}"),
        ("MGMT_STAGING_DIR", "{local}/album/staging"),
        ("MGMT_DB_PATH", "{local}/operations.db"),
        ("MGMT_DB_PATH", "{local}/album/operations.db"),
        ("MGMT_COMPLETED_DIR", "{tmp}"),
    ],
    ids=["staging-is-local", "staging-is-completed", "staging-holds-local", "staging-in-an-entry", "db-in-local",
         "db-in-an-entry", "completed-holds-local"],
)
@pytest.mark.parametrize("command", [("upload", "all"), ("cleanup",), ("retry", "--failed")])
def test_dangerous_locations_are_refused_before_anything_is_done(
    amgmt, make_media, local_dir: Path, tmp_path: Path, keys, key: str, where: str, command: tuple[str, ...]
) -> None:
    make_media({"a.mp4": 3000, "album/b.jpg": b"photo"})
    (local_dir / "completed").mkdir()
    (local_dir / "completed" / "done-before.mp4").write_bytes(b"moved by an earlier run")
    (local_dir / staging_name(UNKNOWN_ID, "a.mp4")).write_bytes(b"an original named like an archive")
    before = snapshot(tmp_path)

    run = amgmt(*command, env={key: where.format(local=local_dir, tmp=tmp_path)})

    _refused(run, key)
    assert snapshot(tmp_path) == before
    assert keys() == []


def test_the_default_locations_still_work(amgmt, make_media, local_dir: Path, keys) -> None:
    make_media({"a.mp4": 3000})
    run = amgmt("upload", "all")
    assert run.code == 0, run
    assert keys() == ["a.mp4.tar.gz"]
    assert (local_dir / "completed" / "a.mp4").exists()
    assert (local_dir / "completed" / ".metadata" / "operations.db").exists()


def test_a_staging_dir_shared_with_other_files_keeps_them(amgmt, make_media, local_dir: Path, tmp_path: Path,
                                                          keys) -> None:
    make_media({"a.mp4": 3000, "b.mp4": 4000})
    shared = tmp_path / "shared"
    shared.mkdir()
    others = {"notes.txt": b"not amgmt's", staging_name(UNKNOWN_ID, "a.mp4"): b"named like ours, no record"}
    for name, data in others.items():
        (shared / name).write_bytes(data)
    env = {"MGMT_STAGING_DIR": str(shared)}

    upload = amgmt("upload", "all", env=env)
    cleanup = amgmt("cleanup", env=env)

    assert upload.code == 0 and cleanup.code == 0, (upload, cleanup)
    assert "removed 0 staging files" in cleanup.stdout, cleanup
    assert keys() == ["a.mp4.tar.gz", "b.mp4.tar.gz"]
    assert {p.name: p.read_bytes() for p in shared.iterdir()} == others
