"""`amgmt config`: the effective settings and where each came from; `config set` and `config init` change the
config file."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import asyncclick as click

from amgmt.cli.common import say, settings_from, settings_options
from amgmt.cli.render import table, to_json
from amgmt.errors import ConfigError

# Keys that look like credentials: amgmt never stores them (they come from the standard AWS chain).
_SECRET_LIKE = re.compile(r"^AWS_|SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)


def _show_settings(kwargs: dict[str, Any], as_json: bool) -> None:
    settings = settings_from(kwargs, require_bucket=False)
    rows = settings.describe()
    if as_json:
        click.echo(to_json({key: {"value": value, "source": source} for key, value, source in rows}))
        return
    click.echo(table(["KEY", "VALUE", "SOURCE"], rows, max_width=70))
    if settings.config_file is None:
        say("(no config file found; looked for ~/.config/amgmt/config and ~/.config/mgmt/config)")


@click.group("config", invoke_without_command=True)
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
@click.pass_context
async def config(ctx: click.Context, as_json: bool, **kwargs: Any) -> None:
    """Show the effective settings (flag > MGMT_* environment > config file > default) and their sources, or
    change them.

    `amgmt config` is `amgmt config show`. AWS credentials are never read, shown or stored by amgmt: they come from
    the standard AWS chain.
    """
    if ctx.invoked_subcommand is None:
        _show_settings(kwargs, as_json)


@config.command("show")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
async def show(as_json: bool, **kwargs: Any) -> None:
    """Show the effective settings and their sources (the default of `amgmt config`)."""
    _show_settings(kwargs, as_json)


# -- writing the config file --------------------------------------------------------------------------------------


def config_target(environ: Any = None) -> Path:
    """The file `set` and `init` write: $XDG_CONFIG_HOME (or ~/.config)/amgmt/config, never the origin's
    ~/.config/mgmt/config (a new amgmt file starts as a copy of it instead: see `_write`)."""
    from amgmt.config import own_config_path

    return own_config_path(os.environ if environ is None else environ)


def setting_name(key: str) -> str:
    """The settings field of KEY (`MGMT_CONCURRENCY`, `concurrency`, `mgmt_concurrency`); ConfigError otherwise."""
    from amgmt.config import ENV_PREFIX, SETTING_NAMES, nearest_key

    shown = key if key.isprintable() and len(key) <= 80 else "the given key"
    if _SECRET_LIKE.search(key):
        raise ConfigError(
            f"{shown} looks like a credential: amgmt never stores credentials (use the AWS chain: "
            "environment, ~/.aws/credentials or --profile)"
        )
    name = key.lower()
    if name.startswith(ENV_PREFIX.lower()):
        name = name[len(ENV_PREFIX) :]
    if name not in SETTING_NAMES:
        nearest = nearest_key(key) if key.isprintable() else None
        hint = f"did you mean {nearest}? " if nearest else ""
        raise ConfigError(f"{shown} is not an amgmt setting ({hint}see `amgmt config` for the keys)")
    return name


def _write(path: Path, values: dict[str, str], *, seed_from_origin: bool) -> str:
    """Write `values` into `path`; with `seed_from_origin` (no --config), a new file starts as a copy of the config
    file amgmt reads now (the origin's), as `benchmark --tune --save` does. Returns the note about that copy, or ""."""
    from amgmt.config import default_config_path, write_config_values

    seed = default_config_path(os.environ) if seed_from_origin else None
    seeded_from = write_config_values(path, values, seed_from=seed)
    return f" (started from a copy of {seeded_from})" if seeded_from else ""


def _check_settings(
    config_path: Path | None, flags: dict[str, Any], *, require_bucket: bool, ignore_env: tuple[str, ...] = ()
) -> Any:
    """Settings loaded with `flags` over the config file, as the next run would see them."""
    from amgmt.config import env_key, load_settings

    environ = {k: v for k, v in os.environ.items() if k not in {env_key(n) for n in ignore_env}}
    return load_settings(flags=flags, environ=environ, config_path=config_path, require_bucket=require_bucket)


@config.command("set")
@click.argument("key")
@click.argument("value", required=False)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The config file to change. Default: ~/.config/amgmt/config.",
)
async def set_(key: str, value: str | None, config_path: Path | None) -> None:
    """Write KEY=VALUE (an MGMT_* setting) into the config file, after checking the value; other lines stay.

    \b
    amgmt config set MGMT_CONCURRENCY=4     (or: amgmt config set concurrency 4)
    An empty value (MGMT_OBJECT_PREFIX=) writes the key empty, which means its default."""
    if value is None:
        key, sep, value = key.partition("=")
        if not sep:
            raise ConfigError(f"give KEY=VALUE or KEY VALUE, such as MGMT_CONCURRENCY=4 (got {key!r} alone)")
    elif "=" in key:
        raise ConfigError("give KEY=VALUE or KEY VALUE, not both")
    name = setting_name(key)
    path = config_path or config_target()
    from amgmt.config import env_key

    # The value must load as the next run would read it; the environment of this shell does not count here.
    _check_settings(path if path.exists() else None, {name: value}, require_bucket=False, ignore_env=(name,))
    seeded = _write(path, {env_key(name): value}, seed_from_origin=config_path is None)
    say(f"{env_key(name)}={value} written to {path}{seeded}")
    if env_key(name) in os.environ:
        say(f"note: {env_key(name)} is set in the environment, which overrides the config file", err=True)


