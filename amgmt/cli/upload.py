"""`amgmt upload NAME...|all`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import asyncclick as click

from amgmt.cli.common import (
    EXIT_CODES_HELP,
    complete_entry_names,
    run_stoppable,
    settings_from,
    settings_options,
    summary_text,
)
from amgmt.cli.progress_bar import TqdmReporter
from amgmt.cli.render import table, to_json
from amgmt.errors import ConfigError
from amgmt.local.entries import list_entries, plan, resolve_names
from amgmt.local.settling import look_at_all, too_young
from amgmt.naming import display
from amgmt.progress import SilentReporter
from amgmt.text import human_size, printable
from amgmt.upload.batch import upload_batch
from amgmt.upload.report import BatchReport


@click.command("upload", epilog=EXIT_CODES_HELP)
@click.argument("names", nargs=-1, required=True, shell_complete=complete_entry_names)
@settings_options
@click.option("-c", "--concurrency", type=int, default=None, help="Entries in flight [MGMT_CONCURRENCY, default 8].")
@click.option("--storage-class", type=str, default=None, help="S3 storage class [MGMT_STORAGE_CLASS].")
@click.option("--part-size", type=str, default=None, help="Multipart part size, e.g. 16MiB [MGMT_PART_SIZE, 8MiB].")
@click.option("--overwrite", is_flag=True, help="Replace an existing object that holds other content.")
@click.option(
    "--min-age",
    type=click.FloatRange(min=0),
    default=None,
    help="Leave out entries changed less than SECONDS ago or open for writing (still arriving).",
)
@click.option("--dry-run", is_flag=True, help="List what would be uploaded and where; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [default: when a terminal].")
async def upload(
    names: tuple[str, ...],
    concurrency: int | None,
    storage_class: str | None,
    part_size: str | None,
    overwrite: bool,
    min_age: float | None,
    dry_run: bool,
    as_json: bool,
    progress: bool | None,
    **kwargs: Any,
) -> None:
    """Pack, upload, verify and move entries of the local dir.

    NAMES are files or directories inside the local dir, or `all` for every entry directly in it (except
    hidden ones and amgmt's own completed/metadata/staging dirs). Each entry becomes `[prefix/]NAME.tar.gz`;
    the original moves to the completed dir only after the object is verified in S3.
    """
    settings = settings_from(
        kwargs,
        require_bucket=True,
        extra={"concurrency": concurrency, "storage_class": storage_class, "part_size": part_size},
    )
    if names == ("all",):
        entries, ignored = list_entries(settings)
    elif "all" in names and len(names) > 1:
        raise ConfigError("`all` cannot be combined with names")
    else:
        entries, ignored = resolve_names(settings, list(names)), []
    if min_age is not None:
        entries, ignored = _old_enough(entries, ignored, min_age)
    if dry_run:
        planned = plan(settings, entries)
        if as_json:
            click.echo(
                to_json({"dry_run": True, "entries": [p.to_dict(settings.bucket) for p in planned], "ignored": ignored})
            )
            return
        rows = [
            (
                display(p.path.name),
                "dir" if p.is_directory else "file",
                human_size(p.size),
                f"s3://{settings.bucket}/{p.key}",
            )
            for p in planned
        ]
        click.echo(table(["ENTRY", "KIND", "SIZE", "DESTINATION"], rows, max_width=80))
        for note in ignored:
            click.echo(f"ignored: {printable(note)}")
        click.echo(f"{len(planned)} entries, {human_size(sum(p.size for p in planned))} (dry run: nothing done)")
        return
    show_bar = sys.stderr.isatty() if progress is None else progress
    reporter = TqdmReporter() if show_bar and not as_json else SilentReporter()
    command_args = {
        "command": "upload",
        "names": [display(n) for n in names],
        "concurrency": settings.concurrency,
        "overwrite": overwrite,
        "min_age": min_age,
        "storage_class": settings.storage_class,
        "part_size": settings.part_size,
        "local_dir": display(settings.local_dir),
    }
    report = BatchReport(ignored=ignored)
    await run_stoppable(
        lambda stop: upload_batch(
            settings,
            entries,
            reporter=reporter,
            overwrite=overwrite,
            command_args=command_args,
            report=report,
            stop=stop,
        )
    )
    click.echo(to_json(report.to_dict()) if as_json else summary_text(report))
    code = int(report.exit_code)
    if code:
        raise click.exceptions.Exit(code)


def _old_enough(entries: list[Path], ignored: list[str], min_age: float) -> tuple[list[Path], list[str]]:
    """--min-age: the entries that have not changed for `min_age` seconds and are not open for writing; the others
    join the ignored notes, with why."""
    young = too_young(look_at_all(entries), min_age=min_age)
    kept = [entry for entry in entries if entry not in young]
    return kept, ignored + [f"{display(path.name)}: {reason}" for path, reason in young.items()]


def register(group: click.Group) -> None:
    group.add_command(upload)
