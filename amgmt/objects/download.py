"""`download` of one object: refusals first, a restore when it is archived, then the transfer, its verification, and
the file kept or extracted; recorded in the store either way. The steps live in transfer, verify, extract, restore.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from amgmt.errors import ConfigError
from amgmt.models import OperationStatus
from amgmt.naming import PARTIAL_SUFFIX, display
from amgmt.objects.extract import ExtractSummary, extract_archive
from amgmt.objects.member import MemberTaken, plan_member, refuse_existing, take_member
from amgmt.objects.restore import DEFAULT_POLL_SECONDS, DEFAULT_RESTORE_DAYS, request_restore, wait_for_restore
from amgmt.objects.transfer import DownloadReporter, QuietReporter, fetch_to_file, place_file, unlink_if_present
from amgmt.objects.verify import StreamDigests, check_digests, expected_of
from amgmt.s3 import RESTORE_TIERS, ByteBudget, ObjectHead
from amgmt.text import iso_utc

if TYPE_CHECKING:
    from amgmt.objects.resolve import Objects, Target
    from amgmt.store import StoredMember

CLEANUP_TIMEOUT = 10.0


class DownloadState(StrEnum):
    DOWNLOADED = "downloaded"
    RESTORE_STARTED = "restore-started"  # an archived object: a restore was asked for now
    RESTORE_IN_PROGRESS = "restore-in-progress"  # an archived object whose restore was asked for earlier


@dataclass(frozen=True)
class DownloadOptions:
    dest_dir: Path
    extract: bool = False
    force: bool = False
    tier: str = "Standard"
    days: int = DEFAULT_RESTORE_DAYS
    wait: bool = False
    poll_interval: float = DEFAULT_POLL_SECONDS
    member: str | None = None  # a member (or member directory) of a directory archive to take out alone

    def __post_init__(self) -> None:
        if self.member is not None and self.extract:
            raise ConfigError("--member takes one member out of the archive; it cannot be combined with --extract")
        if self.tier not in RESTORE_TIERS:
            raise ConfigError(f"--tier {self.tier!r}: expected one of {', '.join(RESTORE_TIERS)}")
        if self.days < 1:
            raise ConfigError(f"--days {self.days}: a restored copy is kept at least 1 day")
        if not self.poll_interval > 0:
            raise ConfigError(f"--poll-interval {self.poll_interval}: expected a positive number of seconds")


@dataclass
class DownloadOutcome:
    state: DownloadState
    target: Target
    head: ObjectHead
    local_path: str | None = None
    sha256: str | None = None
    verified_by: tuple[str, ...] = ()
    extracted: ExtractSummary | None = None
    restore_request: str | None = None  # the answer to our restore request: started | restored | in-progress
    restore_waited_seconds: float = 0.0
    operation_id: str | None = None
    seconds: float = 0.0
    member: MemberTaken | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            **self.target.to_dict(),
            "storage_class": self.head.storage_class,
            "size": self.head.size,
            "etag": self.head.etag,
            "restore": asdict(self.head.restore) if self.head.restore else None,
            "restore_request": self.restore_request,
            "restore_waited_seconds": round(self.restore_waited_seconds, 3),
            "local_path": self.local_path,
            "sha256": self.sha256,
            "verified_by": list(self.verified_by),
            "extracted": asdict(self.extracted) if self.extracted else None,
            "operation_id": self.operation_id,
            "seconds": round(self.seconds, 3),
            **({"member": self.member.to_dict()} if self.member else {}),
        }


async def download_object(
    objects: Objects,
    text: str,
    options: DownloadOptions,
    *,
    reporter: DownloadReporter | None = None,
    command_args: dict[str, Any] | None = None,
) -> DownloadOutcome:
    """Download (restoring first when archived), verify, then keep the archive or extract it into the dir.

    Refusals (existing files without --force) come before any request that changes anything. An archived
    object without a readable copy gets a restore request; without `wait` the outcome says so and nothing is
    downloaded. A verification failure removes the partial file; the download is recorded either way.
    """
    reporter = reporter or QuietReporter()
    started = time.monotonic()
    target = await objects.resolve(text)
    head = await objects.head(target)
    final = options.dest_dir / target.key.rsplit("/", 1)[-1]
    member: tuple[str, list[StoredMember] | None] | None = None
    if options.member is not None:
        member = await plan_member(objects, target, options.member)
        if member[1] is not None:
            refuse_existing(options.dest_dir, member[0], member[1], force=options.force)
    else:
        _refuse_conflicts(target, options, final)

    restore_request = None
    waited = 0.0
    if head.needs_restore:
        if head.restore is None:
            restore_request = await request_restore(
                objects, target, head, tier=options.tier, days=options.days, command_args=command_args
            )
        if not options.wait:
            state = DownloadState.RESTORE_STARTED if restore_request else DownloadState.RESTORE_IN_PROGRESS
            return DownloadOutcome(
                state, target, head, restore_request=restore_request, seconds=time.monotonic() - started
            )
        head, waited = await wait_for_restore(
            objects,
            target,
            tier=options.tier,
            days=options.days,
            poll_interval=options.poll_interval,
            reporter=reporter,
        )

    record = objects.new_record("download", target, command_args)
    record.metadata |= {
        "storage_class": head.storage_class,
        "size": head.size,
        "etag": head.etag,
        "upload_operation_id": target.upload.operation_id if target.upload else None,
    }
    if head.restore:
        record.metadata["restore_expiry"] = iso_utc(head.restore.expiry) if head.restore.expiry else None
        record.metadata["restore_waited_seconds"] = round(waited, 3)
    if member is not None:
        record.metadata["member"] = member[0]
    try:
        if member is not None:
            outcome = await _take(objects, target, head, options, reporter, member)
        else:
            outcome = await _fetch(objects, target, head, options, reporter, final)
    except BaseException as exc:
        await objects.finish_failed(record, exc)
        raise
    outcome.restore_request = restore_request
    outcome.restore_waited_seconds = waited
    outcome.operation_id = record.operation_id
    outcome.seconds = time.monotonic() - started
    record.result_path = outcome.local_path
    record.metadata |= {
        "local_path": outcome.local_path,
        "local_sha256": outcome.sha256,
        "verified_by": list(outcome.verified_by),
        "extracted": asdict(outcome.extracted) if outcome.extracted else None,
        "range_size": objects.range_size,
    }
    record.finish(OperationStatus.SUCCESS)
    await objects.save_record(record)
    return outcome


async def _take(
    objects: Objects,
    target: Target,
    head: ObjectHead,
    options: DownloadOptions,
    reporter: DownloadReporter,
    member: tuple[str, list[StoredMember] | None],
) -> DownloadOutcome:
    path, expected = member
    taken = await take_member(
        objects,
        target,
        head,
        path=path,
        expected=expected,
        dest=options.dest_dir,
        force=options.force,
        reporter=reporter,
    )
    return DownloadOutcome(
        DownloadState.DOWNLOADED,
        target,
        head,
        local_path=taken.local_path,
        sha256=taken.sha256,
        verified_by=taken.verified_by,
        extracted=taken.summary,
        member=taken,
    )


def _refuse_conflicts(target: Target, options: DownloadOptions, final: Path) -> None:
    dest = options.dest_dir
    if os.path.lexists(dest) and not dest.is_dir():
        raise ConfigError(f"--to {display(dest)} exists and is not a directory")
    if options.force:
        return
    if not options.extract:
        if os.path.lexists(final):
            raise ConfigError(f"{display(final)} exists; use --force to replace it")
        return
    # The entry's own path: refused up front unless it is an empty directory, so that a download of many
    # gigabytes is not made only to be refused (the member-by-member check after the download decides).
    entry = dest / target.name
    if os.path.lexists(entry) and not (entry.is_dir() and not entry.is_symlink() and not any(entry.iterdir())):
        raise ConfigError(f"{display(entry)} exists; use --force to replace the files the archive holds")


async def _fetch(
    objects: Objects,
    target: Target,
    head: ObjectHead,
    options: DownloadOptions,
    reporter: DownloadReporter,
    final: Path,
) -> DownloadOutcome:
    expected = await expected_of(objects.s3, target, head)
    dest = options.dest_dir
    try:
        await anyio.to_thread.run_sync(lambda: dest.mkdir(parents=True, exist_ok=True))
    except OSError as exc:
        raise ConfigError(f"cannot create --to {display(dest)}: {exc.strerror or exc}") from exc
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    digests = StreamDigests(expected.etag_part_size)
    try:
        await fetch_to_file(
            objects.s3,
            target.key,
            partial,
            size=head.size,
            etag=head.etag or None,
            digests=digests,
            range_size=objects.range_size,
            workers=objects.workers,
            budget=ByteBudget(objects.workers * objects.range_size),
            reporter=reporter,
        )
        got = digests.finish()
        verified_by = check_digests(target.url, expected, got)
        extracted = None
        if options.extract:
            extracted = await anyio.to_thread.run_sync(lambda: extract_archive(partial, dest, force=options.force))
            await anyio.to_thread.run_sync(os.unlink, partial)
            tops = extracted.top_level
            local_path = dest / tops[0] if len(tops) == 1 else dest
        else:
            await anyio.to_thread.run_sync(lambda: place_file(partial, final, force=options.force))
            local_path = final
    except BaseException:
        with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True), contextlib.suppress(OSError):
            await anyio.to_thread.run_sync(unlink_if_present, partial)
        raise
    return DownloadOutcome(
        DownloadState.DOWNLOADED,
        target,
        head,
        local_path=display(local_path.absolute()),
        sha256=got.sha256,
        verified_by=verified_by,
        extracted=extracted,
    )
