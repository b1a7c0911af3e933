"""The silent reporter: counts always; the finished records only when asked (the CLI's and the watch's keep none, so
that a run of 100,000 entries does not hold every record)."""

from __future__ import annotations

from amgmt.models import OperationRecord, utcnow
from amgmt.progress import SilentReporter


def _record(i: int) -> OperationRecord:
    return OperationRecord(operation_id=f"op{i}", operation_type="upload", target_path=f"/m/{i}", target_name=str(i),
                           started_at=utcnow())


def test_the_silent_reporter_keeps_records_only_when_asked() -> None:
    keeping, counting = SilentReporter(), SilentReporter(keep=False)
    for reporter in (keeping, counting):
        reporter.add_work(3, 300)
        reporter.advance(120)
        for i in range(3):
            reporter.entry_done(_record(i))
    assert [r.operation_id for r in keeping.finished] == ["op0", "op1", "op2"]
    assert counting.finished == []
    assert (counting.total_entries, counting.total_bytes, counting.done_bytes) == (3, 300, 120)
