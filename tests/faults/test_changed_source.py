"""Sources that change after they were packed, and moves killed midway, through whole runs against the moto server:
the original is never moved unless it is what S3 holds, the record says what happened, a re-run repairs the rest."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import amgmt.local.copying
import amgmt.upload.pipeline
from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.cli.common import summary_text
from amgmt.models import OperationStatus
from amgmt.store import MetadataStore

KILLPOINT = Path(__file__).parent / "killpoint.py"


def object_member(s3_client: Any, bucket: str, key: str, member: str) -> bytes:
    """The bytes of one member of the archive stored at `key`."""
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        extracted = tar.extractfile(member)
        assert extracted is not None
        return extracted.read()


def change_after_packing(monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """Run `change` once, after the archive is built and before it is uploaded (the upload stage starts)."""
    real_upload = amgmt.upload.pipeline.EntryPipeline._upload
    done: list[bool] = []

    async def upload(self: Any) -> None:
        if not done:
            done.append(True)
            change()
        await real_upload(self)

    monkeypatch.setattr(amgmt.upload.pipeline.EntryPipeline, "_upload", upload)


def _append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"appended")


def _in_place(path: Path) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"Z" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def _rerender(path: Path) -> None:
    fresh = path.with_name(".render-tmp")
    fresh.write_bytes(b"R" * path.stat().st_size)
    os.rename(fresh, path)


@pytest.mark.parametrize("change", [_append, _in_place, _rerender])
async def test_a_file_changed_after_packing_is_recorded_changed_and_the_next_run_uploads_it(
        make_settings, local_dir: Path, monkeypatch: pytest.MonkeyPatch, s3_client: Any, bucket: str,
        change: Callable[[Path], None]) -> None:
    clip = local_dir / "clip.mp4"
    clip.write_bytes(b"v" * 20_000)
    settings = make_settings()
    with monkeypatch.context() as patch:
        change_after_packing(patch, lambda: change(clip))
        first = await upload_batch(settings, list_entries(settings)[0])

    [record] = first.records
    assert record.status == OperationStatus.CHANGED, record.to_dict()
    assert record.error_message.startswith("move:") and "changed after it was packed" in record.error_message
    assert "source_identity" in record.metadata
    new_bytes = clip.read_bytes()
    assert new_bytes != b"v" * 20_000
    assert not settings.completed_dir.exists() or [p.name for p in settings.completed_dir.iterdir()] == [".metadata"]
    # The object holds the file as packed.
    assert object_member(s3_client, bucket, record.s3_object_key, "clip.mp4") == b"v" * 20_000

    # The next run uploads the new content. Its key holds the old object, which no original in the completed dir
    # depends on (its only upload ended "changed"): it is replaced without --overwrite.
    second = await upload_batch(settings, list_entries(settings)[0])
    [again] = second.records
    assert again.status == OperationStatus.SUCCESS, again.to_dict()
    assert again.metadata.get("replaced_unconfirmed_object") is True
    assert not clip.exists()
    assert (settings.completed_dir / "clip.mp4").read_bytes() == new_bytes
    assert object_member(s3_client, bucket, again.s3_object_key, "clip.mp4") == new_bytes


@pytest.mark.parametrize("change", ["add", "remove", "modify"])
async def test_a_directory_changed_after_packing_is_recorded_changed(
        make_settings, local_dir: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    shoot = local_dir / "shoot"
    (shoot / "sub").mkdir(parents=True)
    (shoot / "a.mov").write_bytes(b"a" * 1000)
    (shoot / "sub" / "b.mov").write_bytes(b"b" * 1000)
    settings = make_settings()
    actions = {
        "add": lambda: (shoot / "sub" / "c.mov").write_bytes(b"c"),
        "remove": lambda: (shoot / "sub" / "b.mov").unlink(),
        "modify": lambda: _append(shoot / "a.mov"),
    }
    change_after_packing(monkeypatch, actions[change])
    report = await upload_batch(settings, list_entries(settings)[0])

    [record] = report.records
    assert record.status == OperationStatus.CHANGED, record.to_dict()
    assert "changed after it was packed" in record.error_message
    assert shoot.is_dir() and (shoot / "a.mov").exists()
    assert not (settings.completed_dir / "shoot").exists()


async def test_a_source_deleted_mid_upload_says_what_happened(make_settings, local_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    clip = local_dir / "clip.mp4"
    clip.write_bytes(b"v" * 1000)
    settings = make_settings()
    change_after_packing(monkeypatch, clip.unlink)
    report = await upload_batch(settings, list_entries(settings)[0])
    [record] = report.records
    assert record.status == OperationStatus.CHANGED
    assert "deleted from the local dir after it was packed; the object holds it as packed" in record.error_message


@pytest.fixture
def shm_completed(tmp_path: Path) -> Iterator[Path]:
    if not (Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK)
            and os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev):
        pytest.skip("/dev/shm is not a separate writable filesystem here")
    other = Path(tempfile.mkdtemp(prefix="amgmt-test-", dir="/dev/shm"))
    yield other / "completed"
    shutil.rmtree(other, ignore_errors=True)


async def test_cross_fs_a_file_appended_during_the_copy_is_recorded_changed(
        make_settings, local_dir: Path, monkeypatch: pytest.MonkeyPatch, shm_completed: Path) -> None:
    clip = local_dir / "clip.mp4"
    clip.write_bytes(b"v" * 300_000)
    settings = make_settings(completed_dir=str(shm_completed))
    real_copy = amgmt.local.copying._copy_file

    def copy_file(src: str, dst: str | None) -> object:
        result = real_copy(src, dst)
        _append(Path(src))
        return result

    monkeypatch.setattr(amgmt.local.copying, "_copy_file", copy_file)
    report = await upload_batch(settings, list_entries(settings)[0])

    [record] = report.records
    assert record.status == OperationStatus.CHANGED, record.to_dict()
    assert clip.read_bytes() == b"v" * 300_000 + b"appended"
    assert sorted(p.name for p in shm_completed.iterdir()) == [".metadata"]
    assert [p.name for p in local_dir.iterdir()] == ["clip.mp4"]


# --- killed midway (a real CLI process, SIGKILL at one exact call) -------------------------------------------------


def run_killed(env: dict[str, str], kill_at: str, *args: str) -> int:
    return subprocess.run([sys.executable, str(KILLPOINT), *args], env=dict(env, AMGMT_KILL_AT=kill_at),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120).returncode


async def history(settings: Any) -> list[Any]:
    async with MetadataStore(settings.db_path) as store:
        return await store.list_operations(limit=None)


async def test_killed_between_link_and_unlink_the_next_run_finishes_the_move(
        make_settings, local_dir: Path, cli_env: dict[str, str], s3_client: Any, bucket: str) -> None:
    clip = local_dir / "clip.mp4"
    clip.write_bytes(b"v" * 5000)
    settings = make_settings()

    code = run_killed(cli_env, f"os.unlink|{clip}|1|before", "upload", "all", "--no-progress")
    assert code == -9
    assert clip.exists() and (settings.completed_dir / "clip.mp4").samefile(clip)

    report = await upload_batch(settings, list_entries(settings)[0])

    assert not clip.exists()
    assert (settings.completed_dir / "clip.mp4").read_bytes() == b"v" * 5000
    records = await history(settings)
    [first] = records
    assert first.status == OperationStatus.SUCCESS and first.metadata.get("recovered"), first.to_dict()
    assert report.records == []
    assert object_member(s3_client, bucket, first.s3_object_key, "clip.mp4") == b"v" * 5000
    # The summary says what the run repaired (before: "0 entries: nothing done" and nothing else).
    assert f"recovered: the interrupted move of {clip} was finished" in summary_text(report)


@pytest.mark.parametrize("moment", ["os.rename|.amgmt-removing-|1|after", "os.rename|.amgmt-moving-|1|after"])
async def test_cross_fs_killed_after_the_original_was_renamed_away_the_next_run_repairs(
        make_settings, local_dir: Path, cli_env: dict[str, str], shm_completed: Path, s3_client: Any,
        bucket: str, moment: str) -> None:
    shoot = local_dir / "shoot"
    shoot.mkdir()
    (shoot / "a.mov").write_bytes(b"a" * 4000)
    settings = make_settings(completed_dir=str(shm_completed))
    env = dict(cli_env, MGMT_COMPLETED_DIR=str(shm_completed))

    assert run_killed(env, moment, "upload", "all", "--no-progress") == -9
    assert any(p.name.startswith(".amgmt-removing-") for p in local_dir.iterdir())

    await upload_batch(settings, list_entries(settings)[0])  # recovery: finished, or undone
    await upload_batch(settings, list_entries(settings)[0])  # an undone move is done again

    assert [p.name for p in local_dir.iterdir()] == []
    assert (shm_completed / "shoot" / "a.mov").read_bytes() == b"a" * 4000
    assert not any(p.name.startswith(".amgmt-") for p in shm_completed.iterdir())
    records = await history(settings)
    assert OperationStatus.SUCCESS in {r.status for r in records}
    assert all(r.status in (OperationStatus.SUCCESS, OperationStatus.CANCELLED) for r in records)
    key = records[0].s3_object_key
    assert object_member(s3_client, bucket, key, "shoot/a.mov") == b"a" * 4000


async def test_an_unfinished_copy_is_reported_by_cleanup_dry_run_as_cleanup_removes_it(
        make_settings, local_dir: Path, cli_env: dict[str, str], shm_completed: Path) -> None:
    shoot = local_dir / "shoot"
    shoot.mkdir()
    (shoot / "a.mov").write_bytes(b"a" * 4000)
    (shoot / "b.mov").write_bytes(b"b" * 4000)
    settings = make_settings(completed_dir=str(shm_completed))
    env = dict(cli_env, MGMT_COMPLETED_DIR=str(shm_completed))

    assert run_killed(env, "os.open|.amgmt-moving-|1|after", "upload", "all", "--no-progress") == -9
    [moving] = [p for p in shm_completed.iterdir() if p.name.startswith(".amgmt-moving-")]

    def cleanup(*flags: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "amgmt", "cleanup", "--json", *flags], env=env,
                              capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    dry = cleanup("--dry-run")
    assert moving.exists()
    real = cleanup()
    assert dry["move_leftovers"] == real["move_leftovers"]
    assert [m["path"] for m in real["move_leftovers"]] == [str(moving)]
    assert not moving.exists()
    assert sorted(p.name for p in shoot.iterdir()) == ["a.mov", "b.mov"]

    report = await upload_batch(settings, list_entries(settings)[0])
    assert report.counts() == {"success": 1}
    assert not shoot.exists() and (shm_completed / "shoot" / "b.mov").read_bytes() == b"b" * 4000
    assert sorted(r.status for r in await history(settings)) == ["cancelled", "success"]


# -- found by the hostile trial ----------------------------------------------------------------------------------------


async def test_cross_fs_killed_midway_through_removing_the_original_finishes_and_keeps_the_object(
        make_settings, local_dir: Path, cli_env: dict[str, str], shm_completed: Path, s3_client: Any,
        bucket: str) -> None:
    """Killed after the first file of the renamed-away original was deleted: the copy was proven and installed, so
    the move was complete. Before the fix the remnant was put back as a "changed" entry, and the next run uploaded
    it over the verified object of the whole directory."""
    shoot = local_dir / "shoot"
    (shoot / "sub").mkdir(parents=True)
    for name in ("a.mov", "b.mov", "sub/c.wav"):
        (shoot / name).write_bytes(name.encode() * 1000)
    settings = make_settings(completed_dir=str(shm_completed))
    env = dict(cli_env, MGMT_COMPLETED_DIR=str(shm_completed))

    assert run_killed(env, "os.unlink|.amgmt-removing-|1|after", "upload", "all", "--no-progress") == -9
    for _ in range(2):
        await upload_batch(settings, list_entries(settings)[0])

    assert [p.name for p in local_dir.iterdir()] == []
    for name in ("a.mov", "b.mov", "sub/c.wav"):
        assert (shm_completed / "shoot" / name).read_bytes() == name.encode() * 1000
        assert object_member(s3_client, bucket, "shoot.tar.gz", f"shoot/{name}") == name.encode() * 1000
    assert [p.name for p in shm_completed.iterdir() if p.name != ".metadata"] == ["shoot"]
    records = await history(settings)
    assert [r.status for r in records if r.status != OperationStatus.CANCELLED] == [OperationStatus.SUCCESS]


async def test_a_file_replaced_by_rename_during_a_two_step_move_is_kept(make_settings, local_dir: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where renameat2 is missing a file is placed by link() then unlink(): a program saving by rename between the
    two must not lose its new file (before the fix unlink() removed whatever the name held)."""
    clip = local_dir / "clip.mp4"
    clip.write_bytes(b"v1" * 1000)
    settings = make_settings()
    real_link = os.link

    def link_then_resave(src: Any, dst: Any, **kwargs: Any) -> None:
        real_link(src, dst, **kwargs)
        if Path(src) == clip:
            fresh = clip.with_name(".save-tmp")
            fresh.write_bytes(b"v2" * 1000)
            os.rename(fresh, clip)

    monkeypatch.setattr(os, "link", link_then_resave)
    [record] = (await upload_batch(settings, list_entries(settings)[0])).records

    assert clip.read_bytes() == b"v2" * 1000, "the new version is kept in the local dir"
    assert (settings.completed_dir / "clip.mp4").read_bytes() == b"v1" * 1000  # what S3 holds
    assert record.status == OperationStatus.SUCCESS


