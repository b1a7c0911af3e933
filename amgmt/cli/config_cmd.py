"""`amgmt config`: the effective settings and where each came from; `config set` and `config init` change the
config file."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import asyncclick as click

from amgmt.cli import settings_from, settings_options
from amgmt.cli.render import table, to_json
from amgmt.errors import ConfigError

# Keys that look like credentials: amgmt never stores them (they come from the standard AWS chain).
_SECRET_LIKE = re.compile(r"^AWS_|SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
_LINE_KEY = re.compile(r"^\s*(export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


def _show_settings(kwargs: dict[str, Any], as_json: bool) -> None:
    settings = settings_from(kwargs, require_bucket=False)
    rows = settings.describe()
    if as_json:
        click.echo(to_json({key: {"value": value, "source": source} for key, value, source in rows}))
        return
    click.echo(table(["KEY", "VALUE", "SOURCE"], rows, max_width=70))
    if settings.config_file is None:
        click.echo("(no config file found; looked for ~/.config/amgmt/config and ~/.config/mgmt/config)")


@click.group("config", invoke_without_command=True)
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
@click.pass_context
async def config(ctx: click.Context, as_json: bool, **kwargs: Any) -> None:
    """Show the effective settings (flag > MGMT_* environment > config file > default) and their sources, or change them.

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
    """The file `set` and `init` write: the config file in use, else $XDG_CONFIG_HOME (or ~/.config)/amgmt/config."""
    from amgmt.settings import config_home, default_config_path

    environ = os.environ if environ is None else environ
    found = default_config_path(environ)
    if found is not None:
        return found
    base = config_home(environ)
    if base is None:
        raise ConfigError("cannot tell where the config file goes: HOME is not set (give --config PATH)")
    return base / "amgmt" / "config"


def setting_name(key: str) -> str:
    """The settings field of KEY (`MGMT_CONCURRENCY`, `concurrency`, `mgmt_concurrency`); ConfigError otherwise."""
    from amgmt.settings import ENV_PREFIX, SETTING_NAMES

    shown = key if key.isprintable() and len(key) <= 80 else "the given key"
    if _SECRET_LIKE.search(key):
        raise ConfigError(f"{shown} looks like a credential: amgmt never stores credentials (use the AWS chain: "
                          "environment, ~/.aws/credentials or --profile)")
    name = key.lower()
    if name.startswith(ENV_PREFIX.lower()):
        name = name[len(ENV_PREFIX):]
    if name not in SETTING_NAMES:
        raise ConfigError(f"{shown} is not an amgmt setting (see `amgmt config` for the keys)")
    return name


def _quoted(value: str) -> str:
    if any(not ch.isprintable() for ch in value):
        raise ConfigError("the value holds control characters")
    if value == value.strip() and not re.search(r"\s#", value) and value[:1] not in ("'", '"'):
        return value
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise ConfigError("the value holds both kinds of quotes")


def updated_text(text: str, values: dict[str, str]) -> str:
    """`text` with KEY=VALUE for each of `values`: the first line of a key replaced where it stands (keeping an
    `export ` prefix), its later repeats dropped, new keys appended; every other line and comment kept."""
    lines = text.splitlines()
    out: list[str] = []
    done: set[str] = set()
    for line in lines:
        match = _LINE_KEY.match(line)
        key = match.group(2) if match else None
        if key in values:
            if key not in done:
                out.append(f"{match.group(1) or ''}{key}={_quoted(values[key])}")  # type: ignore[union-attr]
                done.add(key)
            continue
        out.append(line)
    out += [f"{key}={_quoted(value)}" for key, value in values.items() if key not in done]
    return "\n".join(out) + "\n"


