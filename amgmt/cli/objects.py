"""`amgmt download`, `amgmt status` and `amgmt delete`: one object of the bucket, named by KEY or entry NAME.

Parse, call amgmt.objects (resolve, download), render (text or --json); progress and prompts go to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import asyncclick as click
from tqdm import tqdm

from amgmt.cli.common import (
    EXIT_CODES_HELP,
    quiet,
    say,
    settings_from,
    settings_options,
    show_progress,
    watch_stop_signals,
)
from amgmt.cli.render import local_time, table, to_json
from amgmt.errors import ConfigError, ExitCode, first_error
from amgmt.models import FileStatus, OperationRecord, OperationStatus, UploadRecord
from amgmt.objects.download import DownloadOptions, DownloadOutcome, DownloadState
from amgmt.objects.resolve import DeletePlan, Objects, ObjectStatus, head_to_dict
from amgmt.objects.restore import DEFAULT_POLL_SECONDS, DEFAULT_RESTORE_DAYS, RESTORE_TIMES
from amgmt.objects.transfer import QuietReporter
from amgmt.s3 import RESTORE_TIERS, ObjectHead, RestoreState
from amgmt.text import counted, human_duration, human_size, printable

T = TypeVar("T")
# EX_TEMPFAIL of sysexits.h: not done yet, try again later. A script can tell "downloaded" (0) from "restore under
# way" without parsing the output.
RESTORE_PENDING_EXIT = 75


async def until_signalled(work: Callable[[], Awaitable[T]], *, note: str) -> T:
    """Run `work`; a stop signal cancels it, so that its own cleanups run (the partial file removed, the record
    saved as cancelled), then exits 130 with `note`. A second signal exits at once."""
    done: list[T] = []
    stopped = False

    try:
        async with anyio.create_task_group() as tg:

            def stop() -> None:
                nonlocal stopped
                stopped = True
                tg.cancel_scope.cancel()

            tg.start_soon(watch_stop_signals, stop)
            done.append(await work())
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise first_error(group)  # noqa: B904 -- the error itself, with its own cause; the group is only its context
    if stopped or not done:
        click.echo(f"amgmt: interrupted: {note}", err=True)
        raise click.exceptions.Exit(int(ExitCode.INTERRUPTED))
    return done[0]


def _restore_text(restore: RestoreState | None, head: ObjectHead | None = None) -> str:
    if restore is None:
        return "not restored" if head is not None and head.needs_restore else "-"
    if restore.ongoing:
        return "in progress"
    return f"readable until {local_time(restore.expiry)}" if restore.expiry else "readable"


class CliReporter(QuietReporter):
    """A byte bar on stderr while downloading (when asked for), and a line per restore check while waiting."""

    def __init__(self, *, bar: bool, label: str) -> None:
        super().__init__()
        self.show_bar = bar
        self.label = label
        self._bar: tqdm[Any] | None = None
        self._tty = sys.stderr.isatty()

    def restore_waiting(self, head: ObjectHead, waited: float, next_check: float) -> None:
        super().restore_waiting(head, waited, next_check)
        if quiet():
            return
        line = (
            f"restore of {self.label} ({head.storage_class}) in progress: waited {human_duration(waited)}, "
            f"next check in {human_duration(next_check)}"
        )
        click.echo(f"\r{line}\x1b[K" if self._tty else line, err=True, nl=not self._tty)

    def transfer_started(self, total: int) -> None:
        super().transfer_started(total)
        if self.restore_polls and self._tty:
            click.echo("", err=True)
        if self.show_bar:
            self._bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                dynamic_ncols=True,
                desc="download",
                leave=False,
            )

    def advance(self, nbytes: int) -> None:
        super().advance(nbytes)
        if self._bar is not None:
            self._bar.update(nbytes)

    def transfer_done(self) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _download_text(outcome: DownloadOutcome, options: DownloadOptions) -> str:
    head = outcome.head
    what = f"{outcome.target.url} ({human_size(head.size)}, {head.storage_class})"
    if outcome.state != DownloadState.DOWNLOADED:
        usual = RESTORE_TIMES.get((head.storage_class or "", options.tier))
        asked = "restore requested" if outcome.state == DownloadState.RESTORE_STARTED else "restore already in progress"
        lines = [
            f"{what}: {asked} ({options.tier} tier, readable for {counted(options.days, 'day')} once done"
            f"{'; usually ' + usual if usual else ''})",
            "nothing downloaded yet: run the same command again when the restore is done, or add --wait "
            f"(exit code {RESTORE_PENDING_EXIT})",
        ]
        return "\n".join(printable(line) for line in lines)
    took = human_duration(outcome.seconds)
    if outcome.member is not None and outcome.extracted:
        return _member_text(outcome, options, what, took)
    if outcome.extracted:
        x = outcome.extracted
        counts = ", ".join(
            counted(n, word) for n, word in ((x.files, "file"), (x.directories, "directory"), (x.links, "link"))
        )
        lines = [
            f"extracted {what} into {options.dest_dir.absolute()} in {took}: "
            f"{', '.join(x.top_level) or '(empty)'} ({counts}, {human_size(x.bytes)}"
            f"{f', {x.replaced} replaced' if x.replaced else ''})"
        ]
    else:
        lines = [f"downloaded {what} to {outcome.local_path} in {took}"]
    lines.append(f"verified: {', '.join(outcome.verified_by)}; sha256 {outcome.sha256}")
    if outcome.verified_by == ("size",):
        lines.append(
            "warning: no checksum is known for this object (no amgmt record or metadata, and an ETag that "
            "cannot be recomputed): only its size was checked"
        )
    if outcome.restore_waited_seconds:
        lines.append(f"waited {human_duration(outcome.restore_waited_seconds)} for the restore")
    return "\n".join(printable(line) for line in lines)


def _member_text(outcome: DownloadOutcome, options: DownloadOptions, what: str, took: str) -> str:
    taken, x = outcome.member, outcome.extracted
    assert taken is not None and x is not None
    counts = ", ".join(
        counted(n, word) for n, word in ((x.files, "file"), (x.directories, "directory"), (x.links, "link")) if n
    )
    read = taken.archive_bytes_read
    lines = [
        f"took {taken.member} out of {what} into {options.dest_dir.absolute()} in {took}: "
        f"{outcome.local_path} ({counts}, {human_size(x.bytes)}{f', {x.replaced} replaced' if x.replaced else ''})",
        f"read {human_size(read)} of the {human_size(taken.archive_size)} archive "
        f"({human_size(taken.archive_bytes_fetched)} fetched), stored none of it",
        f"verified: {', '.join(outcome.verified_by)}" + (f"; sha256 {outcome.sha256}" if outcome.sha256 else ""),
    ]
    if "archive sha256" not in outcome.verified_by:
        lines.append(
            "not verified: the archive's checksum (it needs all of the archive, and the reading stopped after the "
            "member)"
            if taken.recorded
            else "warning: no member list and no checksum recorded for this archive: only the tar headers' sizes "
            "were checked"
        )
    return "\n".join(printable(line) for line in lines)


@click.command(
    "download", epilog=f"{EXIT_CODES_HELP} {RESTORE_PENDING_EXIT} a restore is under way, nothing was downloaded yet."
)
@click.argument("target")
@settings_options
@click.option(
    "--to",
    "dest",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Directory to write into; created if missing.",
)
@click.option(
    "--extract",
    is_flag=True,
    help="Unpack the archive into --to (refusing unsafe members) instead of keeping the .tar.gz.",
)
@click.option(
    "--member",
    metavar="PATH",
    default=None,
    help="Write only this member of a directory archive (a file, or a directory with all below it) into --to, "
    "streaming the archive without storing it; each file's size is checked against its tar header and the recorded "
    "member list, the archive's checksum only when all of it was read.",
)
@click.option("--force", is_flag=True, help="Replace files that already exist.")
@click.option(
    "--tier",
    type=click.Choice(RESTORE_TIERS),
    default="Standard",
    show_default=True,
    help="Restore tier for GLACIER and DEEP_ARCHIVE objects.",
)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=DEFAULT_RESTORE_DAYS,
    show_default=True,
    help="Days the restored copy stays readable.",
)
@click.option("--wait", is_flag=True, help="Wait until a restore is done (checking its state), then download.")
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_POLL_SECONDS,
    show_default=True,
    help="Seconds between restore checks with --wait.",
)
@click.option(
    "--bwlimit",
    metavar="RATE",
    default=None,
    help="Bandwidth limit of the download, rclone's syntax: 10M = 10 MiB/s, 512K, off [MGMT_BWLIMIT].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON on stdout.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [default: when a terminal].")
async def download(
    target: str,
    dest: Path,
    extract: bool,
    member: str | None,
    force: bool,
    tier: str,
    days: int,
    wait: bool,
    poll_interval: float,
    bwlimit: str | None,
    as_json: bool,
    progress: bool | None,
    **kwargs: Any,
) -> None:
    """Download an object, verify it against its upload record, and keep the .tar.gz or extract it.

    \b
    TARGET is a key (media/clip.mp4.tar.gz, s3://BUCKET/KEY) or the name of an uploaded entry (clip.mp4).
    The object is fetched with parallel ranged GETs into DIR/NAME.tar.gz.partial, checked (size, ETag
    recomputed with the recorded part size, SHA-256), then renamed or extracted; a mismatch removes it.
    GLACIER and DEEP_ARCHIVE objects are restored first: the command asks for a restore and exits 75,
    or with --wait checks every --poll-interval seconds until the copy is readable, then downloads.
    --member PATH (as `amgmt search` shows it, with or without the entry's name in front, or a bare file
    name that one member has) writes just that member, or a member directory with all below it: the
    archive is read from S3 in order and decompressed on the fly, nothing of it is stored, and the
    reading stops after the last wanted member when the upload recorded its member list. Each file is
    checked against its tar header and that list (kind, size). The archive's own SHA-256 can only be
    checked when all of it was read, so a member taken from early in a large archive is not covered by
    it: download the whole archive (or `amgmt verify --deep`) for that proof.
    --bwlimit (or MGMT_BWLIMIT) holds all the ranged GETs of the command to one rate, as it does uploads.
    """
    settings = settings_from(kwargs, require_bucket=True, extra={"bwlimit": bwlimit})
    options = DownloadOptions(
        dest_dir=dest,
        extract=extract,
        force=force,
        tier=tier,
        days=days,
        wait=wait,
        poll_interval=poll_interval,
        member=member,
    )
    reporter = CliReporter(bar=show_progress(progress, as_json=as_json), label=target)
    args = {
        "command": "download",
        "target": target,
        "to": str(dest),
        "extract": extract,
        "member": member,
        "force": force,
        "tier": tier,
        "days": days,
        "wait": wait,
        "bwlimit": settings.bwlimit,
    }

    async def run() -> DownloadOutcome:
        async with Objects.open(settings, record=True) as objects:
            return await objects.download(target, options, reporter=reporter, command_args=args)

    try:
        outcome = await until_signalled(run, note="nothing was kept (a restore already asked for goes on in S3)")
    finally:
        reporter.close()
    if as_json:
        click.echo(to_json(outcome.to_dict()))
    else:
        say(_download_text(outcome, options))
    if outcome.state != DownloadState.DOWNLOADED:
        raise click.exceptions.Exit(RESTORE_PENDING_EXIT)


def _detail(record: OperationRecord) -> str:
    if record.status not in (OperationStatus.SUCCESS, OperationStatus.PARTIAL, OperationStatus.SKIPPED):
        return record.error_message or ""
    if isinstance(record, UploadRecord):
        verified = f"verified by {record.verification_method}" if record.verification_method else ""
        gone = record.s3_file_record is not None and record.s3_file_record.status == FileStatus.DELETED
        deleted = " (object deleted since)" if gone else ""
        return f"from {record.target_path}; {verified}{deleted}".rstrip("; ")
    if record.operation_type == "verify":
        return f"{record.metadata.get('result')}: {', '.join(record.metadata.get('checked') or [])}"
    if record.operation_type == "restore":
        meta = record.metadata
        return f"{meta.get('tier')} tier, {meta.get('days')} days: {meta.get('answer')}"
    return record.result_path or ""


def _operations_table(operations: list[OperationRecord]) -> str:
    rows = [
        (
            r.operation_id[:8],
            r.operation_type,
            r.status,
            local_time(r.started_at),
            human_duration(r.duration_seconds),
            _detail(r),
        )
        for r in operations
    ]
    return table(["ID", "TYPE", "STATUS", "STARTED", "TOOK", "DETAIL"], rows, max_width=70)


def _head_lines(head: ObjectHead | None) -> list[tuple[str, str]]:
    if head is None:
        return [("object", "not in the bucket")]
    lines = [
        ("size", f"{human_size(head.size)} ({head.size} bytes)"),
        ("etag", head.etag or "-"),
        ("storage class", head.storage_class or "-"),
        ("restore", _restore_text(head.restore, head)),
        ("last modified", local_time(head.last_modified)),
    ]
    if head.archive_status:
        lines.insert(3, ("archive status", head.archive_status))
    lines.append(("metadata", ", ".join(f"{k}={v}" for k, v in sorted(head.metadata.items())) or "-"))
    return lines


def _status_text(found: ObjectStatus, text: str) -> str:
    target = found.target
    how = f"the key {text!r}" if target.found_by == "key" else f"the entry name {text!r}"
    lines = [target.url, f"  {'found by'.ljust(14)}  {how}"]
    lines += [f"  {label.ljust(14)}  {value}" for label, value in _head_lines(found.head)]
    if found.operations:
        lines.append(f"operations ({len(found.operations)}, newest first):")
        lines.append(_operations_table(found.operations))
    else:
        lines.append("operations: none recorded")
    return "\n".join(printable(line) if "\n" not in line else line for line in lines)


@click.command("status")
@click.argument("target")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="The object's HEAD and the recorded operations as JSON.")
async def status(target: str, as_json: bool, **kwargs: Any) -> None:
    """What amgmt recorded about an object (every operation on it, newest first) beside the object's HEAD.

    \b
    TARGET is a key (media/clip.mp4.tar.gz, s3://BUCKET/KEY) or the name of an uploaded entry (clip.mp4).
    The HEAD shows size, ETag, storage class, restore state and metadata; an object that is gone is shown
    as such beside its records.
    """
    settings = settings_from(kwargs, require_bucket=True)
    async with Objects.open(settings, record=False) as objects:
        found = await objects.status(target)
    if as_json:
        data = {
            **found.target.to_dict(),
            "url": found.target.url,
            "object": head_to_dict(found.head),
            "operations": [r.to_dict() for r in found.operations],
        }
        click.echo(to_json(data))
        return
    click.echo(_status_text(found, target))


def _plan_text(plan: DeletePlan) -> str:
    lines = [f"will delete {plan.target.url}"]
    lines += [f"  {label.ljust(14)}  {value}" for label, value in _head_lines(plan.head) if label != "metadata"]
    if not plan.uploads:
        lines.append(f"  {'uploaded'.ljust(14)}  no upload of this key recorded")
    for upload in plan.uploads[:5]:
        lines.append(
            f"  {'upload'.ljust(14)}  {upload.operation_id[:8]} {upload.status} "
            f"{local_time(upload.started_at)}: {upload.target_name} ({human_size(upload.original_size)}) "
            f"from {upload.target_path}"
        )
    if len(plan.uploads) > 5:
        lines.append(f"  {''.ljust(14)}  and {counted(len(plan.uploads) - 5, 'older upload record')}")
    lines.append("the records stay (marked deleted); the object cannot be recovered unless the bucket keeps versions")
    return "\n".join(printable(line) for line in lines)


@click.command("delete", epilog=EXIT_CODES_HELP)
@click.argument("target")
@settings_options
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (needed when stdin is not a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON on stdout.")
async def delete(target: str, yes: bool, as_json: bool, **kwargs: Any) -> None:
    """Delete an object from the bucket after showing it and asking for confirmation; its records stay.

    \b
    TARGET is a key (media/clip.mp4.tar.gz, s3://BUCKET/KEY) or the name of an uploaded entry (clip.mp4).
    The object's upload records are kept, their S3 file record marked deleted, and a "delete" operation is
    recorded. Without a terminal, --yes is required (exit 2 otherwise); a key that does not exist is an
    error (exit 2).
    """
    settings = settings_from(kwargs, require_bucket=True)
    async with Objects.open(settings, record=True) as objects:
        plan = await objects.plan_delete(target)
        if not (yes and quiet()):  # a question is never asked without showing what it is about
            click.echo(_plan_text(plan), err=as_json)
        if not yes:
            if not sys.stdin.isatty():
                raise ConfigError(
                    f"not deleting {plan.target.url} without confirmation: stdin is not a terminal; pass --yes"
                )
            if not click.confirm("delete it?", default=False, err=True):
                click.echo(to_json({"deleted": False, "url": plan.target.url}) if as_json else "nothing deleted")
                return
        record = await objects.delete(plan, command_args={"command": "delete", "target": target, "yes": yes})
    marked = sum(1 for u in plan.uploads if u.s3_file_record is not None)
    if as_json:
        click.echo(
            to_json(
                {
                    "deleted": True,
                    "url": plan.target.url,
                    **plan.target.to_dict(),
                    "size": plan.head.size,
                    "etag": plan.head.etag,
                    "storage_class": plan.head.storage_class,
                    "operation_id": record.operation_id,
                    "upload_records_marked_deleted": marked,
                }
            )
        )
        return
    say(
        printable(
            f"deleted {plan.target.url}; {counted(marked, 'upload record')} marked deleted; "
            f"operation {record.operation_id[:8]}"
        )
    )


def register(group: click.Group) -> None:
    group.add_command(download)
    group.add_command(status)
    group.add_command(delete)
