"""`amgmt config`: the effective settings and where each came from."""

from __future__ import annotations

from typing import Any

import asyncclick as click

from amgmt.cli import settings_from, settings_options
from amgmt.cli.render import table, to_json


@click.command("config")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
async def config(as_json: bool, **kwargs: Any) -> None:
    """Show the effective settings (flag > MGMT_* environment > config file > default) and their sources.

    AWS credentials are never read, shown or stored by amgmt: they come from the standard AWS chain.
    """
    settings = settings_from(kwargs, require_bucket=False)
    rows = settings.describe()
    if as_json:
        click.echo(to_json({key: {"value": value, "source": source} for key, value, source in rows}))
        return
    click.echo(table(["KEY", "VALUE", "SOURCE"], rows, max_width=70))
    if settings.config_file is None:
        click.echo("(no config file found; looked for ~/.config/amgmt/config and ~/.config/mgmt/config)")


def register(group: click.Group) -> None:
    group.add_command(config)
