"""Several runs on one local dir at once (a catalog several runs share: PostgreSQL): the run's lease, the claim of
each entry by exactly one run, the fence before an irreversible step, and the takeover of a dead run's entries.

- The run registers itself (`runs`: run id, host, pid, heartbeat) and renews its lease and every claim it holds
  every third of MGMT_LEASE_SECONDS (a background task); a run whose host dies stops renewing, and its claims run
  out one lease later.
- An entry is claimed (`entry_claims`, one row per entry name of the local dir) before its first record: one
  statement per entry, one per batch of the small-entry lane (Store.claim_entries says why it is correct). An entry
  another run holds, or ended after this run started, is left to it (`elsewhere`, not a failure).
- A claim taken over from a run whose lease ran out first repairs that run's interrupted operation (recorded
  cancelled; a move it was in the middle of finished or undone, as recovery does for this host's own), so that the
  entry's multipart upload resumes from the shared journal and its key reservation is taken over.
- Fencing: before the single PUT that makes the key, the CompleteMultipartUpload and the move of the original, the
  run checks in the database that it still holds the claim, renewing it in the same statement: a run that stalled
  past its lease and lost the entry to another stops that entry without acting (ClaimLostError).
- The claim is released when the entry ends (any outcome but cancelled); a cancelled entry's claim is abandoned
  (expired at once) so that any run may take it.

Nothing here for SQLite: one run per local dir under the flock (upload/batch.py), as before.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from amgmt.config import Settings
from amgmt.errors import ClaimLostError, NotFoundError, StoreError
from amgmt.local.runlock import dir_identity
from amgmt.models import OperationRecord, OperationStatus, UploadRecord
from amgmt.naming import display
from amgmt.store import Claimed, RunLease, Store
from amgmt.upload.recovery import repair_taken_over

log = logging.getLogger("amgmt")

END_TIMEOUT = 10.0  # seconds the run's last statement (ending its lease) may take; else its lease runs out alone


@dataclass(frozen=True)
class ClaimItem:
    """An entry to claim: its name in the local dir, the operation that will record it, and its path here."""

    name: str
    operation_id: str
    path: Path


@dataclass
class RunClaims:
    """A run's lease in the shared catalog and the claims of its entries (one object per run)."""

    store: Store
    settings: Settings
    lease: RunLease
    started: float  # the database's time the run registered
    elsewhere: list[str] = field(default_factory=list)  # entries another run holds or ended meanwhile
    taken_over: list[str] = field(default_factory=list)  # entries whose lapsed claim this run took over
    repaired: list[str] = field(default_factory=list)  # operations of dead runs this run repaired on takeover

    @property
    def seconds(self) -> float:
        return self.settings.lease_seconds

    async def claim(self, items: Sequence[ClaimItem]) -> list[ClaimItem]:
        """The items this run got, each repaired first when it was taken over from a dead run; the others are
        noted `elsewhere`. An item whose takeover finished it (the dead run had verified it and was moving it) is
        released and noted elsewhere too: there is nothing left to do."""
        got = await self.store.claim_entries(
            self.lease, [(i.name, i.operation_id) for i in items], seconds=self.seconds, started=self.started
        )
        mine: list[ClaimItem] = []
        done: list[str] = []
        for item in items:
            claimed = got.get(item.name)
            if claimed is None:
                self.elsewhere.append(item.name)
            elif claimed.previous_run is not None and await self._take_over(item, claimed):
                done.append(item.name)
                self.elsewhere.append(item.name)
            else:
                mine.append(item)
        if done:
            await self.store.release_entries(self.lease, done)
        return mine

    async def _take_over(self, item: ClaimItem, claimed: Claimed) -> bool:
        """Repair what the run that held the entry left; True when that finished the entry."""
        self.taken_over.append(item.name)
        log.info("entry %s: taken over from run %s (its lease ran out)", item.name, claimed.previous_run)
        if claimed.previous_operation is None:
            return False
        try:
            record = await self.store.get_operation(claimed.previous_operation)
        except NotFoundError:
            return False
        if not isinstance(record, UploadRecord):
            return False
        if record.status == OperationStatus.PENDING:
            self.repaired.append(record.operation_id)
            await repair_taken_over(self.settings, self.store, record, item.path, by=self.lease.run_id)
        # Done when the dead run's upload ended in success (it died before releasing, or this repair finished its
        # move) and the original is gone from here (moved to the completed dir).
        return record.status == OperationStatus.SUCCESS and not os.path.lexists(item.path)

    async def hold_for_repair(self, records: Sequence[OperationRecord]) -> tuple[list[OperationRecord], list[str]]:
        """Of these pending records (this host's, left by runs that died?), those whose entries this run could
        claim (no live run holds them), and the names claimed: `abandon` them once repaired."""
        by_name: dict[str, list[OperationRecord]] = {}
        for record in records:
            by_name.setdefault(record.target_name, []).append(record)
        got = await self.store.claim_entries(
            self.lease,
            [(name, found[0].operation_id) for name, found in by_name.items()],
            seconds=self.seconds,
            started=self.started,
        )
        return [r for name in got for r in by_name[name]], list(got)

    async def abandon(self, names: Sequence[str]) -> None:
        """Give up these claims unreleased: any run (this one too) may claim the entries at once."""
        await self.store.release_entries(self.lease, [], abandon=names)

    async def fence(self, names: Sequence[str]) -> set[str]:
        """Of `names`, those this run no longer holds (another run took them over): their entries must stop
        without acting. Those it holds are renewed for a whole lease from now."""
        held = await self.store.fence_entries(self.lease, names, seconds=self.seconds)
        return set(names) - held

    async def check(self, name: str, doing: str) -> None:
        """ClaimLostError unless this run still holds the entry's claim (renewed for a lease from now)."""
        if await self.fence([name]):
            raise self.lost(doing)

    def lost(self, doing: str) -> ClaimLostError:
        return ClaimLostError(
            f"not {doing}: another run took over this entry (this run's claim lapsed: it stalled for longer than"
            f" MGMT_LEASE_SECONDS={self.seconds:g})"
        )

    async def release(self, records: Sequence[UploadRecord]) -> None:
        """The entries of these records ended: released, or abandoned when cancelled (not done: any run may take
        them). Best effort: a claim left behind runs out with the lease."""
        done = [r.target_name for r in records if r.status != OperationStatus.CANCELLED]
        abandon = [r.target_name for r in records if r.status == OperationStatus.CANCELLED]
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(END_TIMEOUT):
                    await self.store.release_entries(self.lease, done, abandon=abandon)
            except (StoreError, TimeoutError) as exc:
                log.warning("cannot release %d claims (they run out with the lease): %s", len(records), exc)

    async def _heartbeat(self) -> None:
        """Renew the lease and the claims every third of it; a database that does not answer is tried again at
        the next beat (the run's own statements stop it meanwhile, and its claims run out: the fences say so)."""
        while True:
            await anyio.sleep(self.seconds / 3)
            try:
                with anyio.fail_after(self.seconds / 3):
                    await self.store.renew_run(self.lease.run_id, seconds=self.seconds)
            except (StoreError, TimeoutError) as exc:
                log.warning("cannot renew the run's lease: %s", exc)


