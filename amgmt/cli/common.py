"""What the command modules share: the settings options, time parsing, the store opener, the upload summary,
stop signals, and the one signal watcher. Command modules import this, never each other."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import asyncclick as click

from amgmt.errors import ConfigError, ExitCode, NotFoundError, first_error
from amgmt.text import counted, human_duration, human_size, printable

if TYPE_CHECKING:
    from collections.abc import Mapping

    from asyncclick.shell_completion import CompletionItem

    from amgmt.config import Settings
    from amgmt.store import Store
    from amgmt.upload.report import BatchReport

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

QUIET = "amgmt.quiet"  # the root context's meta key of -q/--quiet
LOCAL_DIR = "amgmt.local_dir"  # the root context's meta key of the local dir a command's settings name (its log line)


def quiet() -> bool:
    """Whether -q/--quiet was given (before or after the command)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().meta.get(QUIET))


def say(message: str, *, err: bool = False) -> None:
    """Informational output (summaries, notes, progress lines): dropped under -q/--quiet. Errors, failures and the
    data a command was asked for (a listing, --json) are printed with click.echo instead."""
    if not quiet():
        click.echo(message, err=err)


def show_progress(progress: bool | None, *, as_json: bool = False) -> bool:
    """Whether to draw a progress bar: --progress/--no-progress, else when stderr is a terminal; never with --json
    or -q."""
    if as_json or quiet():
        return False
    return sys.stderr.isatty() if progress is None else progress


EXIT_CODES_HELP = (
    "Exit codes: 0 all done; 1 an entry failed or is partial; 2 bad input or configuration; "
    "3 S3 unreachable/unusable (run stopped); 4 metadata database unusable; 5 another run holds the local dir; "
    "130 interrupted."
)

# The server runs in its own session (a Ctrl-C in the terminal does not reach it), so every way this command can be
# told to stop must stop it: Ctrl-C, `kill`, and the terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def watch_stop_signals(on_first: Callable[[], None]) -> None:
    """The one signal watcher: the first SIGINT/SIGTERM/SIGHUP calls `on_first` (the command then stops cleanly:
    its cleanups run, its records say cancelled); a second one exits at once with 130 (safe: nothing is ever
    moved before verification, and the next run repairs what is left)."""
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        stopping = False
        async for _ in signals:
            if stopping:
                os._exit(int(ExitCode.INTERRUPTED))
            stopping = True
            on_first()


async def run_stoppable(work: Callable[[anyio.Event], Awaitable[T]]) -> T:
    """`work(stop)` with the signal watcher setting `stop` on the first signal (a batch stops taking entries and
    cancels those in flight when it is set)."""
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_stop_signals, stop.set)
            result = await work(stop)
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise first_error(group)  # noqa: B904 -- the error itself, with its own cause; the group is only its context
    return result


def log_path(environ: Mapping[str, str] | None = None) -> Path:
    """$XDG_STATE_HOME/amgmt/amgmt.log, default ~/.local/state/amgmt/amgmt.log (a relative XDG path is ignored)."""
    environ = os.environ if environ is None else environ
    xdg = environ.get("XDG_STATE_HOME", "")
    base = (
        Path(xdg) if xdg and os.path.isabs(xdg) else Path(environ.get("HOME") or "~").expanduser() / ".local" / "state"
    )
    return base / "amgmt" / "amgmt.log"


