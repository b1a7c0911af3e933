"""The watch library in the test's own event loop, where a test can switch the OS events off, inject S3 faults and
shorten the backoff: the rescan finds what events missed, --poll finds new entries without events, a failing entry
is retried with backoff and then left for `amgmt retry`, the heartbeat is written."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from amgmt.config import Settings
from amgmt.errors import ExitCode
from amgmt.parts import MiB
from amgmt.upload.pipeline import EntryPipeline
from amgmt.upload.watch import Watch, WatchOptions
from faultkit import S3Faults

Events = list[dict[str, Any]]


async def run_watch(
    settings: Settings, options: WatchOptions, scenario: Callable[[Events], Awaitable[None]]
) -> tuple[ExitCode, Events]:
    """Run a watch while `scenario(events)` runs beside it; stop the watch when the scenario returns."""
    events: Events = []
    stop = anyio.Event()
    code: list[ExitCode] = []

    async def watch() -> None:
        code.append(await Watch(settings, options, stop=stop, notify=events.append).run())

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        with anyio.fail_after(30):
            while not any(e["event"] == "start" for e in events):
                await anyio.sleep(0.02)
            await scenario(events)
        stop.set()
    return code[0], events


async def wait_until(condition: Callable[[], Any], timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.05)


def finished(events: Events, name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "entry" and e["target_name"] == name]


@pytest.mark.parametrize("rescan", [0.5, 60.0])
async def test_the_rescan_finds_an_entry_no_event_told_of(make_settings, local_dir: Path, rescan: float) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    options = WatchOptions(settle=0.3, rescan=rescan, events=False)  # as if every event were missed

    async def scenario(events: Events) -> None:
        await anyio.sleep(0.2)  # after the first rescan, which found nothing
        (local_dir / "late.mov").write_bytes(b"late" * 1000)
        if rescan < 10:
            await wait_until(lambda: finished(events, "late.mov"))
        else:
            await anyio.sleep(3.0)  # no event and no rescan: nothing can find it
            assert finished(events, "late.mov") == []

    code, events = await run_watch(settings, options, scenario)

    assert code == ExitCode.OK
    assert (local_dir / "late.mov").exists() == (rescan >= 10)


async def test_poll_finds_new_entries_without_os_events(make_settings, local_dir: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()

    async def scenario(events: Events) -> None:
        await anyio.sleep(0.2)
        (local_dir / "over-nfs.mov").write_bytes(b"n" * 5000)
        await wait_until(lambda: finished(events, "over-nfs.mov"))

    code, events = await run_watch(settings, WatchOptions(settle=0.3, rescan=60, poll=True), scenario)

    assert code == ExitCode.OK and [e["status"] for e in finished(events, "over-nfs.mov")] == ["success"]
    assert [e["mode"] for e in events if e["event"] == "start"] == ["poll"]


async def test_a_failing_entry_is_retried_with_backoff_and_then_left_for_retry(
    make_settings, local_dir: Path, s3_faults: S3Faults
) -> None:  # type: ignore[no-untyped-def]
    refused: list[float] = []

    async def refuse(params: dict[str, Any]) -> tuple[int, str] | None:
        if "doomed" in str(params.get("url", "")):
            refused.append(time.monotonic())
            return 400, "InvalidRequest"  # not transient: the entry fails at once
        return None

    s3_faults.on("PutObject", refuse)
    (local_dir / "doomed.mov").write_bytes(b"d" * 3000)
    (local_dir / "fine.mov").write_bytes(b"f" * 3000)
    settings = make_settings()
    options = WatchOptions(settle=0.3, rescan=60, max_attempts=3, retry_delay=0.4)

    async def scenario(events: Events) -> None:
        await wait_until(lambda: any(e["then"] == "left for `amgmt retry`" for e in finished(events, "doomed.mov")))

    code, events = await run_watch(settings, options, scenario)

    doomed = finished(events, "doomed.mov")
    assert [e["status"] for e in doomed] == ["failed"] * 3
    assert [e["then"] for e in doomed] == ["retry 2/3 in 0.4s", "retry 3/3 in 0.8s", "left for `amgmt retry`"]
    assert len(refused) == 3
    assert refused[1] - refused[0] >= 0.4 and refused[2] - refused[1] >= 0.8  # the backoff doubles
    assert [e["status"] for e in finished(events, "fine.mov")] == ["success"]
    assert code == ExitCode.ENTRY_FAILED  # the stop says something failed for good
    records = await stored_records_all(settings)
    assert sorted(r.status for r in records if r.target_name == "doomed.mov") == ["failed"] * 3
    assert (local_dir / "doomed.mov").exists()


async def stored_records_all(settings: Settings) -> list[Any]:
    from amgmt.store import MetadataStore

    async with MetadataStore(settings.db_path) as store:
        return await store.list_operations(limit=None)


async def test_the_heartbeat_says_what_waits_and_what_is_done(make_settings, local_dir: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    (local_dir / "a.mov").write_bytes(b"a" * 2000)

    async def scenario(events: Events) -> None:
        await wait_until(lambda: finished(events, "a.mov"))
        await wait_until(lambda: [e for e in events if e["event"] == "heartbeat" and e["counts"]], timeout=5)

    _, events = await run_watch(settings, WatchOptions(settle=0.3, rescan=60, heartbeat=0.5), scenario)

    beat = [e for e in events if e["event"] == "heartbeat" and e["counts"]][0]
    assert beat["counts"] == {"success": 1} and beat["state"] == "watching" and beat["in_flight_count"] == 0
    assert events[-1]["event"] == "stop" and events[-1]["exit_code"] == 0



async def test_a_stop_cancels_what_outlasts_the_grace_as_upload_does_and_the_next_start_resumes(
    make_settings, local_dir: Path, s3_faults: S3Faults, s3_client: Any, bucket: str
) -> None:  # type: ignore[no-untyped-def]
    async def slow_part(params: dict[str, Any]) -> None:
        await anyio.sleep(0.4)  # parts trickle out: the stop comes mid-upload
        return None

    s3_faults.on("UploadPart", slow_part)
    (local_dir / "film.mov").write_bytes(random.Random(4).randbytes(12 * MiB))  # 3 parts of 5 MiB
    settings = make_settings(part_size="5MiB", parts_in_flight=1, concurrency=1)
    options = WatchOptions(settle=0.3, rescan=60, stop_grace=0.2)

    def parts_on_server() -> int:
        uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return sum(
            len(s3_client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", []))
            for u in uploads
        )

    async def until_a_part_is_sent(events: Events) -> None:
        await wait_until(parts_on_server)  # the server holds a part: the stop comes after it, not by a sleep's luck

    code, events = await run_watch(settings, options, until_a_part_is_sent)

    assert code == ExitCode.OK  # a stop is not a failure
    assert [e["status"] for e in finished(events, "film.mov")] == ["cancelled"]
    assert (local_dir / "film.mov").exists()
    assert len(s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1  # left open, journaled

    s3_faults.handlers.clear()
    code, events = await run_watch(settings, WatchOptions(settle=0.3, rescan=60), lambda events: wait_until(
        lambda: finished(events, "film.mov")))
    [done] = finished(events, "film.mov")
    assert done["status"] == "success" and code == ExitCode.OK
    records = await stored_records_all(settings)
    [success] = [r for r in records if r.status == "success"]
    assert success.metadata["parts_reused"] >= 1 and success.metadata.get("resumed_upload_id")
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_a_new_entry_under_the_name_of_one_just_moved_is_not_mistaken_for_it(
    make_settings, local_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The name is free again the moment the move happens: a file dropped there before the watch hears the entry
    ended is a new entry (here its upload meets the first one's object and fails, as `upload` would)."""
    real_cleanup = EntryPipeline._remove_staging  # stage 8's work, alone or in the small-entry lane
    dropped: list[Path] = []

    def cleanup_after_a_new_drop(self: EntryPipeline) -> None:
        if not dropped and self.record.completed_dir_path:
            (local_dir / "take.wav").write_bytes(b"second take" * 100)
            dropped.append(local_dir / "take.wav")
        real_cleanup(self)

    monkeypatch.setattr(EntryPipeline, "_remove_staging", cleanup_after_a_new_drop)
    (local_dir / "take.wav").write_bytes(b"first take" * 100)
    settings = make_settings()

    async def scenario(events: Events) -> None:
        await wait_until(lambda: len(finished(events, "take.wav")) == 2)

    _, events = await run_watch(settings, WatchOptions(settle=0.3, rescan=60, max_attempts=1), scenario)

    first, second = finished(events, "take.wav")
    assert first["status"] == "success" and dropped
    assert second["status"] == "failed" and "already exists with other content" in second["error_message"]
