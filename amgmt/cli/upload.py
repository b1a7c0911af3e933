"""`amgmt upload NAME...|all`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncclick as click

from amgmt.cli.common import (
    EXIT_CODES_HELP,
    complete_entry_names,
    hook_option,
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
from amgmt.local.entries import EntryFilter, FilterRule, list_entries, plan, resolve_names
from amgmt.local.settling import look_at_all, too_young
from amgmt.naming import display
from amgmt.progress import SilentReporter
from amgmt.text import counted, human_size, printable
from amgmt.upload.batch import upload_batch
from amgmt.upload.report import BatchReport

_FILTER_OPTIONS = ("exclude", "include")


class _FilterOrderCommand(click.Command):
    """Keeps the order of --exclude and --include across the two options (click keeps it only within one): the
    parser's order of occurrences, noted before the real parse, pairs each value with its option."""

    async def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _, _, order = await self.make_parser(ctx).parse_args(args=list(args))
        ctx.meta["amgmt.filter_order"] = [p.name for p in order if p.name in _FILTER_OPTIONS]
        return await super().parse_args(ctx, args)


def _filter_rules(ctx: click.Context, exclude: tuple[str, ...], include: tuple[str, ...]) -> list[FilterRule]:
    values = {"exclude": iter(exclude), "include": iter(include)}
    return [FilterRule(name == "include", next(values[name])) for name in ctx.meta.get("amgmt.filter_order", [])]


FILTER_HELP = (
    "Filters: --exclude/--include PATTERN (repeatable) are shell patterns (*, ?, [...]) on entry names, applied as by "
    "`aws s3`: every entry is taken unless a rule leaves it out, and of the rules that match an entry the last one "
    "decides; MGMT_EXCLUDE comes before them. As in rclone, when the first of them is an --include, what no rule "
    "matches is left out (`--include '*.mp4'` alone: only .mp4 entries). They choose entries, never files inside "
    "an entry's archive. " + EXIT_CODES_HELP
)


@click.command("upload", cls=_FilterOrderCommand, epilog=FILTER_HELP)
@click.argument("names", nargs=-1, required=True, shell_complete=complete_entry_names)
@settings_options
@hook_option
@click.option("-c", "--concurrency", type=int, default=None, help="Entries in flight [MGMT_CONCURRENCY, default 8].")
@click.option("--storage-class", type=str, default=None, help="S3 storage class [MGMT_STORAGE_CLASS].")
@click.option("--part-size", type=str, default=None, help="Multipart part size, e.g. 16MiB [MGMT_PART_SIZE, 8MiB].")
@click.option("--exclude", multiple=True, metavar="PATTERN", help="Leave out the entries whose name matches.")
@click.option("--include", multiple=True, metavar="PATTERN", help="Take the entries whose name matches.")
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
    exclude: tuple[str, ...],
    include: tuple[str, ...],
    overwrite: bool,
    min_age: float | None,
    dry_run: bool,
    as_json: bool,
    progress: bool | None,
    hook: str | None,
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
        extra={"concurrency": concurrency, "storage_class": storage_class, "part_size": part_size, "hook": hook},
    )
    if names == ("all",):
        entries, ignored = list_entries(settings)
    elif "all" in names and len(names) > 1:
        raise ConfigError("`all` cannot be combined with names")
    else:
        entries, ignored = resolve_names(settings, list(names)), []
    rules = _filter_rules(click.get_current_context(), exclude, include)
    entries, excluded = EntryFilter.build(settings.exclude, rules).select(settings, entries)
    if min_age is not None:
        entries, ignored = _old_enough(entries, ignored, min_age)
    if dry_run:
        _print_plan(settings, entries, ignored=ignored, excluded=excluded, as_json=as_json)
        return
    reporter = TqdmReporter() if show_progress(progress, as_json=as_json) else SilentReporter(keep=False)
    command_args = {
        "command": "upload",
        "names": [display(n) for n in names],
        "concurrency": settings.concurrency,
        "overwrite": overwrite,
        "min_age": min_age,
        "storage_class": settings.storage_class,
        "part_size": settings.part_size,
        "local_dir": display(settings.local_dir),
        "filters": [str(rule) for rule in rules],
    }
    report = BatchReport(ignored=ignored, excluded=excluded, keep_records=as_json)
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
    print_run_report(report, as_json=as_json)
    code = int(report.exit_code)
    if code:
        raise click.exceptions.Exit(code)


def _print_plan(settings: Any, entries: list[Any], *, ignored: list[str], excluded: list[str], as_json: bool) -> None:
    """--dry-run: each entry with its size and destination, what is ignored and what the filters left out."""
    planned = plan(settings, entries)
    if as_json:
        data = {
            "dry_run": True,
            "entries": [p.to_dict(settings.bucket) for p in planned],
            "ignored": ignored,
            "excluded": excluded,
        }
        click.echo(to_json(data))
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
        say(f"ignored: {printable(note)}")
    for note in excluded:
        say(f"excluded: {printable(note)}")
    say(f"{counted(len(planned), 'entry')}, {human_size(sum(p.size for p in planned))} (dry run: nothing done)")


def _old_enough(entries: list[Path], ignored: list[str], min_age: float) -> tuple[list[Path], list[str]]:
    """--min-age: the entries that have not changed for `min_age` seconds and are not open for writing; the others
    join the ignored notes, with why."""
    young = too_young(look_at_all(entries), min_age=min_age)
    kept = [entry for entry in entries if entry not in young]
    return kept, ignored + [f"{display(path.name)}: {reason}" for path, reason in young.items()]


def register(group: click.Group) -> None:
    group.add_command(upload)
