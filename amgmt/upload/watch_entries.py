"""The entries `amgmt watch` knows of and where each one is: waiting to settle, ready, in flight, or parked (ended
for good with its content as it is), with the settle clock, the ready queue and the retry backoff.

Bookkeeping only: no I/O, no anyio, no clock of its own (every method is given the monotonic time); watch.py looks
at the files and runs the entries.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from amgmt.local.settling import Look, SettleClock
from amgmt.models import OperationStatus
from amgmt.naming import display


class Phase(StrEnum):
    WAITING = "waiting"  # looked at on its schedule until it settles
    READY = "ready"  # settled; queued for a worker
    IN_FLIGHT = "in flight"  # handed to the workers
    PARKED = "parked"  # ended for good with this content: taken again only once it changes


LOOKED_AT = (Phase.WAITING, Phase.PARKED)


@dataclass
class WatchedEntry:
    path: Path
    phase: Phase = Phase.WAITING
    next_check: float = 0.0
    not_before: float = 0.0  # a retry's backoff
    attempts: int = 0
    fingerprint: str | None = None  # when it settled (READY, IN_FLIGHT) or ended (PARKED; None: the next look's)
    settled_at: float = 0.0
    held_by: str | None = None


@dataclass
class Outcome:
    """What becomes of an entry whose upload ended: `then` for its log line, `failed` when it failed for good."""

    entry: WatchedEntry
    then: str = ""
    failed: bool = False


@dataclass
class WatchedEntries:
    settle: float
    max_attempts: int
    retry_delay: float
    hint_delay: float
    known: dict[Path, WatchedEntry] = field(default_factory=dict)
    ready: deque[Path] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.clock = SettleClock(self.settle)

    # -- finding -------------------------------------------------------------------------------------------------

    def hint(self, top: Path, now: float) -> None:
        """Something happened in the entry `top`: look at it soon (a new one is added)."""
        entry = self.known.setdefault(top, WatchedEntry(top, next_check=now))
        if entry.phase in LOOKED_AT:
            entry.next_check = min(entry.next_check, max(now + self.hint_delay, entry.not_before))

    def listed(self, present: list[Path], now: float) -> None:
        """A full listing of the local dir: new entries are added, parked ones looked at again, vanished ones
        forgotten (unless in flight: the pipeline moved them, or will say what happened)."""
        for path in present:
            entry = self.known.setdefault(path, WatchedEntry(path, next_check=now))
            if entry.phase == Phase.PARKED:
                entry.next_check = now
        listed = set(present)
        for path, entry in list(self.known.items()):
            if path not in listed and entry.phase in LOOKED_AT:
                self.forget(path)

    def forget(self, path: Path) -> None:
        self.known.pop(path, None)
        self.clock.forget(path)

    # -- settling --------------------------------------------------------------------------------------------------

    def due(self, now: float) -> list[Path]:
        return [e.path for e in self.known.values() if e.phase in LOOKED_AT and e.next_check <= now]

    def next_check(self) -> float:
        return min((e.next_check for e in self.known.values() if e.phase in LOOKED_AT), default=math.inf)

    def judge(self, looks: list[Look], now: float) -> list[Look]:
        """Record the looks; the entries that have settled (before the writers check), by the settle clock."""
        settled: list[Look] = []
        for look in looks:
            entry = self.known.get(look.path)
            if entry is None or entry.phase not in LOOKED_AT:
                continue
            if look.gone:
                self.forget(look.path)
                continue
            if entry.phase == Phase.PARKED:
                if entry.fingerprint is None or look.fingerprint == entry.fingerprint:
                    entry.fingerprint, entry.next_check = look.fingerprint, math.inf
                    continue
                entry.phase, entry.attempts = Phase.WAITING, 0  # new content since it ended: a new entry
            if self.clock.observe(look, now) and now >= entry.not_before:
                settled.append(look)
            else:
                entry.next_check = max(self.clock.entries[look.path].settles_at(self.settle), entry.not_before)
        return settled

    def held(self, path: Path, by: str, now: float) -> None:
        entry = self.known.get(path)
        if entry is not None and entry.phase in LOOKED_AT:
            entry.held_by, entry.next_check = by, now + min(self.settle, 5.0)

    def make_ready(self, look: Look, now: float) -> bool:
        """Queue a settled entry; False when it went meanwhile (removed while its writers were looked for)."""
        entry = self.known.get(look.path)
        if entry is None or entry.phase not in LOOKED_AT:
            return False
        entry.phase, entry.fingerprint, entry.settled_at, entry.held_by = Phase.READY, look.fingerprint, now, None
        self.ready.append(look.path)
        return True

    def next_ready(self) -> WatchedEntry | None:
        while self.ready:
            entry = self.known.get(self.ready.popleft())
            if entry is not None and entry.phase == Phase.READY:
                return entry
        return None

    def changed_since_ready(self, entry: WatchedEntry, look: Look, now: float) -> None:
        """Looked at once more before it was handed over, and found changed: it waits to settle again."""
        entry.phase, entry.next_check = Phase.WAITING, now
        self.clock.observe(look, now)

    # -- ending ----------------------------------------------------------------------------------------------------

    def finished(self, path: Path, status: OperationStatus, *, still_there: bool, now: float, once: bool) -> Outcome:
        """The upload of `path` ended with `status`: forget it, park it, retry it after a backoff, or (changed
        after it was packed) let it settle again."""
        entry = self.known.get(path) or WatchedEntry(path)
        if status == OperationStatus.CANCELLED or (status == OperationStatus.SUCCESS and not still_there):
            self.forget(path)  # done; or stopped (the next start takes it)
            return Outcome(entry)
        if status in (OperationStatus.SUCCESS, OperationStatus.SKIPPED):
            self._park(entry, now)  # still here (completed dir off, or a duplicate)
            return Outcome(entry)
        if status == OperationStatus.CHANGED and not once:
            self.clock.forget(path)  # it is another entry now
            entry.phase, entry.next_check = Phase.WAITING, now
            return Outcome(entry, "waits to settle again")
        entry.attempts += 1  # failed, partial (uploaded, not moved), or changed in a --once run
        if entry.attempts < self.max_attempts and not once:
            delay = self.retry_delay * 2 ** (entry.attempts - 1)
            entry.phase, entry.not_before = Phase.WAITING, now + delay
            entry.next_check = entry.not_before
            return Outcome(entry, f"retry {entry.attempts + 1}/{self.max_attempts} in {delay:g}s")
        self._park(entry, now)
        return Outcome(entry, "left for `amgmt retry`", failed=True)

    def elsewhere(self, path: Path, now: float, delay: float) -> None:
        """Another run holds the entry (a catalog several runs share): looked at again after `delay`; gone by then
        (that run moved it), it is forgotten as any vanished entry."""
        entry = self.known.get(path)
        if entry is not None:
            entry.phase, entry.not_before = Phase.WAITING, now + delay
            entry.next_check = entry.not_before

    @staticmethod
    def _park(entry: WatchedEntry, now: float) -> None:
        """Not taken again with its content as the next look finds it (the pipeline may have touched it: a move
        put back changes a ctime), only once that changes."""
        entry.phase, entry.fingerprint, entry.next_check = Phase.PARKED, None, now

    # -- what the outside sees ---------------------------------------------------------------------------------------

    def summary(self, now: float) -> dict[str, Any]:
        """The waiting (with seconds until each settles, or who holds it), in flight and retrying entries."""
        waiting: list[dict[str, Any]] = []
        in_flight: list[str] = []
        retrying: list[dict[str, Any]] = []
        for entry in self.known.values():
            name = display(entry.path.name)
            if entry.phase == Phase.IN_FLIGHT:
                in_flight.append(name)
            elif entry.phase == Phase.READY:
                waiting.append({"target_name": name, "settles_in": 0.0, "held_by": None})
            elif entry.phase == Phase.WAITING and entry.not_before > now:
                retry_in = round(entry.not_before - now, 1)
                retrying.append({"target_name": name, "attempt": entry.attempts + 1, "in": retry_in})
            elif entry.phase == Phase.WAITING:
                state = self.clock.entries.get(entry.path)
                settles = round(max(state.settles_at(self.settle) - now if state else self.settle, 0.0), 1)
                waiting.append({"target_name": name, "settles_in": settles, "held_by": entry.held_by})
        return {"waiting": waiting, "in_flight": in_flight, "retrying": retrying}
