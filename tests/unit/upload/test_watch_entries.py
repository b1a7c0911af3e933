"""What `amgmt watch` does with an entry (upload/watch_entries.py): retries with backoff, parking, settling again,
and entries that go while they are looked at. Real files; times given."""

from __future__ import annotations

from pathlib import Path

from amgmt.local.settling import look_at
from amgmt.models import OperationStatus
from amgmt.upload.watch_entries import Phase, WatchedEntries


def _entries() -> WatchedEntries:
    return WatchedEntries(settle=1.0, max_attempts=3, retry_delay=10.0, hint_delay=0.5)


def test_an_entry_that_failed_is_retried_with_doubling_backoff_then_parked(tmp_path: Path) -> None:
    entries = _entries()
    path = tmp_path / "a.mov"
    entries.listed([path], 0.0)
    thens = [entries.finished(path, OperationStatus.FAILED, still_there=True, now=t, once=False) for t in (0, 20, 50)]
    assert [o.then for o in thens] == ["retry 2/3 in 10s", "retry 3/3 in 20s", "left for `amgmt retry`"]
    assert [o.failed for o in thens] == [False, False, True]
    assert entries.known[path].phase == Phase.PARKED


def test_what_becomes_of_an_entry_by_how_it_ended(tmp_path: Path) -> None:
    entries = _entries()
    path = tmp_path / "a.mov"
    for status, still_there, once, phase in [
        (OperationStatus.SUCCESS, False, False, None),  # moved: forgotten
        (OperationStatus.CANCELLED, True, False, None),  # stopped: the next start takes it
        (OperationStatus.SUCCESS, True, False, Phase.PARKED),  # completed dir off: not taken again unchanged
        (OperationStatus.SKIPPED, True, False, Phase.PARKED),
        (OperationStatus.CHANGED, True, False, Phase.WAITING),  # another entry now: settles again
        (OperationStatus.CHANGED, True, True, Phase.PARKED),  # --once: reported, left
    ]:
        entries.listed([path], 0.0)
        entries.finished(path, status, still_there=still_there, now=1.0, once=once)
        entry = entries.known.get(path)
        assert (entry.phase if entry else None) == phase, status
        entries.forget(path)


def test_a_parked_entry_comes_back_only_when_its_content_changes(tmp_path: Path) -> None:
    entries = _entries()
    path = tmp_path / "a.mov"
    path.write_bytes(b"a")
    entries.listed([path], 0.0)
    entries.finished(path, OperationStatus.SKIPPED, still_there=True, now=1.0, once=False)
    assert entries.judge([look_at(path)], 2.0) == [] and entries.known[path].phase == Phase.PARKED
    entries.hint(path, 3.0)
    assert entries.judge([look_at(path)], 3.5) == [] and entries.known[path].phase == Phase.PARKED
    path.write_bytes(b"ab")
    assert entries.judge([look_at(path)], 4.0) == []
    assert entries.known[path].phase == Phase.WAITING
    assert [look.path for look in entries.judge([look_at(path)], 5.0)] == [path]  # settled a second later


def test_an_entry_removed_while_its_writers_were_looked_for_is_not_queued(tmp_path: Path) -> None:
    entries = _entries()
    path = tmp_path / "a.mov"
    path.write_bytes(b"a")
    entries.listed([path], 0.0)
    entries.judge([look_at(path)], 0.0)
    [settled] = entries.judge([look_at(path)], 1.5)
    entries.listed([], 1.6)  # a rescan in between: it is gone
    entries.held(path, "pid 1 (x)", 1.7)
    assert entries.make_ready(settled, 1.7) is False and entries.next_ready() is None


def test_an_entry_another_run_holds_is_looked_at_again_after_a_lease(tmp_path: Path) -> None:
    entries = _entries()
    path = tmp_path / "a.mov"
    entries.listed([path], 0.0)
    entries.known[path].phase = Phase.IN_FLIGHT
    entries.elsewhere(path, 5.0, 60.0)
    assert entries.known[path].phase == Phase.WAITING
    assert entries.due(64.0) == [] and entries.due(65.0) == [path]