@config.command("init")
@click.option("--bucket", type=str, default=None, help="Destination bucket (asked when not given).")
@click.option("--prefix", "object_prefix", type=str, default=None, help="Key prefix (asked when not given).")
@click.option("--local-dir", type=str, default=None, help="Folder holding the entries (asked when not given).")
@click.option("--yes", "-y", "assume_yes", is_flag=True, help="Ask nothing: what is not given keeps its current value.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The config file to write. Default: ~/.config/amgmt/config.",
)
async def init(
    bucket: str | None, object_prefix: str | None, local_dir: str | None, assume_yes: bool, config_path: Path | None
) -> None:
    """Ask for the bucket, prefix and local dir, check the bucket is reachable, and write them to the config file."""
    path = config_path or config_target()
    current = _check_settings(path if path.exists() else None, {}, require_bucket=False)
    given = {"bucket": bucket, "object_prefix": object_prefix, "local_dir": local_dir}
    defaults = {
        "bucket": current.bucket or None,
        "object_prefix": current.object_prefix,
        "local_dir": str(current.local_dir),
    }
    labels = {"bucket": "S3 bucket", "object_prefix": "Key prefix (empty for none)", "local_dir": "Local dir"}
    for name in given:
        if given[name] is None:
            if assume_yes:
                given[name] = defaults[name]
            else:
                given[name] = await click.prompt(labels[name], default=defaults[name], show_default=True)
    if not given["bucket"]:
        raise ConfigError("a bucket is needed: give --bucket")
    settings = _check_settings(path if path.exists() else None, given, require_bucket=True)

    from amgmt.s3 import ClientOptions, S3Bucket  # not needed by `amgmt --help`

    async with S3Bucket.connect(ClientOptions.from_settings(settings)) as s3:
        await s3.check_bucket()
    from amgmt.config import env_key

    values = {
        env_key("bucket"): settings.bucket or "",
        env_key("object_prefix"): settings.object_prefix,
        env_key("local_dir"): str(settings.local_dir),
    }
    seeded = _write(path, values, seed_from_origin=config_path is None)
    say(f"bucket {settings.bucket} is reachable; wrote to {path}{seeded}:")
    for key, value in values.items():
        say(f"  {key}={value}")


def register(group: click.Group) -> None:
    group.add_command(config)
