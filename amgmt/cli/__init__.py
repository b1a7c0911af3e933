"""The amgmt command line: a thin layer that parses options, calls the library and renders the result.

One handler (AmgmtGroup.invoke) turns amgmt's own errors into one line on stderr and a documented exit code.
Command modules load on first use (COMMANDS), so `amgmt --help` never imports boto, moto or sqlite.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import asyncclick as click
from asyncclick.utils import make_default_short_help

from amgmt import __version__
from amgmt.errors import AmgmtError, ExitCode

if TYPE_CHECKING:
    from amgmt.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = (
    "Exit codes: 0 all done; 1 an entry failed or is partial; 2 bad input or configuration; "
    "3 S3 unreachable/unusable (run stopped); 4 metadata database unusable; 5 another run holds the local dir; 130 interrupted."
)


class LazyCommand(NamedTuple):
    """A command the group lists without importing it: the module whose `register(group)` adds it, and its short
    help (the first sentence of its own help; tests/unit/test_cli_commands.py keeps the two equal)."""

    module: str
    short_help: str


# Every command of `amgmt`. A module that registers several commands appears once per command.
COMMANDS: Mapping[str, LazyCommand] = {
    "upload": LazyCommand("amgmt.cli.upload", "Pack, upload, verify and move entries of the local dir."),
    "history": LazyCommand(
        "amgmt.cli.history",
        "Past operations, newest first: what was uploaded, where, when, how big, whether it verified.",
    ),
    "show": LazyCommand("amgmt.cli.history", "One operation in full."),
    "retry": LazyCommand(
        "amgmt.cli.maintenance",
        "Upload again the entries of failed, cancelled or partial operations (ids or unique id prefixes).",
    ),
    "cleanup": LazyCommand(
        "amgmt.cli.maintenance",
        "Abort unfinished multipart uploads under the prefix, remove stale staging archives, and close the records "
        "of runs that died; says how many bytes they held.",
    ),
    "config": LazyCommand(
        "amgmt.cli.config_cmd",
        "Show the effective settings (flag > MGMT_* environment > config file > default) and their sources.",
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
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own version calls get_command for every name, which would import them all.
        names = self.list_commands(ctx)
        visible = [n for n in names if n not in self.commands or not self.commands[n].hidden]
        if not visible:
            return
        limit = formatter.width - 6 - max(len(n) for n in visible)
        rows = [
            (name, self.commands[name].get_short_help_str(limit) if name in self.commands
             else make_default_short_help(self.lazy_commands[name].short_help, limit))
            for name in visible
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    async def invoke(self, ctx: click.Context) -> Any:
        try:
            return await super().invoke(ctx)
        except AmgmtError as exc:
            click.echo(f"amgmt: error: {' '.join(str(exc).split())}", err=True)
            raise click.exceptions.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            click.echo("amgmt: interrupted", err=True)
            raise click.exceptions.Exit(int(ExitCode.INTERRUPTED)) from None


def settings_options(func: F) -> F:
    """The options every command shares; they override MGMT_* variables and the config file."""
    options = [
        click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
                     help="Config file (KEY=VALUE lines). Default: ~/.config/amgmt/config, else ~/.config/mgmt/config."),
        click.option("--local-dir", type=str, default=None, help="Folder holding the entries [MGMT_LOCAL_DIR, default: .]."),
        click.option("--completed-dir", type=str, default=None,
                     help="Where originals go once verified [MGMT_COMPLETED_DIR, default: LOCAL_DIR/completed]."),
        click.option("--bucket", type=str, default=None, help="Destination bucket [MGMT_BUCKET]."),
        click.option("--prefix", "object_prefix", type=str, default=None, help="Key prefix [MGMT_OBJECT_PREFIX]."),
        click.option("--endpoint-url", type=str, default=None,
                     help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 [MGMT_ENDPOINT_URL]."),
        click.option("--profile", type=str, default=None, help="AWS profile for credentials [MGMT_PROFILE]."),
        click.option("--region", type=str, default=None, help="AWS region [MGMT_REGION]."),
        click.option("--db", "db_path", type=str, default=None,
                     help="Metadata database [MGMT_DB_PATH, default: COMPLETED_DIR/.metadata/operations.db]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


SETTINGS_FLAGS = ("local_dir", "completed_dir", "bucket", "object_prefix", "endpoint_url", "profile", "region",
                  "db_path")


def settings_from(kwargs: dict[str, Any], *, require_bucket: bool, extra: dict[str, Any] | None = None) -> Settings:
    """Settings from the shared options in `kwargs` (popped), plus command-specific flags."""
    from amgmt.settings import load_settings  # not needed by `amgmt --help`

    flags = {name: kwargs.pop(name, None) for name in SETTINGS_FLAGS}
    flags.update(extra or {})
    config_path = kwargs.pop("config_path", None)
    return load_settings(flags=flags, environ=os.environ, config_path=config_path, require_bucket=require_bucket)


@click.group(cls=AmgmtGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EXIT_CODES_HELP)
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


def _spare_workers_the_cli() -> None:
    """Before its first job, each of anyio's worker processes (the compression pool) re-runs the file of the parent's
    `__main__` module (anyio/to_process.py, "init"). Here that file is the `amgmt` console script or
    amgmt/__main__.py, which import this CLI; a worker needs only what unpickling its job imports (amgmt.archive).
    Without a `__file__`, anyio skips that step, as it does for `python -c`. The process is the CLI's from here on."""
    main_module = sys.modules.get("__main__")
    if main_module is not None and hasattr(main_module, "__file__"):
        del main_module.__file__


def _quiet_worker_reaping() -> None:
    # Python 3.11's child watcher logs "Unknown child process pid N" when anyio reaps a compression worker
    # first: a harmless race at shutdown, not something to show the user.
    logging.getLogger("asyncio").addFilter(lambda rec: "Unknown child process pid" not in rec.getMessage())


def main() -> None:
    _spare_workers_the_cli()
    _quiet_worker_reaping()
    # Python's own "Exception ignored" noise on a closed stdout (amgmt history | head) is not an error.
    try:
        cli(prog_name="amgmt", _anyio_backend="asyncio")
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
