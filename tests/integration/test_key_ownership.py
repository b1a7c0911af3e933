"""No verified object is ever overwritten: one key per entry of a run, a reserved key per multipart upload, live
uploads of other runs left alone, and our own bad or unconfirmed objects replaced instead of blocking forever.

The concurrency cases run on moto and on radosgw (`real_s3`): radosgw ignores If-None-Match on
CompleteMultipartUpload, so there only the reservation (a create-if-absent PUT, which it honours) protects the key.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import amgmt.upload.pipeline
import amgmt.upload.verification
import amgmt.s3.bodies
import amgmt.upload.records
import amgmt.upload.sending
import amgmt.s3.client
import amgmt.s3.reservation
from amgmt.local.archive import compress_entry
from amgmt.local.entries import resolve_names
from amgmt.upload.batch import upload_batch
from amgmt.upload.report import BatchReport
from amgmt.models import FileStatus, OperationStatus, UploadRecord
from amgmt.parts import MiB
from amgmt.s3 import METADATA_ARCHIVE_SHA256, METADATA_SOURCE_SHA256, METADATA_SOURCE_SIZE
from amgmt.config import load_settings
from amgmt.store import MetadataStore


KEY = "clip.bin.tar.gz"
METADATA_RESERVATION = "amgmt-reservation"  # amgmt.s3.METADATA_RESERVATION, spelled out as a foreign writer would


def write_random(path: Path, size: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def _settings(target: Any, bucket: str, local: Path, **flags: Any) -> Any:
    base: dict[str, Any] = {"bucket": bucket, "local_dir": str(local), "endpoint_url": target.endpoint_url,
                            "concurrency": 2, "part_size": "5MiB"}
    base.update(flags)
    return load_settings(flags=base, environ={"HOME": str(local.parent)}, require_bucket=True)


def _object_sha256(client: Any, bucket: str, key: str) -> str:
    return hashlib.sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


async def race(
    run_a: Callable[[], Awaitable[BatchReport]],
    run_b: Callable[[], Awaitable[BatchReport]],
    *,
    b_starts: anyio.Event,
    b_done: anyio.Event,
) -> tuple[BatchReport, BatchReport]:
    """Two batches at once: B starts when `b_starts` is set (A reached the moment the test wants), and `b_done` is
    set when B has ended, whatever it did (A may be waiting for it)."""
    reports: dict[str, BatchReport] = {}

    async def first() -> None:
        reports["a"] = await run_a()

    async def second() -> None:
        await b_starts.wait()
        try:
            reports["b"] = await run_b()
        finally:
            b_done.set()

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(second)
    return reports["a"], reports["b"]


def _only(report: BatchReport) -> UploadRecord:
    [record] = report.records
    return record


async def test_two_entries_of_one_run_with_one_key_never_replace_each_other(make_settings, local_dir: Path,
                                                                             s3_client: Any, bucket: str) -> None:
    write_random(local_dir / "a" / "clip.bin", 3000, seed=1)
    write_random(local_dir / "b" / "clip.bin", 4000, seed=2)
    settings = make_settings()
    entries = resolve_names(settings, ["a/clip.bin", "b/clip.bin"])

    report = await upload_batch(settings, entries)

    by_name = {Path(r.target_path).parent.name: r for r in report.records}
    assert by_name["a"].status == OperationStatus.SUCCESS, by_name["a"].error_message
    assert by_name["b"].status == OperationStatus.FAILED
    assert "the key of" in (by_name["b"].error_message or "")
    assert (local_dir / "b" / "clip.bin").exists(), "the entry that did not get the key stays in place"
    head = s3_client.head_object(Bucket=bucket, Key=KEY)
    assert head["Metadata"][METADATA_SOURCE_SHA256] == by_name["a"].checksum_original
    assert head["ContentLength"] == by_name["a"].compressed_size


async def test_two_runs_racing_for_one_key_leave_the_first_verified_object_intact(real_s3, real_client: Any,
                                                                                   real_bucket: str, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """Both runs look (HEAD: absent) before either writes; B then uploads, verifies and moves; A goes on. Before the
    fix A's multipart upload replaced B's verified object (radosgw ignores If-None-Match on complete)."""
    first, second = tmp_path / "first", tmp_path / "second"
    write_random(first / "clip.bin", 11 * MiB, seed=1)
    write_random(second / "clip.bin", 11 * MiB, seed=2)
    a_looked, b_done = anyio.Event(), anyio.Event()
    original = amgmt.upload.sending.ArchiveSender.resumable_upload

    async def paused(self: amgmt.upload.sending.ArchiveSender) -> str | None:  # called after the look (HEAD)
        if Path(self.record.target_path).parent == first:
            a_looked.set()
            await b_done.wait()
        return await original(self)

    monkeypatch.setattr(amgmt.upload.sending.ArchiveSender, "resumable_upload", paused)
    settings_a = _settings(real_s3, real_bucket, first)
    settings_b = _settings(real_s3, real_bucket, second)
    report_a, report_b = await race(
        lambda: upload_batch(settings_a, [first / "clip.bin"]),
        lambda: upload_batch(settings_b, [second / "clip.bin"]),
        b_starts=a_looked,
        b_done=b_done,
    )
    b, a = _only(report_b), _only(report_a)
    assert b.status == OperationStatus.SUCCESS, b.error_message
    assert a.status == OperationStatus.FAILED, a.error_message
    assert "already exists with other content" in (a.error_message or "")
    assert (first / "clip.bin").exists(), "the loser's original stays in place"
    assert (second / "completed" / "clip.bin").exists()
    assert real_client.head_object(Bucket=real_bucket, Key=KEY)["Metadata"][METADATA_SOURCE_SHA256] == (
        b.checksum_original
    )
    assert _object_sha256(real_client, real_bucket, KEY) == b.checksum_compressed
    assert not real_client.list_multipart_uploads(Bucket=real_bucket).get("Uploads"), "the loser left nothing open"


async def test_an_object_written_during_a_multipart_upload_is_not_overwritten(real_s3, real_client: Any,
                                                                              real_bucket: str, tmp_path: Path,
                                                                              monkeypatch) -> None:
    """Another client writes the key while our parts are in flight (after our reservation): the complete is not
    sent, the upload is aborted, the other object stays, our original stays."""
    local = tmp_path / "media"
    write_random(local / "clip.bin", 11 * MiB, seed=3)
    original_part_done = amgmt.upload.records.StoreJournal.part_done
    intruded = False

    async def intruding(self: amgmt.upload.records.StoreJournal, upload_id: str, part: Any) -> None:
        nonlocal intruded
        await original_part_done(self, upload_id, part)
        if not intruded:
            intruded = True
            await anyio.to_thread.run_sync(
                lambda: real_client.put_object(Bucket=real_bucket, Key=KEY, Body=b"somebody else's object")
            )

    monkeypatch.setattr(amgmt.upload.records.StoreJournal, "part_done", intruding)
    report = await upload_batch(_settings(real_s3, real_bucket, local), [local / "clip.bin"])

    record = _only(report)
    assert record.status == OperationStatus.FAILED
    assert "written by another client" in (record.error_message or "")
    assert real_client.get_object(Bucket=real_bucket, Key=KEY)["Body"].read() == b"somebody else's object"
    assert (local / "clip.bin").exists()
    assert not real_client.list_multipart_uploads(Bucket=real_bucket).get("Uploads")


async def test_a_run_never_aborts_the_live_multipart_upload_of_another_run_sharing_the_database(
    make_settings, tmp_path: Path, s3_client: Any, bucket: str, monkeypatch
) -> None:
    """Run A (folder one) is mid-upload, journaled in the shared database; run B (folder two, same key, other
    content) must neither abort A's upload nor overwrite its key. Before the fix B aborted A's upload as a stale
    journaled upload of other content."""
    first, second = tmp_path / "one", tmp_path / "two"
    write_random(first / "clip.bin", 11 * MiB, seed=4)
    write_random(second / "clip.bin", 11 * MiB, seed=5)
    db = tmp_path / "shared" / "operations.db"
    a_started, b_done = anyio.Event(), anyio.Event()
    original_part_done = amgmt.upload.records.StoreJournal.part_done

    async def paused(self: amgmt.upload.records.StoreJournal, upload_id: str, part: Any) -> None:
        await original_part_done(self, upload_id, part)
        if Path(self.record.target_path).parent == first and not a_started.is_set():
            a_started.set()
            await b_done.wait()

    monkeypatch.setattr(amgmt.upload.records.StoreJournal, "part_done", paused)
    settings_a = make_settings(local_dir=str(first), db_path=str(db), part_size="5MiB", concurrency=1)
    settings_b = make_settings(local_dir=str(second), db_path=str(db), part_size="5MiB", concurrency=1)
    report_a, report_b = await race(
        lambda: upload_batch(settings_a, [first / "clip.bin"]),
        lambda: upload_batch(settings_b, [second / "clip.bin"]),
        b_starts=a_started,
        b_done=b_done,
    )
    a, b = _only(report_a), _only(report_b)
    assert a.status == OperationStatus.SUCCESS, a.error_message
    assert b.status == OperationStatus.FAILED
    assert "being uploaded by another amgmt run" in (b.error_message or "")
    assert (second / "clip.bin").exists()
    assert _object_sha256(s3_client, bucket, KEY) == a.checksum_compressed


async def test_a_reused_object_that_fails_verification_is_replaced(make_settings, local_dir: Path, s3_client: Any,
                                                                   bucket: str) -> None:
    """An earlier attempt's object carries this archive's checksum and size but not its bytes (corrupted in transit
    on a server that does not check Content-MD5). Before the fix every re-run reused it and failed verification."""
    source = write_random(local_dir / "clip.bin", 300_000, seed=6)
    archive = compress_entry(str(source), str(local_dir.parent / "staged.tar.gz"), part_size=8 * MiB)
    data = bytearray(Path(archive.archive_path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.unlink(archive.archive_path)
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=bytes(data), Metadata={
        METADATA_ARCHIVE_SHA256: archive.archive_sha256,
        METADATA_SOURCE_SHA256: archive.source_sha256,
        METADATA_SOURCE_SIZE: str(archive.source_size),
    })

    record = _only(await upload_batch(make_settings(), [source]))

    assert record.status == OperationStatus.SUCCESS, record.error_message
    assert "replaced_unverifiable_object" in record.metadata
    assert _object_sha256(s3_client, bucket, KEY) == archive.archive_sha256
    assert (local_dir / "completed" / "clip.bin").exists() and not source.exists()


async def test_an_unconfirmed_object_of_ours_is_replaced_and_overwrite_supersedes_older_records(
    make_settings, local_dir: Path, s3_client: Any, bucket: str
) -> None:
    """First attempt: uploaded and verified, but the move fails (partial). The source is then edited: the re-run
    replaces our own unconfirmed object instead of failing "already exists", and the older record says its
    object was superseded. Then --overwrite over a successful upload marks that one superseded too."""
    source = write_random(local_dir / "clip.bin", 5000, seed=7)
    blocked = local_dir.parent / "blocked"  # a file where the completed dir's parent should be: every move fails
    blocked.write_bytes(b"not a directory")
    metadata = local_dir.parent / "metadata"
    settings = make_settings(completed_dir=str(blocked / "completed"), db_path=str(metadata / "operations.db"),
                             staging_dir=str(metadata / "staging"))
    first = _only(await upload_batch(settings, [source]))
    assert first.status == OperationStatus.PARTIAL, first.error_message

    write_random(source, 6000, seed=8)  # edited after its partial upload
    second = _only(await upload_batch(settings, [source]))
    assert second.status == OperationStatus.PARTIAL, second.error_message  # uploaded; the move still cannot happen
    assert second.metadata.get("replaced_unconfirmed_object") is True
    assert _object_sha256(s3_client, bucket, KEY) == second.checksum_compressed

    async with MetadataStore(settings.db_path) as store:
        older = await store.get_operation(first.operation_id)
    assert isinstance(older, UploadRecord) and older.s3_file_record is not None
    assert older.s3_file_record.status == FileStatus.DELETED
    assert older.s3_file_record.tags["superseded_by_operation_id"] == second.operation_id

    (local_dir.parent / "blocked").unlink()
    write_random(source, 7000, seed=9)
    third = _only(await upload_batch(settings, [source], overwrite=True))
    assert third.status == OperationStatus.SUCCESS, third.error_message
    async with MetadataStore(settings.db_path) as store:
        replaced = await store.get_operation(second.operation_id)
    assert isinstance(replaced, UploadRecord) and replaced.s3_file_record is not None
    assert replaced.s3_file_record.tags["superseded_by_operation_id"] == third.operation_id


async def test_a_foreign_reservation_is_not_overwritten(make_settings, local_dir: Path, s3_client: Any,
                                                        bucket: str) -> None:
    source = write_random(local_dir / "clip.bin", 11 * MiB, seed=10)
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=b"", Metadata={METADATA_RESERVATION: "f" * 32})

    record = _only(await upload_batch(make_settings(part_size="5MiB"), [source]))

    assert record.status == OperationStatus.FAILED
    assert "being uploaded by another amgmt run" in (record.error_message or "")
    assert s3_client.head_object(Bucket=bucket, Key=KEY)["Metadata"] == {METADATA_RESERVATION: "f" * 32}
    assert source.exists()


async def test_a_staging_archive_removed_under_the_upload_fails_that_entry_in_one_line(
    make_settings, make_media, local_dir: Path, monkeypatch
) -> None:
    make_media({"big.bin": 11 * MiB, "small.bin": 2000})
    real_read = amgmt.s3.bodies.read_file_range

    def vanishing(path: str, offset: int, length: int) -> bytearray:
        if "big.bin" in path and offset > 0 and os.path.exists(path):
            os.unlink(path)  # removed from under the upload, after its first part was read
        return real_read(path, offset, length)

    real_open = amgmt.s3.bodies.open_file_range

    def vanishing_before_sendfile(path: str, offset: int, length: int) -> Any:
        if "big.bin" in path and offset > 0 and os.path.exists(path):
            os.unlink(path)  # the same, where the parts go from the file to the socket (sendfile)
        return real_open(path, offset, length)

    monkeypatch.setattr(amgmt.s3.bodies, "read_file_range", vanishing)
    monkeypatch.setattr(amgmt.s3.bodies, "open_file_range", vanishing_before_sendfile)
    report = await upload_batch(make_settings(part_size="5MiB"), [local_dir / "big.bin", local_dir / "small.bin"])

    by_name = {r.target_name: r for r in report.records}
    assert by_name["small.bin"].status == OperationStatus.SUCCESS
    big = by_name["big.bin"]
    assert big.status == OperationStatus.FAILED
    assert "cannot read the staging archive" in (big.error_message or "")
    assert "\n" not in (big.error_message or "") and "internal error" not in (big.error_message or "")
    assert (local_dir / "big.bin").exists()



KILLPOINT = Path(__file__).parents[1] / "faults" / "killpoint.py"


async def test_a_run_killed_holding_a_reservation_is_taken_over_by_the_next_run(make_settings, local_dir: Path,
                                                                                 cli_env: dict[str, str],
                                                                                 s3_client: Any, bucket: str) -> None:
    """SIGKILL right after the key was reserved (before the multipart upload exists): the key holds our empty
    reservation; the next run recognises its own dead attempt, takes the key over and finishes."""
    source = write_random(local_dir / "clip.bin", 11 * MiB, seed=11)
    env = dict(cli_env, MGMT_PART_SIZE="5MiB",
               AMGMT_KILL_AT=f"amgmt.s3.reservation.reserve_key|{KEY}|1|after")
    killed = subprocess.run([sys.executable, str(KILLPOINT), "upload", "all", "--no-progress"], env=env,
                            capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert s3_client.head_object(Bucket=bucket, Key=KEY)["Metadata"].get(METADATA_RESERVATION)
    assert source.exists()

    settings = make_settings(part_size="5MiB")
    record = _only(await upload_batch(settings, [source]))

    assert record.status == OperationStatus.SUCCESS, record.error_message
    assert _object_sha256(s3_client, bucket, KEY) == record.checksum_compressed
    assert METADATA_RESERVATION not in s3_client.head_object(Bucket=bucket, Key=KEY)["Metadata"]
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")



async def test_a_read_back_reads_only_the_object_it_verifies(make_settings, local_dir: Path, s3_client: Any,
                                                             bucket: str, monkeypatch) -> None:
    """When the ETag cannot be predicted, the object is read back: an object written at the key between that
    HEAD and the read (If-Match) fails the verification instead of being hashed in its place."""
    source = write_random(local_dir / "clip.bin", 4000, seed=12)
    monkeypatch.setattr(amgmt.upload.verification, "expected_etag", lambda parts, multipart: "unpredictable")
    real_read_back = amgmt.s3.client.S3Bucket.object_sha256

    async def intruding(self: amgmt.s3.client.S3Bucket, key: str, **kwargs: Any) -> str:
        await anyio.to_thread.run_sync(
            lambda: s3_client.put_object(Bucket=bucket, Key=KEY, Body=b"written after the HEAD of verify")
        )
        return await real_read_back(self, key, **kwargs)

    monkeypatch.setattr(amgmt.s3.client.S3Bucket, "object_sha256", intruding)
    record = _only(await upload_batch(make_settings(), [source]))

    assert record.status == OperationStatus.FAILED, record.error_message
    assert "read back" in (record.error_message or "")
    assert source.exists() and not (local_dir / "completed" / "clip.bin").exists()


async def test_a_run_stopped_while_its_reservation_is_being_made_leaves_no_reservation(
    make_settings, local_dir: Path, s3_client: Any, bucket: str, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The run is stopped (another entry's run-wide error, a Ctrl-C) while the reserving PUT is under way: the
    server has made the empty object, the answer has not come back. The reservation is still removed (seen on
    radosgw: a storage class it refuses stopped the run and left the reservation of the multipart entry)."""
    source = write_random(local_dir / "clip.bin", 11 * MiB, seed=12)
    real = amgmt.s3.reservation.reserve_key
    made = anyio.Event()

    async def reserve_then_wait(*args: Any, **kwargs: Any) -> None:
        await real(*args, **kwargs)  # the object exists on the server from here
        made.set()
        await anyio.sleep_forever()  # the answer "has not come back" when the stop arrives

    monkeypatch.setattr(amgmt.s3.reservation, "reserve_key", reserve_then_wait)
    stop = anyio.Event()

    async def stop_once_made() -> None:
        await made.wait()
        stop.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_once_made)
        report = await upload_batch(make_settings(part_size="5MiB"), [source], stop=stop)
    assert report.interrupted, report.to_dict()
    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket)
    assert source.exists()
