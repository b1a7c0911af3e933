"""Repairing what interrupted runs leave behind: pending records, staging archives, open multipart uploads.

Callers hold the run lock of the local dir (SQLite), so nothing found here can belong to a run in progress on it; with
a catalog several runs share (PostgreSQL), a pending record is repaired only under its entry's claim (claims.py).
"""

from __future__ import annotations

import functools
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from amgmt.config import Settings
from amgmt.errors import NotFoundError
from amgmt.local.completed import MOVING_PREFIX, REMOVING_PREFIX, put_back
from amgmt.local.copying import remove_tree_quietly
from amgmt.local.destinations import CompletedDir
from amgmt.local.identity import Identity
from amgmt.local.move_recovery import recover_move
from amgmt.local.runlock import RunLock
from amgmt.models import OperationRecord, OperationStatus, Stage, UploadRecord
from amgmt.naming import display, staging_operation_id
from amgmt.s3 import ClientOptions, S3Bucket
from amgmt.store import JournaledUpload, Store, metadata_store
from amgmt.text import iso_utc

if TYPE_CHECKING:
    from amgmt.upload.claims import RunClaims

INTERRUPTED_REASON = "interrupted: the amgmt run that owned it stopped (killed or crashed)"


@dataclass
class Cleanup:
    """What was found (and, unless a dry run, repaired)."""

    interrupted_operations: list[str] = field(default_factory=list)
    staging_files: list[dict[str, Any]] = field(default_factory=list)
    multipart_uploads: list[dict[str, Any]] = field(default_factory=list)
    move_leftovers: list[dict[str, str]] = field(default_factory=list)  # {"path", "action"} of move temporaries
    finished_moves: list[str] = field(default_factory=list)  # target paths whose interrupted move was finished
    kept_multipart_uploads: list[dict[str, Any]] = field(default_factory=list)  # each with the reason it was kept
    dry_run: bool = False
    handled_tags: set[str] = field(default_factory=set, repr=False)  # operations whose moves were recovered

    @property
    def staging_bytes(self) -> int:
        return sum(f["size"] for f in self.staging_files)

    @property
    def multipart_bytes(self) -> int:
        return sum(u["size"] for u in self.multipart_uploads)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self) | {"staging_bytes": self.staging_bytes, "multipart_bytes": self.multipart_bytes}
        del out["handled_tags"]
        return out


def dir_lock(settings: Settings) -> AbstractContextManager[object]:
    """The local dir's flock (one run per local dir) with the SQLite store; nothing with a catalog several runs share
    (PostgreSQL): there runs of one local dir work side by side, each entry claimed by one (upload/claims.py)."""
    if settings.db_url:
        return nullcontext()
    return RunLock(settings.local_dir)


async def close_interrupted(
    settings: Settings, store: Store, found: Cleanup, *, claims: RunClaims | None = None
) -> None:
    """Pending records of this local dir belong to a run that died: record them cancelled, with the reason, and
    finish or undo the moves they were in the middle of (a dry run only says what it would do).

    With a catalog several runs share (`claims`), a pending record is a dead run's only when no run holds its
    entry's claim: this run claims those entries first (a live run's are left alone), repairs them, and then
    abandons the claims (its own entries are claimed again like any other)."""
    repairing: list[str] = []
    if found.dry_run or claims is not None:
        pending = await store.list_operations(status=OperationStatus.PENDING, limit=None)
        prefix = display(settings.local_dir)
        stale = [
            r
            for r in pending
            if (r.target_path == prefix or r.target_path.startswith(prefix + "/")) and store.made_here(r)
        ]
        if claims is not None and found.dry_run:
            live = await store.claimed_operations([r.operation_id for r in stale])
            stale = [r for r in stale if r.operation_id not in live]
        elif claims is not None:
            stale, repairing = await claims.hold_for_repair(stale)
            for record in stale:
                record.finish(OperationStatus.CANCELLED, error=f"{getattr(record, 'stage', '?')}: {INTERRUPTED_REASON}")
                await store.save_operation(record)
    else:
        stale = await store.mark_interrupted(target_prefix=display(settings.local_dir), reason=INTERRUPTED_REASON)
    found.interrupted_operations = [r.operation_id for r in stale]
    try:
        for record in stale:
            await _finish_moved(settings, store, record, found)
        await settle_move_leftovers(settings, store, found)
    finally:
        if claims is not None and repairing:
            await claims.abandon(repairing)


async def repair_taken_over(settings: Settings, store: Store, record: UploadRecord, source: Path, *, by: str) -> None:
    """The pending operation of a run whose claim of the entry (at `source` on this host) lapsed and was taken over
    by run `by`: recorded cancelled, and the move it was in the middle of finished or undone (as recovery does at
    the start of a run for this host's own); `record` says how it ended."""
    stage = record.stage
    record.finish(
        OperationStatus.CANCELLED,
        error=f"{stage}: interrupted: the run that held this entry stopped renewing its claim (taken over by run"
        f" {by[:8]})",
    )
    await store.save_operation(record)
    await _finish_moved(settings, store, record, Cleanup(), source=source)


