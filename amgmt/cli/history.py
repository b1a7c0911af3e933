"""`amgmt history` (table, CSV or JSON) and `amgmt show ID`: what the metadata store knows."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import asyncclick as click

from amgmt.cli.common import open_store, parse_when, say, settings_options
from amgmt.cli.render import local_time, table, to_json
from amgmt.errors import ConfigError
from amgmt.models import UPLOAD_FIELDS, FileRole, Location, OperationRecord, OperationStatus, UploadRecord
from amgmt.text import counted, human_duration, human_size


def _ratio(record: OperationRecord) -> str:
    ratio = getattr(record, "compression_ratio", None)
    return f"{ratio:.2f}" if ratio else "-"


FORMATS = ("table", "csv", "json")


@click.command("history")
@settings_options
@click.option("--status", type=click.Choice([s.value for s in OperationStatus]), default=None, help="Only this status.")
@click.option("--type", "operation_type", type=str, default=None, help="Only this operation type (upload, ...).")
@click.option("--since", type=str, default=None, help="Started at or after: 2026-11-25, 2026-11-25T10:00, 2h, 7d.")
@click.option("--until", type=str, default=None, help="Started before (same forms as --since).")
@click.option("--target", type=str, default=None, help="Target name or path contains this (case-insensitive).")
@click.option(
    "--location",
    type=click.Choice([loc.value for loc in Location]),
    default=None,
    help="Only operations with a file record there: local (the source), s3 (an object), completed (moved).",
)
@click.option("--host", type=str, default=None, help="Only operations recorded by this MGMT_HOST_ID (exact).")
@click.option(
    "-n", "--limit", type=click.IntRange(min=0), default=20, show_default=True, help="At most this many; 0 = all."
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default=None,
    help="table (default), csv (a header of UploadRecord field names, one row per operation) or json.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Same as --format json: a list of records with the UploadRecord field names.",
)
async def history(
    status: str | None,
    operation_type: str | None,
    since: str | None,
    until: str | None,
    target: str | None,
    location: str | None,
    host: str | None,
    limit: int,
    output_format: str | None,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Past operations, newest first: what was uploaded, where, when, how big, whether it verified.

    `--format csv` and `--format json` export the same records (without the four FileRecords, which `show` has);
    they obey the filters and `-n` like the table, so `-n 0` exports everything. When more operations match than
    `-n` lets through, a note on stderr says so.
    """
    if as_json and output_format not in (None, "json"):
        raise ConfigError(f"--json and --format {output_format} contradict each other: give one of them")
    output_format = "json" if as_json else output_format or "table"
    after = parse_when(since, option="--since") if since else None
    before = parse_when(until, option="--until") if until else None
    async with await open_store(kwargs) as store:
        # One more than asked for, to tell the user when the limit cut the list.
        records = await store.list_operations(
            status=status,
            operation_type=operation_type,
            since=after,
            until=before,
            target=target,
            location=location,
            host=host,
            limit=limit + 1 if limit else None,
        )
    if limit and len(records) > limit:
        records = records[:limit]
        say(f"amgmt: showing the newest {counted(limit, 'matching operation')}; -n 0 for all", err=True)
    if output_format == "json":
        click.echo(to_json([_flat(r) for r in records]))
        return
    if output_format == "csv":
        click.echo(history_csv(records), nl=False)
        return
    if not records:
        filtered = any((status, operation_type, since, until, target, location, host))
        click.echo("no operations recorded" + (" matching these filters" if filtered else ""))
        return
    rows = []
    for r in records:
        size = human_size(getattr(r, "original_size", None))
        packed = human_size(getattr(r, "compressed_size", None))
        key = getattr(r, "s3_object_key", "") or r.result_path or ""
        note = r.error_message if r.status != OperationStatus.SUCCESS else getattr(r, "verification_method", "") or ""
        rows.append(
            (
                r.operation_id[:8],
                r.operation_type,
                r.target_name,
                r.status,
                local_time(r.started_at),
                human_duration(r.duration_seconds),
                size,
                packed,
                _ratio(r),
                key,
                note,
            )
        )
    click.echo(
        table(
            ["ID", "TYPE", "TARGET", "STATUS", "STARTED", "TOOK", "SIZE", "PACKED", "RATIO", "KEY", "NOTE"],
            rows,
            max_width=40,
        )
    )


def history_csv(records: list[OperationRecord]) -> str:
    """One row per operation under a header of the UploadRecord field names (those of `--json`); `metadata` and
    `command_args` as JSON text, no value as an empty cell. Other operation types leave the upload columns empty."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=UPLOAD_FIELDS, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = _flat(record)
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    return out.getvalue()


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def _flat(record: OperationRecord) -> dict[str, Any]:
    """The record as in the store; the four FileRecords only in `show`."""
    data = record.to_dict()
    for role in FileRole:
        data.pop(f"{role.value}_file_record", None)
    return data


@click.command("show")
@click.argument("operation_id")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="The whole UploadRecord with its four FileRecords as JSON.")
async def show(operation_id: str, as_json: bool, **kwargs: Any) -> None:
    """One operation in full. OPERATION_ID may be a unique prefix of the id (at least 4 characters)."""
    async with await open_store(kwargs) as store:
        record = await store.get_operation(operation_id)
    if as_json:
        click.echo(to_json(record.to_dict()))
        return
    data = record.to_dict()
    files = {role: data.pop(f"{role.value}_file_record", None) for role in FileRole}
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        click.echo(f"{key.ljust(width)}  {'-' if value is None else value}")
    if isinstance(record, UploadRecord):
        for role, rec in files.items():
            click.echo(f"\n{role.value}_file_record:")
            if not rec:
                click.echo("  (none)")
                continue
            for key, value in rec.items():
                if isinstance(value, dict):
                    value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
                click.echo(f"  {key.ljust(14)}  {'-' if value is None else value}")


def register(group: click.Group) -> None:
    group.add_command(history)
    group.add_command(show)
