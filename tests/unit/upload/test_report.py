"""The batch report counts every entry as it ends and keeps a few fields per failed one; full records only when
asked (the library's default, the CLI's --json): a run of 100,000 entries does not hold 100,000 records."""

from __future__ import annotations

from amgmt.errors import ExitCode
from amgmt.models import OperationStatus, UploadRecord, new_operation_id, utcnow
from amgmt.upload.report import BatchReport, Outcome


def ended(name: str, status: OperationStatus, *, size: int = 100, archive: int = 60) -> UploadRecord:
    record = UploadRecord(
        operation_id=new_operation_id(),
        target_path=f"/media/{name}",
        target_name=name,
        started_at=utcnow(),
        original_size=size,
        compressed_size=archive,
    )
    record.finish(status, error=None if status == OperationStatus.SUCCESS else f"{name}: why")
    return record


def test_counts_bytes_and_failures_without_keeping_records() -> None:
    report = BatchReport(keep_records=False, planned=4)
    failed = ended("b.mov", OperationStatus.FAILED)
    for record in (
        ended("a.mov", OperationStatus.SUCCESS),
        failed,
        ended("c.mov", OperationStatus.CHANGED),
        ended("d.mov", OperationStatus.SKIPPED),
    ):
        report.add(record)
    assert report.records == []
    assert report.finished == 4
    assert report.counts() == {"success": 1, "failed": 1, "changed": 1, "skipped": 1}
    assert (report.bytes_in, report.bytes_out) == (200, 120)  # success and changed were uploaded
    assert report.failures == [
        Outcome(failed.operation_id, "b.mov", "failed", "b.mov: why"),
        Outcome(report.failures[1].operation_id, "c.mov", "changed", "c.mov: why"),
    ]
    assert report.exit_code == ExitCode.ENTRY_FAILED
    assert report.to_dict()["operations"] == []
    assert [f["target_name"] for f in report.to_dict()["failures"]] == ["b.mov", "c.mov"]


def test_records_are_kept_when_asked_and_an_unfinished_run_is_not_ok() -> None:
    report = BatchReport(planned=2)
    report.add(ended("a.mov", OperationStatus.SUCCESS))
    assert [r.target_name for r in report.records] == ["a.mov"]
    assert [op["target_name"] for op in report.to_dict()["operations"]] == ["a.mov"]
    assert report.exit_code == ExitCode.ENTRY_FAILED  # one of two planned entries never ended
    report.add(ended("b.mov", OperationStatus.SUCCESS))
    assert report.exit_code == ExitCode.OK


def test_entries_left_to_other_runs_and_one_taken_over_are_no_failure() -> None:
    report = BatchReport(planned=3)
    report.add(ended("a.mov", OperationStatus.SUCCESS))
    lost = ended("b.mov", OperationStatus.CANCELLED)
    lost.metadata["claim_lost"] = True  # another run took it over: it ends there
    report.add(lost)
    assert report.exit_code == ExitCode.ENTRY_FAILED  # c.mov neither ended nor was left to another run
    report.elsewhere.append("c.mov")
    assert report.exit_code == ExitCode.OK and report.failures == []
    assert report.to_dict()["elsewhere"] == ["c.mov"]
    report.add(ended("d.mov", OperationStatus.CANCELLED))  # a cancelled entry of its own is one
    assert report.exit_code == ExitCode.ENTRY_FAILED