async def _finish_moved(
    settings: Settings, store: Store, record: OperationRecord, found: Cleanup, *, source: Path | None = None
) -> None:
    """A run that died in stage 6 had already verified the object (the move starts only after verification).
    move_recovery.recover_move finishes the move when it can prove it (the record then says success, with how this
    was found out), undoes it otherwise, and records "changed" when the entry is no longer what was uploaded."""
    if not isinstance(record, UploadRecord) or record.stage != Stage.MOVE or not record.verification_method:
        return
    if source is None:
        raw = record.metadata.get("target_path_hex")
        source = Path(os.fsdecode(bytes.fromhex(raw))) if raw else Path(record.target_path)
    known = record.metadata.get("source_identity")
    recovery = await anyio.to_thread.run_sync(
        functools.partial(
            recover_move,
            source,
            CompletedDir.from_settings(settings),
            started=record.started_at,
            operation_id=record.operation_id,
            expected_identity=Identity.from_dict(known) if known else None,
            expected_digest=record.checksum_original if known else None,
            original_size=record.original_size,
            dry_run=found.dry_run,
        )
    )
    found.move_leftovers.extend(recovery.leftovers)
    found.handled_tags.add(record.operation_id[:8])
    if recovery.outcome == "moved":
        found.finished_moves.append(record.target_path)  # a dry run says so too: the real run will find the same
    if found.dry_run or not recovery.outcome:
        return
    record.result_path = f"s3://{record.s3_bucket}/{record.s3_object_key}"
    if recovery.outcome == "changed":
        record.finish(OperationStatus.CHANGED, error=f"move: {recovery.message}", when=record.completed_at)
        record.stage = Stage.DONE
        await store.save_operation(record)
        return
    assert recovery.final is not None
    record.finish(OperationStatus.SUCCESS, error=None, when=record.completed_at)
    record.error_message = None
    record.stage = Stage.DONE
    record.completed_dir_path = display(recovery.final)
    record.metadata["recovered"] = "the run died while moving the original; the move was finished and proven"
    await store.save_operation(record)


async def settle_move_leftovers(settings: Settings, store: Store, found: Cleanup) -> None:
    """Temporaries of moves whose records are not being recovered (directly in the completed dir and the local
    dir): an unfinished copy (.amgmt-moving-*) is removed; an original taken away (.amgmt-removing-*) is removed
    only when its operation succeeded (the copy was proven before it was installed), otherwise it is put back
    under a visible name for the next run to upload. A dry run says the same without doing it."""
    for directory, prefix in ((settings.completed_dir, MOVING_PREFIX), (settings.local_dir, REMOVING_PREFIX)):
        try:
            with os.scandir(directory) as it:
                items = sorted(Path(e.path) for e in it if e.name.startswith(prefix))
        except OSError:
            continue
        for path in items:
            tag = path.name[len(prefix) : len(prefix) + 8]
            if tag in found.handled_tags:
                continue
            try:
                owner: OperationRecord | None = await store.get_operation(tag)
            except NotFoundError:
                owner = None
            if owner is not None and owner.status == OperationStatus.PENDING:
                continue  # another run's, in progress (a completed dir shared by local dirs)
            if prefix == MOVING_PREFIX:
                action = "removed (an unfinished copy)"
                if not found.dry_run:
                    remove_tree_quietly(path)
            elif (
                isinstance(owner, UploadRecord)
                and owner.status == OperationStatus.SUCCESS
                and owner.completed_dir_path
                and os.path.lexists(owner.completed_dir_path)
            ):
                action = "removed (the move was complete)"
                if not found.dry_run:
                    remove_tree_quietly(path)
            else:
                name = owner.target_name if owner is not None else path.name[len(prefix) + 9 :].rsplit("-", 1)[0]
                back = path.parent / name
                if not found.dry_run:
                    try:
                        back = await anyio.to_thread.run_sync(functools.partial(put_back, path, back, tag=tag))
                    except OSError:
                        found.move_leftovers.append({"path": display(path), "action": "left: cannot put it back"})
                        continue
                action = f"put back as {display(back)}"
            found.move_leftovers.append({"path": display(path), "action": action})


async def remove_stale_staging(staging_dir: Path, store: Store, found: Cleanup) -> None:
    """Staging archives amgmt made for an operation that is no longer in progress (crash leftovers) are removed.

    Only regular files named as `staging_name` names them (or their `.partial`) whose operation id is one of the
    store's records are candidates: whatever else shares the dir (originals, other programs' files, archives of
    another database's runs) is never touched. A record still `pending` belongs to a live run sharing the dir,
    unless it is one of `found.interrupted_operations` (a dry run has not closed those yet: it must see the same).
    """
    try:
        items = sorted(os.scandir(staging_dir), key=lambda e: e.name)
    except OSError:
        return
    interrupted = set(found.interrupted_operations)
    for item in items:
        operation_id = staging_operation_id(item.name)
        if operation_id is None:
            continue
        try:
            if not item.is_file(follow_symlinks=False):
                continue
            owner = await store.get_operation(operation_id)
        except (OSError, NotFoundError):
            continue  # not amgmt's record: not amgmt's file
        if owner.status == OperationStatus.PENDING and owner.operation_id not in interrupted:
            continue  # a run sharing this staging dir is using it
        try:
            size = item.stat(follow_symlinks=False).st_size
            if not found.dry_run:
                os.unlink(item.path)
        except OSError:
            continue
        found.staging_files.append({"path": display(item.path), "size": size})


