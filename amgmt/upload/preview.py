"""`upload --dry-run` asking the bucket: for each planned entry, what is at its key now (the run's listing, else a
HEAD) and so what a run would do: upload it, skip it (this content is already there), or meet a conflict (other
content), decided as MGMT_ON_CONFLICT would. Sends no data, writes nothing, opens no database; a file whose size
equals the object's source size is read (hashed) to tell a skip from a conflict, a directory is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from amgmt.config import Settings
from amgmt.errors import StorageError
from amgmt.local.archive import sha256_file
from amgmt.local.entries import PlannedEntry
from amgmt.naming import display, renamed_key
from amgmt.s3 import METADATA_RESERVATION, METADATA_SOURCE_SHA256, METADATA_SOURCE_SIZE, ClientOptions, S3Bucket
from amgmt.upload.ownership import MAX_RENAME

HEADS_AT_ONCE = 16
LISTING_PAGES = 10  # a prefix of up to 10,000 keys is listed once; beyond that, every key gets its HEAD
# actions
UPLOAD, SKIP, SAME_SIZE, CONFLICT = "upload", "skip", "exists", "conflict"


@dataclass
class Prediction:
    """What a run would do with one planned entry: `action` (upload, skip, exists, conflict), at `key` (the planned
    one, or the renamed key `--on-conflict rename` would take), and why."""

    planned: PlannedEntry
    action: str = UPLOAD
    key: str = ""
    reason: str = ""

    def to_dict(self, bucket: str | None) -> dict[str, Any]:
        return {**self.planned.to_dict(bucket), "action": self.action, "predicted_key": self.key, "reason": self.reason}


async def predict(settings: Settings, planned: list[PlannedEntry], *, overwrite: bool = False) -> list[Prediction]:
    """Ask the bucket about every planned key (StorageError when it cannot be reached, as a run would). With
    `overwrite` (--overwrite), every entry is uploaded, over whatever is there."""
    predictions = [Prediction(p, key=p.key) for p in planned]
    options = ClientOptions.from_settings(settings, max_connections=HEADS_AT_ONCE + 2)
    async with S3Bucket.connect(options) as s3:
        await s3.check_bucket()
        listed = await _listing(s3, settings) if len(planned) > 1 else None
        lookup = _Lookup(s3, listed)
        limiter = anyio.CapacityLimiter(HEADS_AT_ONCE)

        async def one(prediction: Prediction) -> None:
            async with limiter:
                await _decide(lookup, prediction, settings.on_conflict)

        async with anyio.create_task_group() as tg:
            for prediction in predictions:
                tg.start_soon(one, prediction)
    if overwrite:
        for prediction in predictions:
            if prediction.action != UPLOAD:
                prediction.action, prediction.key = UPLOAD, prediction.planned.key
                prediction.reason = f"{prediction.reason}; --overwrite uploads it again, replacing the object"
    _same_run_keys(predictions, settings.on_conflict)  # never replaced, even with --overwrite
    return predictions


async def _listing(s3: S3Bucket, settings: Settings) -> frozenset[str] | None:
    prefix = f"{settings.object_prefix}/" if settings.object_prefix else ""
    try:
        return await s3.list_keys(prefix, max_pages=LISTING_PAGES)
    except StorageError:  # no s3:ListBucket: a HEAD per key instead
        return None


@dataclass
class _Lookup:
    s3: S3Bucket
    listed: frozenset[str] | None

    async def head(self, key: str) -> Any:
        if self.listed is not None and key not in self.listed:
            return None
        return await self.s3.head_object(key)


async def _decide(lookup: _Lookup, prediction: Prediction, on_conflict: str) -> None:
    planned = prediction.planned
    verdict = await _at_key(lookup, planned, planned.key)
    if verdict is None:
        return
    action, reason = verdict
    prediction.action, prediction.reason = action, reason
    if action != CONFLICT or on_conflict == "fail":
        return
    if on_conflict == "overwrite":
        prediction.reason = f"{reason}; --on-conflict overwrite replaces it"
        return
    for number in range(2, MAX_RENAME + 1):  # rename: the first renamed key that is free or holds this content
        key = renamed_key(planned.key, number)
        found = await _at_key(lookup, planned, key)
        if found is None or found[0] != CONFLICT:
            prediction.action = UPLOAD if found is None else found[0]
            prediction.key = key
            prediction.reason = f"{reason}; --on-conflict rename takes {key}"
            return


async def _at_key(lookup: _Lookup, planned: PlannedEntry, key: str) -> tuple[str, str] | None:
    """None when the key is free, else (action, reason) for what is there."""
    existing = await lookup.head(key)
    if existing is None:
        return None
    meta = existing.metadata
    holder = meta.get(METADATA_RESERVATION)
    if holder is not None and existing.size == 0:
        return CONFLICT, f"being uploaded by an amgmt run (operation {holder[:8]}), or left by one that died"
    source_sha256, source_size = meta.get(METADATA_SOURCE_SHA256), meta.get(METADATA_SOURCE_SIZE)
    if source_sha256 is None or source_size != str(planned.size):
        return CONFLICT, "holds other content" if source_sha256 else "holds an object amgmt did not upload"
    if planned.is_directory:
        return SAME_SIZE, "holds a directory of the same size (a dry run does not read it: the run compares content)"
    digest = await anyio.to_thread.run_sync(sha256_file, str(planned.path))
    if digest == source_sha256:
        return SKIP, "holds this content already"
    return CONFLICT, "holds other content of the same size"


def _same_run_keys(predictions: list[Prediction], on_conflict: str) -> None:
    """Two entries of one run with one key: the second fails (or, with rename, a run gives it the next key: not
    predicted here beyond saying so)."""
    holders: dict[str, Prediction] = {}
    for prediction in predictions:
        first = holders.setdefault(prediction.key, prediction)
        if first is not prediction:
            prediction.action = CONFLICT
            prediction.reason = f"the key of {display(first.planned.path.name)} in this run" + (
                "; --on-conflict rename takes the next free key" if on_conflict == "rename" else ""
            )