def write_config(path: Path, values: dict[str, str]) -> None:
    """Write `values` into the config file at `path` atomically; a new file is 0600 in a 0700 directory."""
    from amgmt.settings import parse_config_file

    try:
        if path.exists():
            parse_config_file(path)  # a malformed file is reported, not rewritten
            text = path.read_text(encoding="utf-8-sig")
            mode = path.stat().st_mode & 0o777
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            text, mode = "", 0o600
        new = updated_text(text, values)
        fd, tmp = tempfile.mkstemp(prefix=".config.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(new)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot write the config file {path}: {exc.strerror or exc}") from exc


def _check_settings(config_path: Path | None, flags: dict[str, Any], *, require_bucket: bool,
                    ignore_env: tuple[str, ...] = ()) -> Any:
    """Settings loaded with `flags` over the config file, as the next run would see them."""
    from amgmt.settings import env_key, load_settings

    environ = {k: v for k, v in os.environ.items() if k not in {env_key(n) for n in ignore_env}}
    return load_settings(flags=flags, environ=environ, config_path=config_path, require_bucket=require_bucket)


@config.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="The config file to change. Default: the one in use, else ~/.config/amgmt/config.")
async def set_(key: str, value: str, config_path: Path | None) -> None:
    """Write KEY=VALUE (an MGMT_* setting) into the config file, after checking the value; other lines stay."""
    name = setting_name(key)
    path = config_path or config_target()
    from amgmt.settings import env_key

    # The value must load as the next run would read it; the environment of this shell does not count here.
    _check_settings(path if path.exists() else None, {name: value}, require_bucket=False, ignore_env=(name,))
    write_config(path, {env_key(name): value})
    click.echo(f"{env_key(name)}={value} written to {path}")
    if env_key(name) in os.environ:
        click.echo(f"note: {env_key(name)} is set in the environment, which overrides the config file", err=True)


@config.command("init")
@click.option("--bucket", type=str, default=None, help="Destination bucket (asked when not given).")
@click.option("--prefix", "object_prefix", type=str, default=None, help="Key prefix (asked when not given).")
@click.option("--local-dir", type=str, default=None, help="Folder holding the entries (asked when not given).")
@click.option("--yes", "-y", "assume_yes", is_flag=True,
              help="Ask nothing: what is not given keeps its current value.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="The config file to write. Default: the one in use, else ~/.config/amgmt/config.")
async def init(bucket: str | None, object_prefix: str | None, local_dir: str | None, assume_yes: bool,
               config_path: Path | None) -> None:
    """Ask for the bucket, prefix and local dir, check the bucket is reachable, and write them to the config file."""
    path = config_path or config_target()
    current = _check_settings(path if path.exists() else None, {}, require_bucket=False)
    given = {"bucket": bucket, "object_prefix": object_prefix, "local_dir": local_dir}
    defaults = {"bucket": current.bucket or None, "object_prefix": current.object_prefix,
                "local_dir": str(current.local_dir)}
    labels = {"bucket": "S3 bucket", "object_prefix": "Key prefix (empty for none)", "local_dir": "Local dir"}
    for name in given:
        if given[name] is None:
            if assume_yes:
                given[name] = defaults[name]
            else:
                given[name] = click.prompt(labels[name], default=defaults[name], show_default=True)
    if not given["bucket"]:
        raise ConfigError("a bucket is needed: give --bucket")
    settings = _check_settings(path if path.exists() else None, given, require_bucket=True)

    from amgmt.s3 import ClientOptions, S3Bucket  # not needed by `amgmt --help`

    async with S3Bucket.connect(ClientOptions.from_settings(settings)) as s3:
        await s3.check_bucket()
    from amgmt.settings import env_key

    values = {env_key("bucket"): settings.bucket or "", env_key("object_prefix"): settings.object_prefix,
              env_key("local_dir"): str(settings.local_dir)}
    write_config(path, values)
    click.echo(f"bucket {settings.bucket} is reachable; wrote to {path}:")
    for key, value in values.items():
        click.echo(f"  {key}={value}")


def register(group: click.Group) -> None:
    group.add_command(config)
