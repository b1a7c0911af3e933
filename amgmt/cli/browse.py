"""`amgmt ls`, `amgmt search KEYWORD` and `amgmt stats`: what is where, and what the uploads added up to."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime
from typing import Any

import asyncclick as click

from amgmt.cli.common import open_store, parse_when, settings_from, settings_options
from amgmt.cli.render import local_time, table, to_json
from amgmt.objects.listing import ArchiveState, Listing, LocalEntry, Scope, build_listing
from amgmt.objects.listing import search as search_listing
from amgmt.objects.stats import UploadStatistics, upload_statistics
from amgmt.text import counted, human_duration, human_size, printable

_SCOPES = click.Choice([s.value for s in Scope])


def _restore_text(state: str | None, expires: Any) -> str:
    if state is None:
        return "-"
    if state == ArchiveState.RESTORED and expires is not None:
        return f"restored until {local_time(expires)}"
    return str(state)


def _upload_text(entry: LocalEntry) -> str:
    if entry.upload_status is None:
        return "never"
    return f"{entry.upload_status}, changed since" if entry.changed_since else entry.upload_status


def render_listing(listing: Listing, *, keyword: str | None = None) -> str:
    """The local table and the bucket table (whichever were listed), each under a one-line heading."""
    matching = f" matching {printable(keyword)!r}" if keyword is not None else ""
    blocks: list[str] = []
    if listing.local is not None:
        total = sum(e.size for e in listing.local)
        heading = f"local dir {printable(listing.local_dir)}: {counted(len(listing.local), 'entry')}{matching}"
        lines = [heading + (f", {human_size(total)}" if listing.local else "")]
        if listing.local:
            rows = [
                (
                    e.name,
                    "dir" if e.is_directory else "file",
                    human_size(e.size),
                    _upload_text(e),
                    local_time(e.last_attempt),
                    "-" if e.in_s3 is None else "yes" if e.in_s3 else "no",
                )
                for e in listing.local
            ]
            lines.append(table(["NAME", "KIND", "SIZE", "UPLOAD", "TRIED", "IN S3"], rows, max_width=60))
        lines += [f"ignored: {printable(note)}" for note in listing.ignored]
        blocks.append("\n".join(lines))
    if listing.objects is not None:
        total = sum(o.size for o in listing.objects)
        where = f"s3://{listing.bucket}/{listing.prefix}"
        heading = f"{printable(where)}: {counted(len(listing.objects), 'object')}{matching}"
        lines = [heading + (f", {human_size(total)}" if listing.objects else "")]
        if listing.objects:
            rows = [
                (
                    o.key,
                    human_size(o.size),
                    o.storage_class,
                    _restore_text(o.restore, o.restore_expires),
                    local_time(o.last_modified),
                    o.operation_id[:8] if o.operation_id else "-",
                )
                for o in listing.objects
            ]
            lines.append(table(["KEY", "SIZE", "CLASS", "RESTORE", "MODIFIED", "UPLOAD"], rows, max_width=60))
        blocks.append("\n".join(lines))
    if listing.members is not None:
        blocks.append(_members_block(listing, matching))
    return "\n\n".join(blocks)


def _members_block(listing: Listing, matching: str) -> str:
    """`search`: the members of directory archives that match, each with the archive (key) and upload holding it."""
    found = listing.members or []
    files = [m for m in found if m.kind == "file"]
    heading = f"inside the archives: {counted(len(found), 'member')}{matching}"
    lines = [heading + (f", {human_size(sum(m.size for m in files))}" if files else "")]
    if found:
        rows = [
            (
                m.path + ("/" if m.kind == "dir" else ""),
                human_size(m.size) if m.kind == "file" else m.kind,
                local_time(datetime.fromtimestamp(m.mtime, tz=UTC)),
                m.key,
                m.operation_id[:8],
            )
            for m in found
        ]
        lines.append(table(["MEMBER", "SIZE", "MODIFIED", "IN ARCHIVE", "UPLOAD"], rows, max_width=60))
        first = found[0]
        lines.append(
            f"take one out with: amgmt download {shlex.quote(first.target_name)} --member {shlex.quote(first.path)}"
        )
    return "\n".join(lines)


@click.command("ls")
@click.argument("scope", type=_SCOPES, default=Scope.ALL.value, required=False)
@settings_options
@click.option("--json", "as_json", is_flag=True, help="The listing as JSON: `local` and `objects` lists.")
async def ls(scope: str, as_json: bool, **kwargs: Any) -> None:
    """List the local entries with their last upload, and the objects under the prefix.

    SCOPE is `local` (the local dir only; needs no bucket), `s3` (the objects under MGMT_OBJECT_PREFIX/) or `all`
    (the default). Local entries are what `upload all` would take, with the status of their newest upload to their
    key; objects come from a paginated listing (no request per object), with their storage class, restore state
    and the upload recorded here that made them.
    """
    settings = settings_from(kwargs, require_bucket=scope != Scope.LOCAL)
    listing = await build_listing(settings, Scope(scope))
    click.echo(to_json(listing.to_dict()) if as_json else render_listing(listing))


@click.command("search")
@click.argument("keyword")
@click.argument("scope", type=_SCOPES, default=Scope.ALL.value, required=False)
@settings_options
@click.option("--json", "as_json", is_flag=True, help="The matches as JSON, shaped as `ls --json`.")
async def search(keyword: str, scope: str, as_json: bool, **kwargs: Any) -> None:
    """Find local entries, objects and files inside directory archives whose name contains KEYWORD (case-insensitive).

    It matches the local entry names and the object keys below the prefix (also with their %XX escapes decoded),
    from the same listing as `ls` (no request per object), and the files inside directory archives (the member
    lists recorded at upload; `download NAME --member PATH` takes one out). SCOPE limits it to `local` or `s3`;
    default `all`.
    """
    settings = settings_from(kwargs, require_bucket=scope != Scope.LOCAL)
    listing = await search_listing(settings, keyword, Scope(scope))
    click.echo(to_json(listing.to_dict()) if as_json else render_listing(listing, keyword=keyword))


def render_statistics(stats: UploadStatistics) -> str:
    window = []
    if stats.since:
        window.append(f"since {local_time(stats.since)}")
    if stats.until:
        window.append(f"until {local_time(stats.until)}")
    lines = [f"uploads {' '.join(window) or '(all recorded)'}: {counted(stats.operations, 'operation')}"]
    if not stats.operations:
        return lines[0]
    counts = ", ".join(f"{status} {n}" for status, n in stats.by_status.items())
    ratio = f"{stats.compression_ratio:.2f}" if stats.compression_ratio else "-"
    mean = f"{stats.mean_compression_ratio:.2f}" if stats.mean_compression_ratio else "-"
    speed = f"{human_size(stats.throughput)}/s" if stats.throughput else "-"
    lines += [
        f"  statuses    {counts}",
        f"  entries     {stats.entries} uploaded: {human_size(stats.original_bytes)} in, "
        f"{human_size(stats.uploaded_bytes)} to S3",
        f"  ratio       {ratio} overall, {mean} mean per entry",
        f"  throughput  {speed} over {human_duration(stats.wall_seconds)} of runs "
        f"({human_duration(stats.upload_seconds)} of entry time)",
    ]
    for title, periods in (("DAY", stats.per_day), ("WEEK", stats.per_week)):
        rows = [
            (p.period, p.entries, human_size(p.original_bytes), human_size(p.uploaded_bytes), p.failures)
            for p in periods
        ]
        lines += ["", table([title, "ENTRIES", "IN", "TO S3", "FAILURES"], rows)]
    if stats.failures:
        failures = [(f.count, f.status, f.reason, f.last_operation_id[:8]) for f in stats.failures]
        lines += ["", table(["COUNT", "STATUS", "REASON", "LAST"], failures, max_width=80)]
    return "\n".join(lines)


@click.command("stats")
@settings_options
@click.option("--since", type=str, default=None, help="Uploads started at or after: 2026-11-25, 2h, 7d, 1w.")
@click.option("--until", type=str, default=None, help="Uploads started before (same forms as --since).")
@click.option("--json", "as_json", is_flag=True, help="The statistics as JSON (bytes, seconds, ratios as numbers).")
async def stats(since: str | None, until: str | None, as_json: bool, **kwargs: Any) -> None:
    """Upload totals from the metadata database: bytes per day and week, ratio, throughput, failures by reason.

    Days and ISO weeks are in local time, by the time an upload started. Bytes count the entries uploaded
    (`success` or `partial`); throughput is their original bytes over the runs' wall time (while any upload was
    in progress; not the entries' durations added up, which overlap). Failures
    (`failed`, `partial`, `cancelled`) are grouped by stage and the first words of their message, with names, keys,
    paths and numbers taken out.
    """
    after = parse_when(since, option="--since") if since else None
    before = parse_when(until, option="--until") if until else None
    async with await open_store(kwargs) as store:
        result = await upload_statistics(store, tz=None, since=after, until=before)
    click.echo(to_json(result.to_dict()) if as_json else render_statistics(result))


def register(group: click.Group) -> None:
    group.add_command(ls)
    group.add_command(search)
    group.add_command(stats)