KEPT_IN_PROGRESS = "in progress: its operation is pending in a run that is still going (another local dir)"
KEPT_RESUMABLE = "resumable: journaled within --older-than; `amgmt retry --failed` or the next upload resumes it"


async def abort_stale_multiparts(
    s3: S3Bucket,
    store: Store,
    prefix: str,
    found: Cleanup,
    *,
    keys: set[str] | None,
    keep_journaled: bool,
    unknown_older_than: timedelta | None = None,
    resumable_for: timedelta | None = None,
) -> None:
    """Open multipart uploads under `prefix/` (only to `keys`, if given) are aborted.

    With `keep_journaled`, those the journal knows are kept for the entry to resume (an upload run). Without it
    (`amgmt cleanup`) a journaled one is aborted and its journal entry closed, except when its operation is still in
    progress (pending, and not one of `found.interrupted_operations`: a live run on another local dir sharing the
    database), or when `resumable_for` is given and it was journaled less than that long ago; those are listed in
    `found.kept_multipart_uploads`. Uploads the journal does not know may be another machine's, in progress: with
    `unknown_older_than` only those started longer ago go.
    """
    journaled = {u.upload_id: u for u in await store.open_multiparts(bucket=s3.bucket)}
    interrupted = set(found.interrupted_operations)
    now = datetime.now(UTC)
    for upload in await s3.list_multipart_uploads(f"{prefix}/" if prefix else ""):
        if keys is not None and upload["key"] not in keys:
            continue
        journal = journaled.get(upload["upload_id"])
        if keep_journaled and journal is not None:
            continue
        initiated = upload.get("initiated")
        if journal is None and unknown_older_than is not None and initiated and now - initiated < unknown_older_than:
            continue
        kept = None
        if journal is not None:
            kept = await _keep_journaled(store, journal, interrupted, now, resumable_for)
        parts = await s3.list_parts(upload["key"], upload["upload_id"]) or {}
        size = sum(int(p.get("Size", 0)) for p in parts.values())
        found_upload = {
            "key": upload["key"],
            "upload_id": upload["upload_id"],
            "initiated": iso_utc(initiated) if initiated else None,
            "parts": len(parts),
            "size": size,
        }
        if kept is not None and journal is not None:
            found.kept_multipart_uploads.append(found_upload | {"operation_id": journal.operation_id, "reason": kept})
            continue
        if not found.dry_run:
            await s3.abort_multipart(upload["key"], upload["upload_id"])
            if journal is not None:
                await store.journal_multipart_state(upload["upload_id"], "aborted")
                # The key reservation the killed upload held (s3.METADATA_RESERVATION) goes with it.
                await s3.release_reservation(upload["key"], {journal.operation_id})
        found.multipart_uploads.append(found_upload)


async def _keep_journaled(
    store: Store,
    journal: JournaledUpload,
    interrupted: set[str],
    now: datetime,
    resumable_for: timedelta | None,
) -> str | None:
    """Why a journaled upload must stay (KEPT_IN_PROGRESS, KEPT_RESUMABLE), or None when it may be aborted."""
    try:
        owner = await store.get_operation(journal.operation_id)
    except NotFoundError:
        owner = None
    if owner is not None and owner.status == OperationStatus.PENDING and owner.operation_id not in interrupted:
        return KEPT_IN_PROGRESS
    if resumable_for is not None and journal.created_at is not None and now - journal.created_at < resumable_for:
        return KEPT_RESUMABLE
    return None


async def cleanup(
    settings: Settings,
    *,
    dry_run: bool = False,
    older_than: timedelta = timedelta(hours=1),
    include_resumable: bool = False,
) -> Cleanup:
    """`amgmt cleanup`: with the run lock held, close dead runs' records, remove stale staging archives, and abort
    the open multipart uploads under the prefix older than `older_than`, saying how many bytes they held.

    Uploads amgmt journaled less than `older_than` ago are kept for a retry to resume, unless `include_resumable`;
    those of operations still in progress (a run on another local dir) are always kept. A dry run finds exactly
    what the run would remove and abort."""
    found = Cleanup(dry_run=dry_run)
    from amgmt.upload.claims import run_lease  # (claims.py repairs with this module's functions)

    with dir_lock(settings):
        async with (
            metadata_store(settings) as store,
            run_lease(settings, store) as claims,
            S3Bucket.connect(ClientOptions.from_settings(settings)) as s3,
        ):
            await s3.check_bucket()
            await close_interrupted(settings, store, found, claims=claims)
            await remove_stale_staging(settings.staging_dir, store, found)
            await abort_stale_multiparts(
                s3,
                store,
                settings.object_prefix,
                found,
                keys=None,
                keep_journaled=False,
                unknown_older_than=older_than,
                resumable_for=None if include_resumable else older_than,
            )
    return found
