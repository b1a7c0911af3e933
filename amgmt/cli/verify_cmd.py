"""`amgmt verify`: objects recorded as uploaded, checked again against the bucket; exit 1 when one is missing or
changed. Parses, calls amgmt.objects.check, renders (text or --json)."""

from __future__ import annotations

from typing import Any

import asyncclick as click

from amgmt.cli.common import (
    EXIT_CODES_HELP,
    parse_when,
    quiet,
    run_stoppable,
    settings_from,
    settings_options,
    show_progress,
)
from amgmt.cli.progress_bar import TqdmReporter
from amgmt.cli.render import to_json
from amgmt.errors import ConfigError, ExitCode
from amgmt.objects.check import VerifyReport, verify_objects
from amgmt.objects.resolve import Objects
from amgmt.progress import SilentReporter
from amgmt.text import counted, human_duration, printable


def _text(report: VerifyReport) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.counts().items())) or "nothing to check"
    how = "downloaded and hashed" if report.deep else "HEAD"
    lines = [
        f"{counted(len(report.checks), 'object')} checked ({how}) in {human_duration(report.wall_seconds)}: {counts}"
    ]
    if report.problems:
        lines.append("not ok:")
        lines += [f"  {line}" for line in _problem_lines(report)]
    return "\n".join(lines)


def _problem_lines(report: VerifyReport) -> list[str]:
    return [f"{c.result:<8} {printable(c.target.key)}: {printable(c.detail)}" for c in report.problems]


@click.command("verify", epilog=EXIT_CODES_HELP)
@click.argument("names", nargs=-1)
@click.option("--all", "check_all", is_flag=True, help="Every object recorded as uploaded to this bucket.")
@click.option("--since", metavar="WHEN", help="Only uploads since WHEN (2026-11-25, 2026-11-25T10:00, 7d, 12h).")
@click.option("--deep", is_flag=True, help="Download each object and compare its SHA-256s (archive and source).")
@settings_options
@click.option("-c", "--concurrency", type=int, default=None, help="Objects checked at once [MGMT_CONCURRENCY, 8].")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome of every check as JSON on stdout.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [default: when a terminal].")
async def verify(
    names: tuple[str, ...],
    check_all: bool,
    since: str | None,
    deep: bool,
    concurrency: int | None,
    as_json: bool,
    progress: bool | None,
    **kwargs: Any,
) -> None:
    """Check again that the objects recorded as uploaded are in the bucket as uploaded.

    \b
    NAMES are keys (media/clip.mp4.tar.gz, s3://BUCKET/KEY) or names of uploaded entries; --all checks
    every object recorded as uploaded to the bucket, --since WHEN those uploaded since then. A HEAD must give
    the recorded size and ETag; --deep also downloads each object (to a temporary file, removed after) and
    compares its archive SHA-256 and the source SHA-256 its members give with the recorded ones.
    Every check is recorded (a "verify" operation: `amgmt status NAME`, `amgmt history --type verify`).
    Exit 1 when an object is missing or changed, or could not be checked (as `rclone check`).
    """
    if names and check_all:
        raise ConfigError("give NAMES or --all, not both")
    if not names and not check_all and since is None:
        raise ConfigError("name the objects to verify, or give --all or --since WHEN")
    if names and since is not None:
        raise ConfigError("--since selects uploads: give it with --all or alone, not with NAMES")
    settings = settings_from(kwargs, require_bucket=True, extra={"concurrency": concurrency})
    when = parse_when(since, option="--since") if since is not None else None
    reporter = (
        TqdmReporter(desc="verify", unit="B" if deep else "obj", noun="objects")
        if show_progress(progress, as_json=as_json)
        else SilentReporter(keep=False)
    )
    args = {"command": "verify", "names": list(names), "all": check_all, "since": since, "deep": deep}

    async def work(stop: Any) -> VerifyReport:
        async with Objects.open(settings, record=False) as objects:
            return await verify_objects(
                objects,
                names,
                since=when,
                deep=deep,
                concurrency=settings.concurrency,
                reporter=reporter,
                command_args=args,
                stop=stop,
            )

    report = await run_stoppable(work)
    if as_json:
        click.echo(to_json(report.to_dict()))
    elif not quiet():
        click.echo(_text(report))
    elif report.problems:  # -q: only what is not as recorded
        click.echo("\n".join(_problem_lines(report)), err=True)
    if report.interrupted:
        click.echo("amgmt: interrupted: the checks under way were cancelled", err=True)
        raise click.exceptions.Exit(int(ExitCode.INTERRUPTED))
    if report.problems:
        raise click.exceptions.Exit(int(ExitCode.ENTRY_FAILED))


def register(group: click.Group) -> None:
    group.add_command(verify)
