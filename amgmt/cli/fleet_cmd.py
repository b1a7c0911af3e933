"""`amgmt fleet`: the hosts that share the catalog, from their records (amgmt.store.Store.host_activity)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncclick as click

from amgmt.cli.common import open_store, settings_options
from amgmt.cli.render import local_time, table, to_json
from amgmt.text import human_size, iso_utc

WINDOW = timedelta(hours=1)


@click.command("fleet")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="The hosts as JSON.")
async def fleet(as_json: bool, **kwargs: Any) -> None:
    """The hosts that recorded uploads in this catalog: when each was last seen, its pending uploads, and what it
    finished in the last hour.

    Built from the records (MGMT_HOST_ID on each operation): "last seen" is the newest start or end of one of the
    host's uploads; "pending" counts uploads in flight, or left by a run that died and no run has repaired yet.
    """
    now = datetime.now(UTC)
    async with await open_store(kwargs) as store:
        hosts = await store.host_activity(since=now - WINDOW)
    seconds = WINDOW.total_seconds()
    if as_json:
        click.echo(
            to_json(
                [
                    {
                        "host_id": h.host_id,
                        "last_seen": iso_utc(h.last_seen),
                        "pending": h.pending,
                        "done_last_hour": h.done,
                        "failed_last_hour": h.failed,
                        "bytes_last_hour": h.bytes_done,
                        "bytes_per_second_last_hour": round(h.bytes_done / seconds, 1),
                    }
                    for h in hosts
                ]
            )
        )
        return
    if not hosts:
        click.echo("no uploads recorded")
        return
    rows = [
        (
            h.host_id if h.host_id is not None else "(unrecorded)",
            local_time(h.last_seen),
            h.pending,
            h.done,
            h.failed,
            f"{human_size(h.bytes_done / seconds)}/s",
        )
        for h in hosts
    ]
    click.echo(table(["HOST", "LAST SEEN", "PENDING", "DONE 1H", "FAILED 1H", "THROUGHPUT 1H"], rows))


def register(group: click.Group) -> None:
    group.add_command(fleet)
