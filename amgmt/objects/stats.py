"""Upload statistics for `amgmt stats`: bytes per day and per week, entries, compression ratio, throughput, and
failures grouped by reason. Arithmetic over the store's upload summaries; it reads one query and writes nothing.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from amgmt.models import OperationStatus, Stage
from amgmt.store import Store, UploadSummary
from amgmt.text import iso_utc

# Entries whose bytes reached S3: `partial` ones were uploaded and verified, only their original did not move.
UPLOADED = frozenset({OperationStatus.SUCCESS, OperationStatus.PARTIAL})
FAILED = frozenset({OperationStatus.FAILED, OperationStatus.PARTIAL, OperationStatus.CANCELLED})
REASON_WORDS = 6  # enough to tell "already exists with other content" from "failed: SlowDown"
_STAGES = frozenset(s.value for s in Stage)
_S3_URL = re.compile(r"s3://\S+")
_ABSOLUTE_PATH = re.compile(r"(?<!\S)/\S*")
_UUID = re.compile(r"\b[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}\b")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")


@dataclass(frozen=True)
class PeriodTotals:
    """One day (`2026-11-25`) or ISO week (`2026-W48`), in the caller's time zone."""

    period: str
    entries: int  # uploaded (success or partial)
    original_bytes: int
    uploaded_bytes: int  # archive bytes sent to S3
    failures: int  # failed, partial or cancelled


@dataclass(frozen=True)
class FailureReason:
    """Failures whose messages say the same once names, keys, paths and numbers are taken out."""

    reason: str  # "STAGE: first words", e.g. "upload: <object> already exists with other content"
    status: str
    count: int
    last_operation_id: str
    last_started_at: datetime
    last_message: str  # the newest full message of the group


@dataclass(frozen=True)
class UploadStatistics:
    since: datetime | None
    until: datetime | None
    operations: int  # uploads recorded in the window, any status
    by_status: dict[str, int]
    entries: int  # uploaded (success or partial)
    original_bytes: int
    uploaded_bytes: int
    compression_ratio: float | None  # original bytes / archive bytes, over all uploaded entries
    mean_compression_ratio: float | None  # the mean of the entries' own ratios
    upload_seconds: float  # the uploaded entries' durations added up (entries of a run overlap)
    wall_seconds: float  # the runs' wall time: while at least one upload (any status) was in progress
    throughput: float | None  # original bytes of the uploaded entries per second of the runs' wall time
    per_day: list[PeriodTotals]
    per_week: list[PeriodTotals]
    failures: list[FailureReason]  # most frequent first

    def to_dict(self) -> dict[str, Any]:
        def encode(value: Any) -> Any:
            if isinstance(value, datetime):
                return iso_utc(value)
            if isinstance(value, list):
                return [encode(v) for v in value]
            if dataclasses.is_dataclass(value):
                return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
            return value

        return encode(self)


def failure_reason(summary: UploadSummary) -> str:
    """`STAGE: first words` of a failure message, with what names this entry replaced by placeholders, so that the
    same failure of different entries reads the same."""
    text = summary.error_message or "(no message)"
    literals = [
        (f"s3://{summary.s3_bucket}/{summary.s3_object_key}" if summary.s3_bucket else "", "<object>"),
        (summary.target_path, "<entry>"),
        (summary.s3_object_key or "", "<key>"),
    ]  # not the bare name: an entry called "a" is in most sentences
    for literal, mark in literals:
        if literal:
            text = text.replace(literal, mark)
    text = _S3_URL.sub("<object>", text)
    text = _ABSOLUTE_PATH.sub("<path>", text)
    text = _UUID.sub("<id>", text)
    text = _NUMBER.sub("N", text)
    stage, sep, rest = text.partition(": ")
    if not sep or stage not in _STAGES:
        stage, rest = summary.stage or "unknown", text
    words: list[str] = []
    for word in rest.split():
        if len(words) >= 3 and word.startswith("("):
            break  # an aside: "(deleted since it was listed?)", "(HTTP 503)"
        words.append(word)
        if len(words) == REASON_WORDS or (len(words) >= 2 and word.endswith(";")):
            break
    return f"{stage}: {' '.join(words).rstrip(';:,.')}"


