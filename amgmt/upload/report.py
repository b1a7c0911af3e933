"""The outcome of one batch: the run's counts, bytes, failures and exit code (and, when asked for, every entry's
full record), as text or JSON. What it keeps per entry is a few fields of each failed one, not every entry's record
with its four file records (measured: 3,000 small entries, peak RSS 118 -> 111 MB)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from amgmt.errors import ExitCode
from amgmt.models import OperationStatus, UploadRecord, utcnow
from amgmt.text import iso_utc
from amgmt.upload.recovery import Cleanup

_UPLOADED = (OperationStatus.SUCCESS, OperationStatus.PARTIAL, OperationStatus.CHANGED)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the summary says of an entry that did not end in success (its full record is in the database)."""

    operation_id: str
    target_name: str
    status: str  # an OperationStatus value
    error_message: str | None


@dataclass
class BatchReport:
    """What happened to the entries of one run, and the run as a whole. `records` holds every entry's full record
    only with `keep_records` (the library's default; the CLI keeps them for --json alone)."""

    records: list[UploadRecord] = field(default_factory=list)
    keep_records: bool = True
    finished: int = 0  # entries that ended (any status)
    bytes_in: int = 0  # source bytes of the entries uploaded (success, partial, changed)
    bytes_out: int = 0  # their archive bytes
    failures: list[Outcome] = field(default_factory=list)  # every entry that did not end in success or skipped
    started_at: datetime = field(default_factory=utcnow)
    wall_seconds: float = 0.0
    aborted: str | None = None  # the run-wide error that stopped the batch
    aborted_exit: ExitCode = ExitCode.STORAGE  # and its exit code
    interrupted: bool = False
    ignored: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # entries the --exclude/--include filters left out
    # With a shared catalog: entries another run held or ended meanwhile, left to it (never started here).
    elsewhere: list[str] = field(default_factory=list)
    planned: int = 0
    recovery: Cleanup | None = None

    _counts: Counter[str] = field(default_factory=Counter, repr=False)

    def add(self, record: UploadRecord) -> None:
        """An entry ended: count it (its record is final)."""
        self.finished += 1
        self._counts[str(record.status)] += 1
        if record.status in _UPLOADED:
            self.bytes_in += record.original_size
            self.bytes_out += record.compressed_size or 0
        if record.status not in (OperationStatus.SUCCESS, OperationStatus.SKIPPED) and not record.metadata.get(
            "claim_lost"
        ):  # (an entry another run took over from this one ends there: not a failure of this run)
            self.failures.append(Outcome(record.operation_id, record.target_name, record.status, record.error_message))
        if self.keep_records:
            self.records.append(record)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if self.aborted:
            return self.aborted_exit
        if self.failures or self.finished + len(self.elsewhere) < self.planned:
            return ExitCode.ENTRY_FAILED
        return ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        wall = self.wall_seconds or 0.0
        return {
            "started_at": iso_utc(self.started_at),
            "wall_seconds": round(wall, 3),
            "entries": self.planned,
            "counts": self.counts(),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "compression_ratio": round(self.bytes_in / self.bytes_out, 4) if self.bytes_out else None,
            "throughput_bytes_per_second": round(self.bytes_in / wall, 1) if wall else None,
            "aborted": self.aborted,
            "interrupted": self.interrupted,
            "ignored": self.ignored,
            "excluded": self.excluded,
            "elsewhere": self.elsewhere,
            "recovered": self.recovery.to_dict() if self.recovery else None,
            "exit_code": int(self.exit_code),
            "failures": [
                {
                    "operation_id": r.operation_id,
                    "target_name": r.target_name,
                    "status": str(r.status),
                    "error_message": r.error_message,
                }
                for r in self.failures
            ],
            "operations": [r.to_dict() for r in self.records],
        }