@asynccontextmanager
async def run_lease(settings: Settings, store: Store) -> AsyncIterator[RunClaims | None]:
    """The run's lease in a shared catalog, renewed while the block runs and ended after it (the claims it still
    holds abandoned); None for a store of one host (SQLite: the flock is the run's lock)."""
    if not store.shared:
        yield None
        return
    lease = RunLease(
        run_id=uuid.uuid4().hex,
        dir_id=dir_identity(settings.db_path.parent),
        host_id=settings.host_id,
        pid=os.getpid(),
        local_dir=display(settings.local_dir),
    )
    await _end_dead_runs_of_this_host(store, lease)
    started = await store.register_run(lease, seconds=settings.lease_seconds)
    claims = RunClaims(store, settings, lease, started)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(claims._heartbeat)
            try:
                yield claims
            finally:
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(END_TIMEOUT):
                    await store.end_run(lease.run_id)
            except (StoreError, TimeoutError) as exc:
                log.warning("cannot end the run's lease (it runs out by itself): %s", exc)


async def _end_dead_runs_of_this_host(store: Store, lease: RunLease) -> None:
    """Runs of this host whose process is gone (killed, or ended while the database was unreachable) end now, their
    claims abandoned: a restart here takes their entries over at once instead of one lease later. Only this host's
    (MGMT_HOST_ID names one host): another host's process cannot be seen from here, its lease tells."""
    for run_id, pid in await store.unended_runs(lease.host_id):
        if pid != lease.pid and not _process_exists(pid):
            log.info("run %s (pid %d, this host) is gone: its claims are abandoned", run_id, pid)
            await store.end_run(run_id)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