def settings_options(func: F) -> F:
    """The options every command shares; they override MGMT_* variables and the config file."""
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(path_type=Path),
            default=None,
            help="Config file (KEY=VALUE lines). Default: ~/.config/amgmt/config, else ~/.config/mgmt/config.",
        ),
        click.option(
            "--local-dir", type=str, default=None, help="Folder holding the entries [MGMT_LOCAL_DIR, default: .]."
        ),
        click.option(
            "--completed-dir",
            type=str,
            default=None,
            help="Where originals go once verified [MGMT_COMPLETED_DIR, default: LOCAL_DIR/completed].",
        ),
        click.option("--bucket", type=str, default=None, help="Destination bucket [MGMT_BUCKET]."),
        click.option("--prefix", "object_prefix", type=str, default=None, help="Key prefix [MGMT_OBJECT_PREFIX]."),
        click.option(
            "--endpoint-url",
            type=str,
            default=None,
            help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 [MGMT_ENDPOINT_URL].",
        ),
        click.option("--profile", type=str, default=None, help="AWS profile for credentials [MGMT_PROFILE]."),
        click.option("--region", type=str, default=None, help="AWS region [MGMT_REGION]."),
        click.option(
            "--db",
            "db_path",
            type=str,
            default=None,
            help="Metadata database [MGMT_DB_PATH, default: COMPLETED_DIR/.metadata/operations.db].",
        ),
        click.option(
            "--db-url",
            "db_url",
            type=str,
            default=None,
            help="PostgreSQL store instead of the SQLite file: postgresql://USER@HOST[:PORT]/DB [MGMT_DB_URL].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def hook_option(func: F) -> F:
    """`--hook CMD` of the commands that upload (upload, retry, watch)."""
    return click.option(
        "--hook",
        metavar="CMD",
        type=str,
        default=None,
        help="Shell command run after each entry ends, its record in AMGMT_* variables [MGMT_HOOK].",
    )(func)


SETTINGS_FLAGS = (
    "local_dir",
    "completed_dir",
    "bucket",
    "object_prefix",
    "endpoint_url",
    "profile",
    "region",
    "db_path",
    "db_url",
)


def settings_from(
    kwargs: dict[str, Any], *, require_bucket: bool, extra: dict[str, Any] | None = None, warn: bool = True
) -> Settings:
    """Settings from the shared options in `kwargs` (popped), plus command-specific flags; the config file's
    warnings (unknown keys) on stderr, unless -q or `warn` is off."""
    from amgmt.config import load_settings

    flags = {name: kwargs.pop(name, None) for name in SETTINGS_FLAGS}
    flags.update(extra or {})
    config_path = kwargs.pop("config_path", None)
    settings = load_settings(flags=flags, environ=os.environ, config_path=config_path, require_bucket=require_bucket)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        from amgmt.naming import display

        ctx.find_root().meta[LOCAL_DIR] = display(settings.local_dir)
    if warn:
        for warning in settings.warnings:
            say(f"amgmt: warning: {printable(warning)}", err=True)
    return settings


def complete_entry_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Shell completion of NAMES: the entries of the local dir (from the flags typed so far, MGMT_* and the config
    file) whose name starts with what is typed, and `all`; names already on the line are left out."""
    from asyncclick.shell_completion import CompletionItem

    from amgmt.local.entries import list_entries

    given = set(ctx.params.get(param.name or "", None) or ())
    params = {k: v for k, v in ctx.params.items() if k in SETTINGS_FLAGS or k == "config_path"}
    try:
        entries, _ = list_entries(settings_from(params, require_bucket=False, warn=False))
    except Exception:  # noqa: BLE001 -- a completion must never print a traceback into the user's prompt
        return []
    # A name holding control characters or undecodable bytes cannot travel through the completion protocol's lines.
    names = [path.name for path in entries if path.name.isprintable()] + ([] if given else ["all"])
    # bash inserts the value as it is: escape what its parser would split or expand; zsh and fish quote themselves.
    bash = os.environ.get(COMPLETE_VAR, "").startswith("bash")
    return [
        CompletionItem(_bash_escape(name) if bash else name)
        for name in names
        if name.startswith(incomplete) and name not in given
    ]


COMPLETE_VAR = "_AMGMT_COMPLETE"
_BASH_SPECIAL = frozenset(" '\"\\$`!&|;()<>*?[]{}~#")


def _bash_escape(name: str) -> str:
    """The name as bash must see it on the command line, twice escaped: click's bash script reads each completion
    with `read` (without -r), which takes one level of backslashes away."""
    escaped = "".join("\\" + ch if ch in _BASH_SPECIAL else ch for ch in name)
    return escaped.replace("\\", "\\\\")


_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, *, option: str, now: datetime | None = None) -> datetime:
    """An ISO date/time (local time when no zone is given) or a relative age like 30m, 2h, 7d, 1w."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text.strip().lower())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"{option} {text!r}: expected a date like 2026-11-25, 2026-11-25T10:00 or an age like 2h, 7d"
        ) from None
    if value.tzinfo is None:
        value = value.astimezone()  # naive = local time
    return value.astimezone(UTC)


