"""`amgmt watch`: the local dir uploading itself, one line per finished entry; `--status` for the running one."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import asyncclick as click

from amgmt.cli.common import hook_option, run_stoppable, settings_from, settings_options
from amgmt.cli.object_options import object_args, object_options, pop_object_flags
from amgmt.cli.render import local_time, to_json
from amgmt.naming import display
from amgmt.text import human_duration, human_size, printable
from amgmt.upload.watch import RESCAN_DEFAULT, Watch, WatchOptions
from amgmt.upload.watch_status import read_state

WATCH_EXIT_HELP = (
    "Exit codes: 0 stopped (SIGTERM, Ctrl-C) with nothing failed; 1 an entry failed for good (left for `amgmt retry`);"
    " 2 bad input or configuration; 3 S3 unreachable/unusable; 4 metadata database unusable; 5 another run holds the"
    " local dir; 130 a second signal. With --status: 0 a watch runs, 1 none runs, 2 none ever ran here."
)


@click.command("watch", epilog=WATCH_EXIT_HELP)
@settings_options
@hook_option
@object_options
@click.option(
    "--settle",
    type=str,
    default=None,
    help="Seconds an entry must stay unchanged and not open for writing before it is taken [MGMT_SETTLE_SECONDS, 30].",
)
@click.option("-c", "--concurrency", type=int, default=None, help="Entries in flight [MGMT_CONCURRENCY, default 8].")
@click.option(
    "--rescan",
    type=click.FloatRange(min=0, min_open=True),
    default=RESCAN_DEFAULT,
    show_default=True,
    help="Seconds between full rescans of the local dir (what events missed).",
)
@click.option("--poll", is_flag=True, help="Do not rely on OS events (network file systems): list the dir instead.")
@click.option("--once", is_flag=True, help="Upload every entry that has settled now, then exit (cron, timers).")
@click.option("--status", "show_status", is_flag=True, help="Show what the running watch of this local dir is doing.")
@click.option("--storage-class", type=str, default=None, help="S3 storage class [MGMT_STORAGE_CLASS].")
@click.option("--part-size", type=str, default=None, help="Multipart part size, e.g. 16MiB [MGMT_PART_SIZE, 8MiB].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (with --status: one object).")
async def watch(
    settle: str | None,
    concurrency: int | None,
    rescan: float,
    poll: bool,
    once: bool,
    show_status: bool,
    storage_class: str | None,
    part_size: str | None,
    as_json: bool,
    hook: str | None,
    **kwargs: Any,
) -> None:
    """Upload each entry of the local dir once it has settled, until stopped.

    An entry is taken when neither it nor anything inside it has changed for --settle seconds and no process
    holds one of its files open for writing; it then goes through the same pipeline as `amgmt upload` (packed,
    uploaded, verified, moved, recorded). SIGTERM or Ctrl-C stops it: no new entries, those in flight finish
    (or after 30 s are cancelled, to be resumed by the next start). One watch per local dir.
    """
    if show_status:
        settings = settings_from(kwargs, require_bucket=False)
        state = read_state(settings)
        click.echo(to_json(state) if as_json else status_text(state))
        if not state["running"]:
            raise click.exceptions.Exit(1)
        return
    settings = settings_from(
        kwargs,
        require_bucket=True,
        extra={
            "concurrency": concurrency,
            "storage_class": storage_class,
            "part_size": part_size,
            "settle_seconds": settle,
            "hook": hook,
            **pop_object_flags(kwargs),
        },
    )
    options = WatchOptions(settle=settings.settle_seconds, rescan=rescan, poll=poll, once=once)
    command_args = {
        "command": "watch",
        "once": once,
        "settle": settings.settle_seconds,
        "concurrency": settings.concurrency,
        "storage_class": settings.storage_class,
        "part_size": settings.part_size,
        "local_dir": display(settings.local_dir),
        **object_args(settings),
    }

    def notify(event: dict[str, Any]) -> None:
        click.echo(json.dumps(event, ensure_ascii=False, default=str) if as_json else event_text(event))
        sys.stdout.flush()

    code = await run_stoppable(
        lambda stop: Watch(settings, options, stop=stop, notify=notify, command_args=command_args).run()
    )
    if code:
        raise click.exceptions.Exit(int(code))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing done"


def event_text(event: dict[str, Any]) -> str:
    """One line per event of a running watch."""
    kind = event["event"]
    if kind == "start":
        return (
            f"{_now()} watching {printable(event['local_dir'])} -> {printable(event['destination'])}"
            f" (settle {event['settle']:g}s, {event['mode']})"
        )
    if kind == "entry":
        then = f" ({event['then']})" if event["then"] else ""
        latency = event.get("settled_to_done_seconds")
        took = f", {human_duration(latency)} after it settled" if latency is not None else ""
        if event["status"] in ("success", "skipped"):
            detail = f" -> {printable(event['s3_object_key'])} ({human_size(event['original_size'])}{took})"
            if event["status"] == "skipped":
                detail = f": {printable(event['error_message'] or '')}"
        else:
            detail = f": {printable(event['error_message'] or '')}"
        return f"{_now()} {event['status']:<9} {printable(event['target_name'])}{detail}{then}"
    if kind == "left":
        return f"{_now()} left      {printable(event['target_name'])}: {printable(event['reason'])}"
    if kind == "heartbeat":
        return (
            f"{_now()} heartbeat: waiting {event['waiting_count']}, in flight {event['in_flight_count']},"
            f" {_counts(event['counts'])}"
        )
    error = f", stopped by: {printable(event['error'])}" if event.get("error") else ""
    return f"{_now()} stopped: {_counts(event['counts'])} (exit {event['exit_code']}){error}"


def _when(iso: object) -> str:
    try:
        return local_time(datetime.fromisoformat(str(iso)))
    except ValueError:
        return printable(iso)


def status_text(state: dict[str, Any]) -> str:
    """`amgmt watch --status` for people."""
    started, updated = _when(state["started_at"]), _when(state["updated_at"])
    lines = [
        f"watch of {printable(state['local_dir'])} -> {printable(state['destination'])}: {state['state']}"
        f" (pid {state['pid']}, since {started}, last update {updated})",
        f"settle {state['settle']:g}s, rescan {state['rescan']:g}s, {state['mode']}",
        f"done: {_counts(state['counts'])}; failed for good: {state['failed_for_good']}",
        f"in flight ({state['in_flight_count']}): {', '.join(printable(n) for n in state['in_flight']) or '-'}",
        f"waiting ({state['waiting_count']}):",
    ]
    for item in state["waiting"]:
        why = f"held open by {item['held_by']}" if item["held_by"] else f"settles in {item['settles_in']:g}s"
        lines.append(f"  {printable(item['target_name'])}: {printable(why)}")
    for item in state["retrying"]:
        lines.append(f"retrying: {printable(item['target_name'])}: attempt {item['attempt']} in {item['in']:g}s")
    if state["last_errors"]:
        lines.append("last errors:")
        for item in state["last_errors"]:
            at = printable(item["at"])
            lines.append(f"  {at} {printable(item['target_name'])}: {printable(item['error'])}")
    return "\n".join(lines)


def register(group: click.Group) -> None:
    group.add_command(watch)
