"""`amgmt db migrate --to URL`: the SQLite history copied into a PostgreSQL database (amgmt.store.copy)."""

from __future__ import annotations

from typing import Any

import asyncclick as click

from amgmt.cli.common import say, settings_from, settings_options
from amgmt.cli.render import to_json
from amgmt.errors import NotFoundError
from amgmt.text import counted


@click.group("db")
async def db() -> None:
    """The metadata database: copy the SQLite history into PostgreSQL."""


@db.command("migrate")
@settings_options
@click.option(
    "--to",
    "to_url",
    required=True,
    metavar="URL",
    help="The PostgreSQL database to copy into: postgresql://USER@HOST[:PORT]/DB (its tables made if new).",
)
@click.option("--json", "as_json", is_flag=True, help="What was copied and found, as JSON.")
async def migrate(to_url: str, as_json: bool, **kwargs: Any) -> None:
    """Copy every operation, file record and multipart journal row of the SQLite database (MGMT_DB_PATH) into the
    PostgreSQL database at URL, then count them there.

    Running it again changes nothing (records are upserted by id); records without a host get MGMT_HOST_ID. The
    SQLite file is left as it is: point MGMT_DB_URL at URL to use the copy.
    """
    from amgmt.store import metadata_store, sqlite_store
    from amgmt.store.copy import copy_records

    kwargs.pop("db_url", None)
    settings = settings_from(kwargs, require_bucket=False, extra={"db_url": to_url})
    if not settings.db_path.exists():
        raise NotFoundError(f"no metadata database at {settings.db_path} (nothing to copy)")
    async with sqlite_store(settings) as source, metadata_store(settings) as target:
        report = await copy_records(source, target)
        where_from, where_to = source.where, target.where
    if as_json:
        click.echo(to_json({"from": where_from, "to": where_to, "verified": report.verified, **vars(report)}))
        return
    say(
        f"copied {counted(report.operations, 'operation')} ({counted(report.file_records, 'file record')}) and "
        f"{counted(report.multipart_uploads, 'journaled multipart upload')} "
        f"({counted(report.upload_parts, 'part')}) from {where_from} into {where_to}; every one found there"
    )


def register(group: click.Group) -> None:
    group.add_command(db)
