"""Progress reporting for a batch: the Reporter protocol the library calls, and a silent one that only counts.

The terminal bar lives in the CLI (amgmt.cli.progress_bar); the library never prints."""

from __future__ import annotations

from collections import deque
from typing import Protocol

from amgmt.models import OperationRecord


class Reporter(Protocol):
    def add_work(self, entries: int, nbytes: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    # An entry in flight reached `stage`: "compress", "upload NN%" (as its bytes go out), "verify", "move".
    def entry_stage(self, record: OperationRecord, stage: str) -> None: ...
    def entry_done(self, record: OperationRecord) -> None: ...
    def close(self) -> None: ...


class SilentReporter:
    """Keeps the counts (tests read them) and shows nothing. With `keep`, also every finished record (`finished`):
    a run of 100,000 entries held ~9 KB per entry that way, so the CLI and the watch keep none."""

    def __init__(self, *, keep: bool = True) -> None:
        self.total_entries = 0
        self.total_bytes = 0
        self.done_bytes = 0
        self.done_entries = 0
        self.keep = keep
        self.finished: list[OperationRecord] = []
        self.in_flight: dict[str, tuple[str, str]] = {}  # operation id -> (entry name, stage), in the order started
        # The (entry name, stage) pairs reported, in order: the last 10,000 (a watch reports for weeks).
        self.stages: deque[tuple[str, str]] = deque(maxlen=10_000)

    def add_work(self, entries: int, nbytes: int) -> None:
        self.total_entries += entries
        self.total_bytes += nbytes

    def advance(self, nbytes: int) -> None:
        self.done_bytes += nbytes

    def entry_stage(self, record: OperationRecord, stage: str) -> None:
        self.in_flight[record.operation_id] = (record.target_name, stage)
        self.stages.append((record.target_name, stage))

    def entry_done(self, record: OperationRecord) -> None:
        self.in_flight.pop(record.operation_id, None)
        self.done_entries += 1
        if self.keep:
            self.finished.append(record)

    def close(self) -> None:
        pass
