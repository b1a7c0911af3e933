"""Who may write a key: the run's one-key-per-entry claim, the listing taken at the start, what an object already at
the key means for this upload (reuse it, take over our reservation, replace it, or refuse), and the older records
an upload supersedes. Decisions only: the sending is the pipeline's."""

from __future__ import annotations

from dataclasses import dataclass

from amgmt.errors import NotFoundError, UploadError, ValidationError
from amgmt.local.archive import ArchiveResult
from amgmt.models import FileStatus, OperationStatus, UploadRecord, utcnow
from amgmt.naming import renamed_key
from amgmt.s3 import METADATA_ARCHIVE_SHA256, METADATA_RESERVATION, METADATA_SOURCE_SHA256, ObjectInfo
from amgmt.store import Store
from amgmt.text import iso_utc

# record.metadata flags of an upload that replaced an object at its key
REPLACED_FLAGS = (
    "replaced_identical_content",
    "replaced_unconfirmed_object",
    "replaced_unverifiable_object",
    "replaced_conflicting_object",  # --on-conflict overwrite
)
# --on-conflict rename tries `NAME-2`, `NAME-3`, ... up to this number before the entry fails.
MAX_RENAME = 1000


class KnownKeys:
    """The keys under the run's prefix as listed when the run began (None: not listed, or too many to list)."""

    def __init__(self, keys: frozenset[str] | None) -> None:
        self._keys = keys

    def absent(self, key: str) -> bool:
        """True only when the listing was complete and `key` was not in it."""
        return self._keys is not None and key not in self._keys


def claim_key(claimed: dict[str, str], record: UploadRecord, *, rename: bool = False) -> None:
    """Reserve the entry's key for this run (`claimed`: key -> entry path): a second entry with the same key
    (`upload a/clip.mp4 b/clip.mp4`) fails instead of replacing the first one's verified object, or with `rename`
    (--on-conflict rename) takes the next free renamed key (`rename_record`)."""
    key = record.s3_object_key
    holder = claimed.setdefault(key, record.target_path)
    if holder != record.target_path and rename:
        rename_record(claimed, record)
    elif holder != record.target_path:
        raise ValidationError(
            f"{record.target_path} would be uploaded as s3://{record.s3_bucket}/{key}, the key of {holder} in this"
            " run; upload it in a run of its own (it then meets that object as existing) or set"
            " MGMT_PRESERVE_STRUCTURE"
        )


def rename_record(claimed: dict[str, str], record: UploadRecord) -> None:
    """--on-conflict rename: the record's key becomes the next renamed key of the entry's own key (naming.renamed_key)
    that no other entry of this run holds, claimed for it; `metadata["renamed_from"]` keeps the key it was planned
    for, `metadata["rename_number"]` the number reached (a later conflict goes on from there)."""
    planned = record.metadata.setdefault("renamed_from", record.s3_object_key)
    number = int(record.metadata.get("rename_number", 1))
    while number < MAX_RENAME:
        number += 1
        key = renamed_key(planned, number)
        if claimed.setdefault(key, record.target_path) == record.target_path:
            release_key(claimed, record)
            record.s3_object_key = key
            record.metadata["rename_number"] = number
            return
    raise UploadError(
        f"s3://{record.s3_bucket}/{planned} and its {MAX_RENAME - 1} renamed keys all hold other content"
        " (--on-conflict rename)"
    )


def release_key(claimed: dict[str, str], record: UploadRecord) -> None:
    """The entry ended: its key is free for a later entry of a long run (`amgmt watch`: a new `clip.mp4` dropped
    after the first one was uploaded and moved meets that object as existing, as a run of its own would)."""
    if claimed.get(record.s3_object_key) == record.target_path:
        del claimed[record.s3_object_key]


@dataclass(frozen=True)
class Verdict:
    """What to do about an object already at the key: `reuse` it (this very archive, nothing to send), or send and
    take over the reservation of `takeover` (an owner id), or send and replace it (`takeover` None), or, with
    `rename` (--on-conflict rename and a conflict), try the next renamed key."""

    reuse: bool = False
    takeover: str | None = None
    rename: bool = False


