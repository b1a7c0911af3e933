"""`amgmt retry` and `amgmt cleanup`: finishing and tidying after failed or interrupted runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncclick as click

from amgmt.cli.common import (
    EXIT_CODES_HELP,
    hook_option,
    parse_when,
    print_run_report,
    run_stoppable,
    say,
    settings_from,
    settings_options,
    show_progress,
)
from amgmt.cli.progress_bar import TqdmReporter
from amgmt.cli.render import table, to_json
from amgmt.errors import ConfigError
from amgmt.progress import SilentReporter
from amgmt.text import counted, human_size, printable
from amgmt.upload.batch import retry_targets, upload_batch
from amgmt.upload.recovery import KEPT_RESUMABLE
from amgmt.upload.recovery import cleanup as run_cleanup
from amgmt.upload.report import BatchReport


@click.command("retry", epilog=EXIT_CODES_HELP)
@click.argument("operation_ids", nargs=-1)
@settings_options
@hook_option
@click.option(
    "--failed",
    is_flag=True,
    help="Every upload whose latest attempt failed, was cancelled or interrupted (killed), is partial, or changed.",
)
@click.option("-c", "--concurrency", type=int, default=None, help="Entries in flight [MGMT_CONCURRENCY, default 8].")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [default: when a terminal].")
async def retry(
    operation_ids: tuple[str, ...],
    failed: bool,
    concurrency: int | None,
    as_json: bool,
    progress: bool | None,
    hook: str | None,
    **kwargs: Any,
) -> None:
    """Upload again the entries of failed, cancelled or partial operations (ids or unique id prefixes).

    An interrupted multipart upload of an unchanged entry is resumed; a partial one (uploaded, not moved) is
    verified again and moved; a changed one (the entry changed after it was packed) is uploaded with its new
    content. The current settings apply.
    """
    if not operation_ids and not failed:
        raise ConfigError("name operation ids, or pass --failed")
    settings = settings_from(kwargs, require_bucket=True, extra={"concurrency": concurrency, "hook": hook})
    entries, notes = await retry_targets(settings, ids=list(operation_ids), failed=failed)
    report = BatchReport(ignored=notes, keep_records=as_json)
    if entries:
        reporter = TqdmReporter() if show_progress(progress, as_json=as_json) else SilentReporter(keep=False)
        args = {
            "command": "retry",
            "operation_ids": list(operation_ids),
            "failed": failed,
            "concurrency": settings.concurrency,
        }
        await run_stoppable(
            lambda stop: upload_batch(settings, entries, reporter=reporter, report=report, command_args=args, stop=stop)
        )
    print_run_report(report, as_json=as_json)
    if report.exit_code:
        raise click.exceptions.Exit(int(report.exit_code))


@click.command("cleanup", epilog=EXIT_CODES_HELP)
@settings_options
@click.option("--dry-run", is_flag=True, help="Only list what would be removed or aborted.")
@click.option(
    "--older-than",
    type=str,
    default="1h",
    show_default=True,
    help="Abort uploads only when started this long ago (30m, 2h, 7d, 0): those amgmt has no record of, "
    "and those it journaled, which a retry could still resume.",
)
@click.option(
    "--include-resumable",
    is_flag=True,
    help="Also abort the uploads amgmt journaled within --older-than (a retry can no longer resume them).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was found as JSON.")
async def cleanup(dry_run: bool, older_than: str, include_resumable: bool, as_json: bool, **kwargs: Any) -> None:
    """Abort unfinished multipart uploads under the prefix, remove stale staging archives, and close the records
    of runs that died; says how many bytes they held. Refuses while an upload runs on the same local dir.

    An upload amgmt journaled (an interrupted run's, which `amgmt retry --failed` resumes) is kept while younger
    than --older-than, unless --include-resumable; one whose operation is still in progress (a run on another
    local dir sharing the database) is always kept. Others under the prefix (possibly another machine's, in
    progress) are aborted only when older than --older-than. Only the staging archives amgmt made are removed."""
    settings = settings_from(kwargs, require_bucket=True)
    age = datetime.now(UTC) - parse_when(older_than, option="--older-than") if older_than != "0" else timedelta(0)
    found = await run_cleanup(settings, dry_run=dry_run, older_than=age, include_resumable=include_resumable)
    if as_json:
        click.echo(to_json(found.to_dict()))
        return
    verb = "would abort" if dry_run else "aborted"
    if found.multipart_uploads:
        say(
            table(
                ["KEY", "UPLOAD ID", "STARTED", "PARTS", "SIZE"],
                [
                    (u["key"], u["upload_id"][:16], u["initiated"] or "-", u["parts"], human_size(u["size"]))
                    for u in found.multipart_uploads
                ],
                max_width=60,
            )
        )
    uploads = counted(len(found.multipart_uploads), "multipart upload")
    say(f"{verb} {uploads} holding {human_size(found.multipart_bytes)}")
    if found.kept_multipart_uploads:
        kept = found.kept_multipart_uploads
        say(f"kept {counted(len(kept), 'multipart upload')} holding {human_size(sum(u['size'] for u in kept))}:")
        for u in kept:
            say(f"  {printable(u['key'])} ({counted(u['parts'], 'part')}, {human_size(u['size'])}): {u['reason']}")
        if any(u["reason"] == KEPT_RESUMABLE for u in kept):
            say("  (--include-resumable aborts the resumable ones too)")
    say(
        f"{'would remove' if dry_run else 'removed'} {counted(len(found.staging_files), 'staging file')} holding "
        f"{human_size(found.staging_bytes)}"
    )
    for leftover in found.move_leftovers:
        say(f"{'would be ' if dry_run else ''}{leftover['action']}: {leftover['path']}")
    if found.interrupted_operations:
        say(
            f"{'would close' if dry_run else 'closed'} {counted(len(found.interrupted_operations), 'record')} of "
            "interrupted runs as cancelled"
        )


def register(group: click.Group) -> None:
    group.add_command(retry)
    group.add_command(cleanup)
