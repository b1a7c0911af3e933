"""Progress reporting for a batch: the Reporter protocol the library calls, and a silent one that only counts.

The terminal bar lives in the CLI (amgmt.cli.progress_bar); the library never prints."""

from __future__ import annotations

from typing import Protocol

from amgmt.models import OperationRecord


class Reporter(Protocol):
    def add_work(self, entries: int, nbytes: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def entry_done(self, record: OperationRecord) -> None: ...
    def close(self) -> None: ...


class SilentReporter:
    """Keeps the counts (tests read them) and shows nothing. With `keep`, also every finished record (`finished`):
    a run of 100,000 entries held ~9 KB per entry that way, so the CLI and the watch keep none."""

    def __init__(self, *, keep: bool = True) -> None:
        self.total_entries = 0
        self.total_bytes = 0
        self.done_bytes = 0
        self.keep = keep
        self.finished: list[OperationRecord] = []

    def add_work(self, entries: int, nbytes: int) -> None:
        self.total_entries += entries
        self.total_bytes += nbytes

    def advance(self, nbytes: int) -> None:
        self.done_bytes += nbytes

    def entry_done(self, record: OperationRecord) -> None:
        if self.keep:
            self.finished.append(record)

    def close(self) -> None:
        pass
