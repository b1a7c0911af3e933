"""The amgmt command line: a thin layer that parses options, calls the library and renders the result.

One handler (AmgmtGroup.invoke) turns amgmt's own errors into one line on stderr and a documented exit code.
Command modules load on first use (COMMANDS), so `amgmt --help` never imports boto, moto or sqlite.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import asyncclick as click
from asyncclick.utils import make_default_short_help

from amgmt import __version__
from amgmt.cli.common import EXIT_CODES_HELP, LOCAL_DIR, QUIET, log_path
from amgmt.errors import AmgmtError, ExitCode

if TYPE_CHECKING:
    from asyncclick.shell_completion import CompletionItem


class LazyCommand(NamedTuple):
    """A command the group lists without importing it: the module whose `register(group)` adds it, and its short
    help (the first sentence of its own help; tests/unit/cli/test_cli_commands.py keeps the two equal)."""

    module: str
    short_help: str


# Every command of `amgmt`. A module that registers several commands appears once per command.
COMMANDS: Mapping[str, LazyCommand] = {
    "upload": LazyCommand("amgmt.cli.upload", "Pack, upload, verify and move entries of the local dir."),
    "watch": LazyCommand(
        "amgmt.cli.watch_cmd", "Upload each entry of the local dir once it has settled, until stopped."
    ),
    "history": LazyCommand(
        "amgmt.cli.history",
        "Past operations, newest first: what was uploaded, where, when, how big, whether it verified.",
    ),
    "show": LazyCommand("amgmt.cli.history", "One operation in full."),
    "ls": LazyCommand(
        "amgmt.cli.browse", "List the local entries with their last upload, and the objects under the prefix."
    ),
    "search": LazyCommand(
        "amgmt.cli.browse",
        "Find local entries, objects and files inside directory archives whose name contains KEYWORD "
        "(case-insensitive).",
    ),
    "stats": LazyCommand(
        "amgmt.cli.browse",
        "Upload totals from the metadata database: bytes per day and week, ratio, throughput, failures by reason.",
    ),
    "retry": LazyCommand(
        "amgmt.cli.maintenance",
        "Upload again the entries of failed, cancelled or partial operations (ids or unique id prefixes).",
    ),
    "cleanup": LazyCommand(
        "amgmt.cli.maintenance",
        "Abort unfinished multipart uploads under the prefix, remove stale staging archives, and close the records "
        "of runs that died; says how many bytes they held.",
    ),
    "download": LazyCommand(
        "amgmt.cli.objects",
        "Download an object, verify it against its upload record, and keep the .tar.gz or extract it.",
    ),
    "status": LazyCommand(
        "amgmt.cli.objects",
        "What amgmt recorded about an object (every operation on it, newest first) beside the object's HEAD.",
    ),
    "delete": LazyCommand(
        "amgmt.cli.objects",
        "Delete an object from the bucket after showing it and asking for confirmation; its records stay.",
    ),
    "verify": LazyCommand(
        "amgmt.cli.verify_cmd",
        "Check again that the objects recorded as uploaded are in the bucket as uploaded.",
    ),
    "config": LazyCommand(
        "amgmt.cli.config_cmd",
        "Show the effective settings (flag > MGMT_* environment > config file > default) and their sources, or "
        "change them.",
    ),
    "fleet": LazyCommand(
        "amgmt.cli.fleet_cmd",
        "The hosts that recorded uploads in this catalog: when each was last seen, its pending uploads, and what it "
        "finished in the last hour.",
    ),
    "db": LazyCommand("amgmt.cli.db_cmd", "The metadata database: copy the SQLite history into PostgreSQL."),
    "log": LazyCommand(
        "amgmt.cli.log_cmd", "Print the last lines of amgmt's log file, and with --follow the new ones."
    ),
    "local-s3": LazyCommand(
        "amgmt.cli.localserver_cmd",
        "Start a local S3 server (moto) on 127.0.0.1 and keep it running until Ctrl-C.",
    ),
    "demo": LazyCommand(
        "amgmt.cli.demo",
        "Make a sample media folder, start a local S3 server on 127.0.0.1, run `amgmt upload all --concurrency N` "
        "against it, then `amgmt history`.",
    ),
    "benchmark": LazyCommand(
        "amgmt.cli.benchmark_cmd",
        "Time the real upload pipeline on a generated data set, against the origin's design.",
    ),
}


class AmgmtGroup(click.Group):
    """A group whose commands in `lazy_commands` are imported only when one of them is looked up (to run it or show
    its help); listing them in the group's help uses the table alone."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, LazyCommand] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: Mapping[str, LazyCommand] = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands.keys() | self.lazy_commands.keys())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            importlib.import_module(self.lazy_commands[cmd_name].module).register(self)
        command = self.commands.get(cmd_name)
        if command is not None:
            add_global_flags(command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own version calls get_command for every name, which would import them all.
        names = self.list_commands(ctx)
        visible = [n for n in names if n not in self.commands or not self.commands[n].hidden]
        if not visible:
            return
        limit = formatter.width - 6 - max(len(n) for n in visible)
        rows = [
            (
                name,
                self.commands[name].get_short_help_str(limit)
                if name in self.commands
                else make_default_short_help(self.lazy_commands[name].short_help, limit),
            )
            for name in visible
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        # click's own version calls get_command for every matching name, which would import them all.
        from asyncclick.shell_completion import CompletionItem

        items = [
            CompletionItem(
                name,
                help=self.commands[name].get_short_help_str()
                if name in self.commands
                else self.lazy_commands[name].short_help,
            )
            for name in self.list_commands(ctx)
            if name.startswith(incomplete) and not (name in self.commands and self.commands[name].hidden)
        ]
        return items + click.Command.shell_complete(self, ctx, incomplete)  # the group's own options

    async def invoke(self, ctx: click.Context) -> Any:
        words = [*ctx.protected_args, *ctx.args]
        command_log = None
        if words and not {"-h", "--help"} & set(words):
            ctx.meta[_LOGGING] = True
            _log_as_flagged(ctx)
            from amgmt.cli.command_log import CommandLog, changing_command

            name = changing_command(words)
            if name is not None:
                command_log = CommandLog(name, words)
                command_log.started()
        # Unless the command ends some other way: a cancellation or a second Ctrl-C.
        code, error = int(ExitCode.INTERRUPTED), cast("str | None", "interrupted")
        try:
            result = await super().invoke(ctx)
            code, error = 0, None
            return result
        except AmgmtError as exc:
            error = " ".join(str(exc).split())
            code = int(exc.exit_code)
            click.echo(f"amgmt: error: {error}", err=True)
            raise click.exceptions.Exit(code) from None
        except KeyboardInterrupt:
            click.echo("amgmt: interrupted", err=True)
            raise click.exceptions.Exit(int(ExitCode.INTERRUPTED)) from None
        except click.exceptions.Exit as exc:
            code, error = exc.exit_code, None
            raise
        except click.ClickException as exc:
            code, error = exc.exit_code, " ".join(exc.format_message().split())
            raise
        except Exception as exc:
            code, error = 1, f"internal error: {type(exc).__name__}"
            raise
        finally:
            if command_log is not None:
                command_log.ended(code, error, ctx.find_root().meta.get(LOCAL_DIR))


# -v/--verbose, --debug and -q/--quiet: accepted before the command (`amgmt -v upload`) and after it (`amgmt upload
# all -v`); each one sets a flag in the root context's meta, where setup_logging and cli.common.quiet read it.
_VERBOSE, _DEBUG, _LOGGING = "amgmt.verbose", "amgmt.debug", "amgmt.logging"


def _log_as_flagged(ctx: click.Context) -> None:
    meta = ctx.find_root().meta
    if meta.get(_LOGGING):
        setup_logging(bool(meta.get(_VERBOSE)), bool(meta.get(_DEBUG)))


def _set_flag(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    key = {"verbose": _VERBOSE, "debug": _DEBUG, "quiet": QUIET}[param.name or ""]
    ctx.find_root().meta[key] = True
    if key != QUIET:
        _log_as_flagged(ctx)  # given after the command: the group already set logging up without it


def global_flags() -> list[click.Option]:
    return [
        click.Option(
            ["-v", "--verbose"],
            is_flag=True,
            expose_value=False,
            callback=_set_flag,
            help="Also print the log's INFO lines on stderr.",
        ),
        click.Option(
            ["--debug"],
            is_flag=True,
            expose_value=False,
            callback=_set_flag,
            help="Log DEBUG lines too, and print them on stderr.",
        ),
        click.Option(
            ["-q", "--quiet"],
            is_flag=True,
            expose_value=False,
            callback=_set_flag,
            help="Print only errors, failures and what was asked for (no progress, summaries or notes).",
        ),
    ]


def add_global_flags(command: click.Command) -> None:
    """Give `command` (and a group's subcommands) -v/--verbose, --debug and -q/--quiet, unless it has its own."""
    taken = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    names = {param.name for param in command.params}
    for option in global_flags():
        if option.name not in names and not taken & set(option.opts):
            command.params.append(option)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_global_flags(sub)


LOG_MAX_BYTES = 5 * 1024 * 1024
LOG_BACKUPS = 3
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool = False, debug: bool = False) -> None:
    """The `amgmt` logger writes INFO (DEBUG with --debug) to the rotating log file; -v/--debug also to stderr.
    A log file that cannot be opened costs one warning, never the command."""
    from logging.handlers import RotatingFileHandler

    logger = logging.getLogger("amgmt")
    for handler in [h for h in logger.handlers if getattr(h, "_amgmt", False)]:
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    formatter = logging.Formatter(_LOG_FORMAT)
    handlers: list[logging.Handler] = []
    path = log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handlers.append(
            RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8", delay=True)
        )
    except OSError as exc:
        click.echo(f"amgmt: warning: cannot open the log file {path}: {exc.strerror or exc}", err=True)
    if verbose or debug:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._amgmt = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


@click.group(
    cls=AmgmtGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(__version__, prog_name="amgmt")
async def cli() -> None:
    """Pack media entries as tar.gz, upload them to S3 concurrently, verify them, and keep a record.

    \b
    Quick start:
      export MGMT_BUCKET=my-bucket MGMT_LOCAL_DIR=~/media
      amgmt upload all --concurrency 8
      amgmt history
    Settings come from flags, MGMT_* variables, then ~/.config/amgmt/config (see `amgmt config`).
    """


cli.params.extend(global_flags())


def _return_freed_buffers() -> None:
    # Part buffers (MiBs each) are allocated in reader threads and freed on the event loop: glibc would keep them in
    # per-thread arenas and raise its mmap threshold, so RSS grew to several times the byte budget (measured: 829
    # MiB peak for 8 x 1 GiB at -c 8). Allocations of 1 MiB and more from mmap go back to the OS when freed.
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD (a fixed value also stops glibc's dynamic raising)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def main() -> None:
    _return_freed_buffers()
    # Python's own "Exception ignored" noise on a closed stdout (amgmt history | head) is not an error.
    try:
        cli(prog_name="amgmt", _anyio_backend="asyncio")
    except KeyboardInterrupt:  # a Ctrl-C before a command's own signal handling is in place
        print("amgmt: interrupted", file=sys.stderr)
        sys.exit(int(ExitCode.INTERRUPTED))
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
