"""`amgmt fleet`: the hosts that share the catalog, from their records (amgmt.store.Store.host_activity) and their
runs' leases and claims (Store.recent_runs)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncclick as click

from amgmt.cli.common import open_store, settings_options
from amgmt.cli.render import local_time, table, to_json
from amgmt.store import HostActivity, RunSeen
from amgmt.text import human_size, iso_utc, printable

WINDOW = timedelta(hours=1)


@click.command("fleet")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="The hosts as JSON.")
async def fleet(as_json: bool, **kwargs: Any) -> None:
    """The hosts that recorded uploads in this catalog: when each was last seen, its pending uploads, and what it
    finished in the last hour.

    Built from the records (MGMT_HOST_ID on each operation): "last seen" is the newest start or end of one of the
    host's uploads; "pending" counts uploads in flight, or left by a run that died and no run has repaired yet.
    With PostgreSQL, also from the runs' leases: each host's last heartbeat, its runs going now and the entries
    they hold claimed (in flight), then every run of the last hour (running, ended, or lost: its lease ran out).
    """
    now = datetime.now(UTC)
    async with await open_store(kwargs) as store:
        hosts = await store.host_activity(since=now - WINDOW)
        runs = await store.recent_runs(within=WINDOW.total_seconds()) if store.shared else []
    seconds = WINDOW.total_seconds()
    by_host: dict[str | None, list[RunSeen]] = {}
    for run in runs:
        by_host.setdefault(run.host_id, []).append(run)
    known = {h.host_id for h in hosts}
    for host_id, seen in by_host.items():  # a run that has recorded nothing yet still shows its host
        if host_id not in known:
            hosts.append(HostActivity(host_id, _when(seen[0].heartbeat_at), 0, 0, 0, 0))
    if as_json:
        click.echo(to_json([_host_json(h, by_host.get(h.host_id, []), seconds) for h in hosts]))
        return
    if not hosts:
        click.echo("no uploads recorded")
        return
    rows = []
    for h in hosts:
        alive = [r for r in by_host.get(h.host_id, []) if r.alive]
        rows.append(
            (
                h.host_id if h.host_id is not None else "(unrecorded)",
                local_time(h.last_seen),
                _heartbeat(by_host.get(h.host_id, [])),
                len(alive),
                sum(r.in_flight for r in alive),
                h.pending,
                h.done,
                h.failed,
                f"{human_size(h.bytes_done / seconds)}/s",
            )
        )
    headers = ["HOST", "LAST SEEN", "HEARTBEAT", "RUNS", "IN FLIGHT", "PENDING", "DONE 1H", "FAILED 1H"]
    click.echo(table([*headers, "THROUGHPUT 1H"], rows))
    if runs:
        click.echo("")
        run_rows = [
            (
                r.run_id[:8],
                r.host_id or "(unrecorded)",
                r.pid,
                printable(r.local_dir),
                local_time(_when(r.started_at)),
                f"{r.now - r.heartbeat_at:.0f}s ago",
                r.in_flight,
                "running" if r.alive else ("ended" if r.ended_at is not None else "lost (lease ran out)"),
            )
            for r in runs
        ]
        click.echo(table(["RUN", "HOST", "PID", "LOCAL DIR", "STARTED", "HEARTBEAT", "IN FLIGHT", "STATE"], run_rows))


def _when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def _heartbeat(runs: list[RunSeen]) -> str:
    """How long ago the host's newest run beat (the database's clock), or - without runs."""
    if not runs:
        return "-"
    newest = max(runs, key=lambda r: r.heartbeat_at)
    return f"{newest.now - newest.heartbeat_at:.0f}s ago"


def _host_json(h: HostActivity, runs: list[RunSeen], seconds: float) -> dict[str, Any]:
    alive = [r for r in runs if r.alive]
    return {
        "host_id": h.host_id,
        "last_seen": iso_utc(h.last_seen),
        "last_heartbeat": iso_utc(_when(max(r.heartbeat_at for r in runs))) if runs else None,
        "runs_alive": len(alive),
        "in_flight": sum(r.in_flight for r in alive),
        "pending": h.pending,
        "done_last_hour": h.done,
        "failed_last_hour": h.failed,
        "bytes_last_hour": h.bytes_done,
        "bytes_per_second_last_hour": round(h.bytes_done / seconds, 1),
        "runs": [
            {
                "run_id": r.run_id,
                "pid": r.pid,
                "local_dir": r.local_dir,
                "dir_id": r.dir_id,
                "started_at": iso_utc(_when(r.started_at)),
                "last_heartbeat": iso_utc(_when(r.heartbeat_at)),
                "ended_at": iso_utc(_when(r.ended_at)) if r.ended_at is not None else None,
                "alive": r.alive,
                "in_flight": r.in_flight,
            }
            for r in runs
        ],
    }


def register(group: click.Group) -> None:
    group.add_command(fleet)