async def test_an_empty_claim_left_by_a_two_step_directory_move_is_removed(
        make_settings, local_dir: Path, cli_env: dict[str, str]) -> None:
    """Killed between mkdir(claim) and rename(entry onto it): before the fix the empty claim blocked the name for
    ever (the entry went to a stamped duplicate name, or failed every run with MGMT_DUPLICATE_HANDLING=error)."""
    shoot = local_dir / "shoot"
    shoot.mkdir()
    (shoot / "a.mov").write_bytes(b"a" * 1000)
    settings = make_settings(duplicate_handling="error")
    env = dict(cli_env, MGMT_DUPLICATE_HANDLING="error")

    assert run_killed(env, "os.rename|/media/shoot|1|before", "upload", "all", "--no-progress") == -9
    assert (settings.completed_dir / "shoot").is_dir() and not any((settings.completed_dir / "shoot").iterdir())

    report = await upload_batch(settings, list_entries(settings)[0])
    assert report.exit_code == 0, report.to_dict()["failures"]
    assert (settings.completed_dir / "shoot" / "a.mov").read_bytes() == b"a" * 1000
    assert not shoot.exists()


def test_cleanup_dry_run_tells_the_finished_move_the_real_cleanup_records(
        local_dir: Path, cli_env: dict[str, str], tmp_path: Path) -> None:
    """Killed between link() and unlink(): `cleanup --dry-run` must announce the same finished move (and the local
    name it removes) as `cleanup` then does (before the fix the dry run said nothing of either)."""
    (local_dir / "clip.mp4").write_bytes(b"c" * 2000)
    assert run_killed(cli_env, "os.link|/media/clip.mp4|1|after", "upload", "all", "--no-progress") == -9

    def cleanup(*flags: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "amgmt", "cleanup", "--json", *flags], env=cli_env,
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    dry = cleanup("--dry-run")
    assert (local_dir / "clip.mp4").exists(), "a dry run changes nothing"
    real = cleanup()
    assert not (local_dir / "clip.mp4").exists()
    for field_name in ("finished_moves", "move_leftovers", "interrupted_operations", "staging_files"):
        assert dry[field_name] == real[field_name], field_name
    assert dry["finished_moves"] and dry["move_leftovers"]