async def open_store(kwargs: dict[str, Any]) -> Store:
    from amgmt.store import metadata_store, store_exists

    settings = settings_from(kwargs, require_bucket=False)
    if not store_exists(settings):
        raise NotFoundError(f"no metadata database at {settings.db_path} (nothing uploaded from here yet?)")
    return metadata_store(settings)


def print_run_report(report: BatchReport, *, as_json: bool) -> None:
    """The end of an upload or retry run: JSON, the summary, or with -q only what was not done (on stderr)."""
    if as_json:
        from amgmt.cli.render import to_json

        click.echo(to_json(report.to_dict()))
    elif not quiet():
        click.echo(summary_text(report))
    elif report.failures or report.aborted:
        lines = [
            f"{r.status:<9} {printable(r.target_name)}: {printable(r.error_message or '')}" for r in report.failures
        ]
        if report.aborted:
            lines.append(f"stopped early: {printable(report.aborted)}")
        click.echo("\n".join(lines), err=True)


def summary_text(report: BatchReport) -> str:
    """The text summary of an upload or retry run."""
    data = report.to_dict()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.counts().items())) or "nothing done"
    ratio = f"{data['compression_ratio']:.2f}" if data["compression_ratio"] else "-"
    speed = data["throughput_bytes_per_second"]
    lines = [
        f"{counted(report.planned, 'entry')} in {human_duration(report.wall_seconds)}: {counts}",
        f"{human_size(report.bytes_in)} in, {human_size(report.bytes_out)} out (ratio {ratio}), {human_size(speed)}/s"
        if speed
        else f"{human_size(report.bytes_in)} in",
    ]
    for note in report.ignored:
        lines.append(f"ignored: {printable(note)}")
    if report.excluded:
        lines.append(f"excluded by the filters: {counted(len(report.excluded), 'entry')}")
    if report.elsewhere:
        lines.append(f"left to other runs (claimed or ended there): {counted(len(report.elsewhere), 'entry')}")
    recovery = report.recovery
    if recovery is not None:  # what this run repaired of a dead run before its first entry
        for target in recovery.finished_moves:
            lines.append(f"recovered: the interrupted move of {printable(target)} was finished")
        for leftover in recovery.move_leftovers:
            lines.append(f"recovered: {printable(leftover['path'])}: {printable(leftover['action'])}")
    if report.failures:
        lines.append("not done:")
        for r in report.failures:
            lines.append(f"  {r.status:<9} {printable(r.target_name)}: {printable(r.error_message or '')}")
    if report.aborted:
        lines.append(f"stopped early: {printable(report.aborted)}")
    if report.interrupted:
        lines.append("interrupted: entries in progress were cancelled and cleaned up; run again to finish")
    return "\n".join(lines)


async def create_local_bucket(endpoint_url: str, bucket: str) -> None:
    # aioboto3 loads only when a server runs, not for --help
    from amgmt.bench.localserver import LOCAL_KEYS, LOCAL_REGION
    from amgmt.s3 import ClientOptions, S3Bucket

    options = ClientOptions(
        bucket=bucket,
        endpoint_url=endpoint_url,
        region=LOCAL_REGION,
        checksum_algorithm="md5",  # creates a bucket only: nothing to probe
        addressing_style="path",
        max_connections=2,
        local_credentials=LOCAL_KEYS,
    )
    async with S3Bucket.connect(options) as s3:
        await s3.create_bucket()