def compute_statistics(
    summaries: Iterable[UploadSummary],
    *,
    tz: tzinfo | None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> UploadStatistics:
    """The statistics of these uploads; days and weeks are counted in `tz` (None: the system's local time)."""
    rows = sorted(summaries, key=lambda s: s.started_at)
    by_status = Counter(s.status for s in rows)
    uploaded = [s for s in rows if s.status in UPLOADED]
    original = sum(s.original_size or 0 for s in uploaded)
    archived = sum(s.compressed_size or 0 for s in uploaded)
    ratios = [(s.original_size or 0) / s.compressed_size for s in uploaded if s.compressed_size]
    seconds = sum(s.duration_seconds or 0.0 for s in uploaded)
    timed = [s for s in uploaded if s.duration_seconds]
    timed_bytes = sum(s.original_size or 0 for s in timed)
    wall = busy_seconds(rows)
    return UploadStatistics(
        since=since,
        until=until,
        operations=len(rows),
        by_status=dict(sorted(by_status.items())),
        entries=len(uploaded),
        original_bytes=original,
        uploaded_bytes=archived,
        compression_ratio=round(original / archived, 4) if archived else None,
        mean_compression_ratio=round(sum(ratios) / len(ratios), 4) if ratios else None,
        upload_seconds=round(seconds, 6),
        wall_seconds=round(wall, 6),
        throughput=round(timed_bytes / wall, 1) if wall and timed_bytes else None,
        per_day=_periods(rows, lambda when: when.strftime("%Y-%m-%d"), tz),
        per_week=_periods(rows, _iso_week, tz),
        failures=_failures(rows),
    )


def busy_seconds(rows: Iterable[UploadSummary]) -> float:
    """The time during which at least one of these uploads was in progress: the union of their [start, end]
    intervals. Entries of one run overlap (-c N), so their durations added up would count the run N times; gaps
    between runs are not counted. The record has no run id, and needs none: a run is busy while an entry is."""
    spans = sorted(
        (s.started_at.timestamp(), s.started_at.timestamp() + s.duration_seconds) for s in rows if s.duration_seconds
    )
    total, covered_until = 0.0, float("-inf")
    for begin, finish in spans:
        if finish > covered_until:
            total += finish - max(begin, covered_until)
            covered_until = finish
    return total


async def upload_statistics(
    store: Store, *, tz: tzinfo | None, since: datetime | None = None, until: datetime | None = None
) -> UploadStatistics:
    """The statistics of the uploads recorded in `store` that started in [since, until)."""
    summaries = await store.upload_summaries(since=since, until=until)
    return compute_statistics(summaries, tz=tz, since=since, until=until)


def _iso_week(when: datetime) -> str:
    year, week, _ = when.isocalendar()
    return f"{year}-W{week:02d}"


def _periods(rows: list[UploadSummary], label: Any, tz: tzinfo | None) -> list[PeriodTotals]:
    buckets: dict[str, list[UploadSummary]] = {}
    for s in rows:
        buckets.setdefault(label(s.started_at.astimezone(tz)), []).append(s)
    totals = []
    for period, group in sorted(buckets.items()):
        done = [s for s in group if s.status in UPLOADED]
        totals.append(
            PeriodTotals(
                period=period,
                entries=len(done),
                original_bytes=sum(s.original_size or 0 for s in done),
                uploaded_bytes=sum(s.compressed_size or 0 for s in done),
                failures=sum(1 for s in group if s.status in FAILED),
            )
        )
    return totals


def _failures(rows: list[UploadSummary]) -> list[FailureReason]:
    groups: dict[tuple[str, str], list[UploadSummary]] = {}
    for s in rows:
        if s.status in FAILED:
            groups.setdefault((failure_reason(s), s.status), []).append(s)
    found = [
        FailureReason(
            reason=reason,
            status=status,
            count=len(group),
            last_operation_id=group[-1].operation_id,
            last_started_at=group[-1].started_at,
            last_message=group[-1].error_message or "",
        )
        for (reason, status), group in groups.items()
    ]
    return sorted(found, key=lambda f: (-f.count, f.reason, f.status))
