"""The amgmt command line: a thin layer that parses options, calls the library and renders the result.

One handler (AmgmtGroup.invoke) turns amgmt's own errors into one line on stderr and a documented exit code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncclick as click

from amgmt import __version__
from amgmt.errors import AmgmtError, ExitCode
from amgmt.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = (
    "Exit codes: 0 all done; 1 an entry failed or is partial; 2 bad input or configuration; "
    "3 S3 unreachable/unusable (run stopped); 4 metadata database unusable; 5 another run holds the local dir; 130 interrupted."
)


class AmgmtGroup(click.Group):
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
    flags = {name: kwargs.pop(name, None) for name in SETTINGS_FLAGS}
    flags.update(extra or {})
    config_path = kwargs.pop("config_path", None)
    return load_settings(flags=flags, environ=os.environ, config_path=config_path, require_bucket=require_bucket)


@click.group(cls=AmgmtGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
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


def _register() -> None:
    from amgmt.cli import benchmark_cmd, config_cmd, demo, history, localserver_cmd, maintenance, upload

    for module in (upload, history, maintenance, config_cmd, localserver_cmd, demo, benchmark_cmd):
        module.register(cli)


_register()


def main() -> None:
    # Python's own "Exception ignored" noise on a closed stdout (amgmt history | head) is not an error.
    try:
        cli(prog_name="amgmt", _anyio_backend="asyncio")
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