async def judge_existing(
    store: Store, record: UploadRecord, archive: ArchiveResult, existing: ObjectInfo, *, on_conflict: str
) -> Verdict:
    """Decide about `existing` at the record's key; set the record's flag saying why. A conflict (other content
    nothing of ours owns, or another run's reservation) is decided by `on_conflict` (MGMT_ON_CONFLICT): `fail`
    raises UploadError, `rename` says so (the caller tries the next key), `overwrite` replaces other content (never
    a live reservation: that run is still sending)."""
    where = f"s3://{record.s3_bucket}/{record.s3_object_key}"
    holder = existing.metadata.get(METADATA_RESERVATION)
    if holder is not None and existing.size == 0:
        if holder == record.operation_id or await operation_ended(store, holder):
            return Verdict(takeover=holder)
        if on_conflict == "rename":
            return Verdict(rename=True)
        raise UploadError(
            f"{where} is being uploaded by another amgmt run (operation {holder[:8]}); it is not overwritten (if no"
            " run is uploading it, use --overwrite)"
        )
    if (
        existing.metadata.get(METADATA_ARCHIVE_SHA256) == archive.archive_sha256
        and existing.size == archive.archive_size
    ):
        # This very archive is already there (an earlier run stopped before the move): proven in verify instead of
        # sent again.
        record.metadata["reused_existing_object"] = True
        return Verdict(reuse=True)
    claimed = existing.metadata.get(METADATA_SOURCE_SHA256)
    if claimed == archive.source_sha256:
        # Same source content packed differently (other mtimes, part size or amgmt version): replacing it loses
        # nothing, and the new object is verified like any other.
        record.metadata["replaced_identical_content"] = True
        return Verdict()
    if claimed is not None and await _unconfirmed_upload_of_ours(store, record, claimed):
        # Our own earlier attempt of other content that never completed a move (its source changed, or the move
        # failed): nothing in the completed dir holds it, and the entry now holds this content.
        record.metadata["replaced_unconfirmed_object"] = True
        return Verdict()
    if on_conflict == "rename":
        return Verdict(rename=True)
    if on_conflict == "overwrite":
        # The older upload's original was moved long ago; its records say superseded once this one is verified.
        record.metadata["replaced_conflicting_object"] = True
        return Verdict()
    raise UploadError(
        f"{where} already exists with other content; use --on-conflict rename to upload it under a new key,"
        " or --on-conflict overwrite to replace it"
    )


async def operation_ended(store: Store, operation_id: str) -> bool:
    """Whether `operation_id` is an operation of this database that is not in progress (a dead attempt)."""
    try:
        owner = await store.get_operation(operation_id)
    except NotFoundError:
        return False
    return owner.operation_id == operation_id and owner.status != OperationStatus.PENDING


async def _unconfirmed_upload_of_ours(store: Store, record: UploadRecord, source_sha256: str) -> bool:
    """Whether the object of `source_sha256` at the key was put there by uploads of ours none of which succeeded
    (no original in the completed dir depends on it)."""
    uploads = await store.find_uploads_by_key(bucket=record.s3_bucket, key=record.s3_object_key)
    ours = [u for u in uploads if u.checksum_original == source_sha256 and u.operation_id != record.operation_id]
    return bool(ours) and all(u.status not in (OperationStatus.SUCCESS, OperationStatus.PENDING) for u in ours)


async def supersede_replaced(store: Store, record: UploadRecord, *, overwrite: bool) -> None:
    """After an object was replaced at the record's key, the older uploads of other archives there say so (as
    `delete` does): their content is no longer in S3."""
    metadata = record.metadata
    replaced = overwrite or any(metadata.get(flag) for flag in REPLACED_FLAGS)
    if not replaced or metadata.get("reused_existing_object"):
        return
    for older in await store.find_uploads_by_key(bucket=record.s3_bucket, key=record.s3_object_key):
        s3_file = older.s3_file_record
        if (
            older.operation_id == record.operation_id
            or older.checksum_compressed == record.checksum_compressed
            or s3_file is None
            or s3_file.status != FileStatus.COMPLETED
        ):
            continue
        s3_file.status = FileStatus.DELETED
        s3_file.tags["superseded_by_operation_id"] = record.operation_id
        s3_file.tags["superseded_at"] = iso_utc(utcnow())
        await store.save_operation(older)
