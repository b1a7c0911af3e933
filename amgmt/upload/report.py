"""The outcome of one batch: every entry's record, the run's counts, bytes and exit code, as text or JSON."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from amgmt.errors import ExitCode
from amgmt.models import OperationStatus, UploadRecord, utcnow
from amgmt.text import iso_utc
from amgmt.upload.recovery import Cleanup


@dataclass
class BatchReport:
    """What happened to every entry of one run, and the run as a whole."""

    records: list[UploadRecord] = field(default_factory=list)
    started_at: datetime = field(default_factory=utcnow)
    wall_seconds: float = 0.0
    aborted: str | None = None  # the run-wide error that stopped the batch
    aborted_exit: ExitCode = ExitCode.STORAGE  # and its exit code
    interrupted: bool = False
    ignored: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # entries the --exclude/--include filters left out
    planned: int = 0
    recovery: Cleanup | None = None

    def counts(self) -> dict[str, int]:
        return dict(Counter(str(r.status) for r in self.records))

    def _done(self) -> list[UploadRecord]:
        uploaded = (OperationStatus.SUCCESS, OperationStatus.PARTIAL, OperationStatus.CHANGED)
        return [r for r in self.records if r.status in uploaded]

    @property
    def bytes_in(self) -> int:
        return sum(r.original_size for r in self._done())

    @property
    def bytes_out(self) -> int:
        return sum(r.compressed_size or 0 for r in self._done())

    @property
    def failures(self) -> list[UploadRecord]:
        return [r for r in self.records if r.status not in (OperationStatus.SUCCESS, OperationStatus.SKIPPED)]

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if self.aborted:
            return self.aborted_exit
        if self.failures or len(self.records) < self.planned:
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
