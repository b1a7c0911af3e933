"""The upload of one staging archive: one PUT when it is a single part, else the multipart loop in named steps
(reserve the key, create or resume, send the parts, check the reservation, complete; abort on failure).

Like s3transfer's coordinator, a `MultipartUpload` keeps a list of failure cleanups, and the abort is registered the
moment the UploadId exists. Must not know entries or records (the journal is a Protocol) and makes no request but
through S3Bucket.request (the one RetryPolicy).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from amgmt import checksums
from amgmt.checksums import StoredChecksum
from amgmt.errors import ClaimLostError, UploadError, first_error
from amgmt.parts import md5_base64, normalise_etag, part_ranges
from amgmt.s3 import bandwidth, bodies, reservation
from amgmt.s3.bodies import ByteBudget
from amgmt.s3.values import MultipartJournal, ObjectOptions, PartDone, ProgressCallback, UploadResult, UploadStats

if TYPE_CHECKING:
    from amgmt.s3.client import S3Bucket
    from amgmt.s3.direct import DirectRequests

ABORT_TIMEOUT = 15.0
# Parts go from the staging file to the socket by os.sendfile where the direct transport is in use (False: always
# read into memory and sent by botocore; the benchmark's A/B).
ZERO_COPY = True
Cleanup = Callable[[], Awaitable[None]]
Fence = Callable[[], Awaitable[None]]


async def upload_file(
    s3: S3Bucket,
    key: str,
    path: str,
    *,
    size: int,
    part_size: int,
    part_md5s: Sequence[str],
    metadata: Mapping[str, str],
    storage_class: str | None,
    budget: ByteBudget,
    stats: UploadStats,
    on_progress: ProgressCallback | None = None,
    journal: MultipartJournal | None = None,
    resume_upload_id: str | None = None,
    if_absent: bool = False,
    owner: str = "",
    takeover: str | None = None,
    checksum: str | None = None,
    part_checksums: Sequence[str] = (),
    payload_sha256: str | None = None,
    options: ObjectOptions | None = None,
    journaled_parts: Mapping[int, tuple[str, str | None]] | None = None,
    fence: Fence | None = None,
) -> UploadResult:
    """Upload a local file as `key`: one PUT when it is a single part, else our own multipart loop.

    Every request carries Content-MD5 (so a real server rejects a corrupted body), unless `part_md5s` is empty: then
    every body carries its `checksum` instead (the endpoint proves the bytes by it: probe.py), and each request
    goes through the RetryPolicy.
    Parts are sent concurrently, each holding its size in the shared byte `budget` while it is under way: from the
    file to the socket by sendfile where the direct transport is in use, every header value is known and no
    --bwlimit holds the bodies back (no memory), else read in a worker thread into memory, so the memory of all
    uploads of a run is bounded by the budget.

    Multipart progress goes to `journal` as it happens. With `resume_upload_id`, the server's parts are listed
    and those whose ETag equals our part MD5 are kept; only the others are sent. On an error the upload is
    aborted (shielded, time-bounded); on cancellation it is left open for a later run to resume (`amgmt
    cleanup` aborts what nobody resumes).

    With `if_absent`, a single PUT only creates the object (If-None-Match: *: documented for AWS S3, tested
    here on radosgw 16.2 and moto 5.2) and raises ObjectExistsError when the key is taken; an endpoint that
    answers 501 to it gets plain PUTs from then on. A multipart upload with `if_absent` first reserves the key
    for `owner` (see reservation.py; ObjectExistsError when the key is taken); `takeover` names the owner of an
    earlier reservation the caller has proven its own. Before CompleteMultipartUpload the key must still hold that
    reservation (else UploadError: somebody else wrote it, and it is not overwritten), and the complete is sent
    If-Match its ETag where the server honours that (AWS). A failed or cancelled upload removes its reservation
    again; one killed with SIGKILL leaves it for the next run to take over (or `amgmt cleanup` to remove).

    With `checksum` (a flexible checksum algorithm, see amgmt.checksums), every PUT and part also carries that
    checksum for the server to check, a multipart upload is created for it (CRCs: FULL_OBJECT, SHA-256: COMPOSITE)
    and completed with the whole object's value, which the result holds for verification. `part_checksums` are
    the parts' values when already computed (the CRC64NVMEs of the packing pass); otherwise each part's is computed
    once, as it is read, and kept for its retries. `payload_sha256`: the archive's SHA-256, the payload hash of a
    signed single PUT. `options`: encryption, ACL, tags and user metadata, sent with the PUT or the create.
    `journaled_parts`: part number -> (ETag, checksum) as the journal of `resume_upload_id`
    recorded them when the server took them: without MD5s, a part the server still holds with that ETag, whose
    journaled checksum (checked by the server then) is this archive's, is kept even where ListParts reports no
    checksum (moto 5.2).

    `fence`, when given, is awaited right before the request that makes the object (the single PUT, the
    CompleteMultipartUpload); the ClaimLostError it raises stops the upload without any cleanup, the multipart
    upload left open and the reservation in place: another writer owns the key's upload now (upload/claims.py).
    """
    ranges = part_ranges(size, part_size)
    if (part_md5s and len(ranges) != len(part_md5s)) or (part_checksums and len(part_checksums) != len(ranges)):
        raise UploadError(f"{path}: {len(part_md5s)} part checksums for {len(ranges)} parts")
    if not part_md5s and checksum is None:
        raise UploadError(f"{path}: neither part MD5s nor a checksum to send its parts with")
    options = options or ObjectOptions()
    extra: dict[str, Any] = {
        "Metadata": {**dict(options.metadata), **metadata},
        "ContentType": "application/gzip",
        **options.request_fields(),
    }
    if storage_class:
        extra["StorageClass"] = storage_class
    if len(ranges) == 1:
        return await _upload_single(
            s3,
            key,
            path,
            size=size,
            md5=part_md5s[0] if part_md5s else None,
            extra=extra,
            storage_class=storage_class,
            budget=budget,
            stats=stats,
            on_progress=on_progress,
            if_absent=if_absent,
            checksum=checksum,
            known=part_checksums[0] if part_checksums else None,
            payload_sha256=payload_sha256,
            fence=fence,
        )
    upload = MultipartUpload(
        s3,
        key,
        path,
        ranges=ranges,
        part_md5s=part_md5s,
        extra=extra,
        storage_class=storage_class,
        budget=budget,
        stats=stats,
        on_progress=on_progress,
        journal=journal,
        reserved_by={owner, takeover} - {None, ""} if (if_absent or takeover) else set(),  # type: ignore[arg-type]
        checksum=checksum,
        part_checksums=dict(enumerate(part_checksums, start=1)),
        journaled_parts=dict(journaled_parts or {}),
        fence=fence,
    )
    return await upload.run(resume_upload_id=resume_upload_id, reserve_for=owner if if_absent else None)


async def _upload_single(
    s3: S3Bucket,
    key: str,
    path: str,
    *,
    size: int,
    md5: str | None,
    extra: dict[str, Any],
    storage_class: str | None,
    budget: ByteBudget,
    stats: UploadStats,
    on_progress: ProgressCallback | None,
    if_absent: bool,
    checksum: str | None,
    known: str | None,
    payload_sha256: str | None,
    fence: Fence | None,
) -> UploadResult:
    """A one-part archive: one PUT of its bytes, read whole while holding their size in the budget."""
    async with budget.hold(size):
        body = await bandwidth.read_body(path, 0, size, s3.bandwidth)
        if fence is not None:
            await fence()
        resp, sent = await _put_whole(
            s3,
            key,
            body,
            md5_base64(md5) if md5 is not None else None,
            extra,
            storage_class=storage_class,
            stats=stats,
            if_absent=if_absent,
            checksum=checksum,
            known=known,
            payload_sha256=payload_sha256,
        )
    stats.parts_sent += 1
    stats.bytes_sent += size
    if on_progress:
        on_progress(size)
    return UploadResult(
        etag=normalise_etag(resp.get("ETag")), multipart=False, part_count=1, upload_id=None, checksum=sent
    )


async def _put_whole(
    s3: S3Bucket,
    key: str,
    data: bytearray,
    content_md5: str | None,
    extra: dict[str, Any],
    *,
    storage_class: str | None,
    stats: UploadStats,
    if_absent: bool,
    checksum: str | None,
    known: str | None,
    payload_sha256: str | None,
) -> tuple[Any, StoredChecksum | None]:
    """The single PUT, with the body's checksum of `checksum` (`known`, or computed here once, off the event loop);
    (the answer, the checksum sent)."""
    sent = None
    if checksum is not None:
        if known is None:
            known = await bodies.off_loop(functools.partial(checksums.of_bytes, checksum), data)
        sent = StoredChecksum(checksum, known, checksums.FULL_OBJECT)
    resp = await s3.put_bytes(
        key,
        data,
        content_md5,
        extra,
        storage_class=storage_class,
        stats=stats,
        if_absent=if_absent,
        checksum=(sent.algorithm, sent.value) if sent else None,
        payload_sha256=payload_sha256,
    )
    return resp, sent


@dataclass
class MultipartUpload:
    """One multipart upload: its state (UploadId, the parts done) and its failure cleanups."""

    s3: S3Bucket
    key: str
    path: str
    ranges: list[tuple[int, int, int]]
    part_md5s: Sequence[str]  # empty: parts are sent and matched by their checksum alone
    extra: dict[str, Any]
    storage_class: str | None
    budget: ByteBudget
    stats: UploadStats
    on_progress: ProgressCallback | None
    journal: MultipartJournal | None
    reserved_by: set[str]  # the owners whose reservation of the key this upload may complete over
    checksum: str | None = None  # the flexible checksum algorithm sent with every part, or None
    part_checksums: dict[int, str] = field(default_factory=dict)  # part number -> its checksum's header value
    journaled_parts: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # see upload_file
    fence: Fence | None = None  # see upload_file
    upload_id: str | None = None
    completed: dict[int, dict[str, Any]] = field(default_factory=dict)
    # (cleanup, also when cancelled), run last-registered first when the upload does not complete.
    _cleanups: list[tuple[Cleanup, bool]] = field(default_factory=list)

    async def run(self, *, resume_upload_id: str | None, reserve_for: str | None) -> UploadResult:
        try:
            if reserve_for is not None:  # a resumed upload too: its reservation was released when it was cancelled
                await self.reserve_key(reserve_for)
            if resume_upload_id:
                await self.resume(resume_upload_id)
            if self.upload_id is None:
                await self.create()
            await self.send_parts()
            whole = await self.whole_checksum()
            condition = await self.check_reservation()
            if self.fence is not None:
                await self.fence()
            done = await self.complete(condition, whole)
        except ClaimLostError:
            raise  # another writer owns this upload now: nothing of it is ours to abort or release
        except anyio.get_cancelled_exc_class():
            # Left open and journaled: a later run resumes it (and reserves the key again). The key is not left
            # holding an empty object meanwhile.
            await self._clean_up(cancelled=True)
            raise
        except BaseException:
            await self._clean_up(cancelled=False)
            raise
        if self.journal:
            await self.journal.finished(self.upload_id, "completed")  # type: ignore[arg-type]
        return UploadResult(
            etag=normalise_etag(done.get("ETag")),
            multipart=True,
            part_count=len(self.ranges),
            upload_id=self.upload_id,
            checksum=whole,
        )

    async def resume(self, upload_id: str) -> None:
        """Keep the parts the server holds for `upload_id` whose size is ours and whose ETag is our part MD5;
        without MD5s, whose checksum is ours as ListParts reports it, or else as the journal recorded it for the
        part with that very ETag (the same bytes the server took then). The others are sent again. A part kept
        wrongly would still fail verification: the server's whole-object checksum covers every byte."""
        on_server = await self.s3.list_parts(self.key, upload_id)
        if on_server is None:
            return  # the upload is gone: a new one is created
        self.upload_id = upload_id
        self.stats.resumed_upload_id = upload_id
        self._on_failure(self.abort)
        for number, _offset, length in self.ranges:
            found = on_server.get(number)
            if found and found["Size"] == length and self._same_part(number, found):
                self.completed[number] = {"PartNumber": number, "ETag": found["ETag"]}
                self.stats.parts_reused += 1
                if self.on_progress:
                    self.on_progress(length)

    def _same_part(self, number: int, found: Mapping[str, Any]) -> bool:
        if self.part_md5s:
            return normalise_etag(found["ETag"]) == self.part_md5s[number - 1]
        known = self.part_checksums.get(number)
        if self.checksum is None or known is None:
            return False
        reported = found.get(checksums.api_name(self.checksum))
        if reported is not None:
            return bool(reported == known)
        etag, journaled = self.journaled_parts.get(number, ("", None))
        return bool(etag) and normalise_etag(found["ETag"]) == normalise_etag(etag) and journaled == known

    async def reserve_key(self, owner: str) -> None:
        # Registered before the request: a run cancelled while the reserving PUT is under way (the server may have
        # made the object already) still removes it. Release removes only our own reservation, never another's.
        self._on_failure(self.release_reservation, also_when_cancelled=True)
        await reservation.reserve_key(self.s3, self.key, owner, self.stats)

    async def create(self) -> None:
        extra = self.extra
        if self.checksum is not None:
            extra = {
                **extra,
                "ChecksumAlgorithm": self.checksum.upper(),
                "ChecksumType": checksums.checksum_type(self.checksum),
            }
        s3 = self.s3
        created = await s3.creating(
            self.storage_class,
            "create multipart upload of",
            self.key,
            lambda: s3.client.create_multipart_upload(Bucket=s3.bucket, Key=self.key, **extra),
            stats=self.stats,
        )
        self.upload_id = created["UploadId"]
        self._on_failure(self.abort)  # before anything else can fail: every later failure aborts it
        if self.journal:
            await self.journal.started(created["UploadId"])

    async def send_parts(self) -> None:
        """Every part not yet on the server, concurrently; the shared budget, not this group, bounds how many."""
        try:
            async with anyio.create_task_group() as tg:
                for number, offset, length in self.ranges:
                    if number not in self.completed:
                        tg.start_soon(self.send_part, number, offset, length)
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def send_part(self, number: int, offset: int, length: int) -> None:
        md5 = self.part_md5s[number - 1] if self.part_md5s else ""
        async with self.budget.hold(length):
            direct = await self._zero_copy(number)
            if direct is not None:
                resp = await self._send_from_file(direct, number, offset, length, md5)
            else:
                resp = await self._send_from_memory(number, offset, length, md5)
        self.completed[number] = {"PartNumber": number, "ETag": resp["ETag"]}
        self.stats.parts_sent += 1
        self.stats.bytes_sent += length
        if self.journal:
            done = PartDone(number, length, md5, normalise_etag(resp["ETag"]), self.part_checksums.get(number))
            await self.journal.part_done(self.upload_id, done)  # type: ignore[arg-type]
        if self.on_progress:
            self.on_progress(length)

    async def _zero_copy(self, number: int) -> DirectRequests | None:
        """The direct transport, when part `number` can go from the file to the socket: every value its headers
        need is known (the MD5 and checksum from the packing pass), the payload is not signed (a signature
        would need the body's SHA-256), and no bandwidth limit holds the body back (MGMT_BWLIMIT: its bucket is
        taken as aiohttp writes the body, bandwidth.py, which the kernel's sendfile would bypass)."""
        if not ZERO_COPY or self.s3.options.payload_signing or self.s3.bandwidth is not None:
            return None
        if self.checksum is not None and number not in self.part_checksums:
            return None
        return await self.s3.direct()

    async def _send_from_file(self, direct: DirectRequests, number: int, offset: int, length: int, md5: str) -> Any:
        """Part `number` by os.sendfile (direct.py): no read into memory, no copy through Python."""
        checksum = checksums.request_fields(self.checksum, self.part_checksums[number]) if self.checksum else {}
        content_md5 = md5_base64(md5) if md5 else None
        action = f"upload part {number} of"
        body = bodies.open_file_range(self.path, offset, length)
        try:
            return await self.s3.request(
                action,
                self.key,
                lambda: direct.upload_part(
                    self.key, self.upload_id or "", number, body, content_md5, checksum, action=action
                ),
                stats=self.stats,
            )
        finally:
            body.file.close()

    async def _send_from_memory(self, number: int, offset: int, length: int, md5: str) -> Any:
        """Part `number` read into a buffer and sent by botocore (its checksum computed here when not known)."""
        s3 = self.s3
        body = await bandwidth.read_body(self.path, offset, length, s3.bandwidth)
        checksum = await self._checksum_fields(number, body)
        send = functools.partial(
            s3.client.upload_part,
            Bucket=s3.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
            **({"ContentMD5": md5_base64(md5)} if md5 else {}),
            **checksum,
        )
        del body
        try:
            return await s3.request(f"upload part {number} of", self.key, send, stats=self.stats)
        finally:
            del send  # the part's bytes go before the caller gives the budget back

    async def check_reservation(self) -> dict[str, str]:
        """The condition of the complete: If-Match our reservation's ETag when the key was reserved."""
        if not self.reserved_by:
            return {}
        return {"IfMatch": await reservation.reservation_etag(self.s3, self.key, self.reserved_by)}

    async def _checksum_fields(self, number: int, body: bytearray) -> dict[str, str]:
        """botocore's checksum parameters of part `number`, its value computed from `body` (once, off the event
        loop) unless known already."""
        if self.checksum is None:
            return {}
        if number not in self.part_checksums:
            compute = functools.partial(checksums.of_bytes, self.checksum)
            self.part_checksums[number] = await bodies.off_loop(compute, body)
        return checksums.request_fields(self.checksum, self.part_checksums[number])

    async def whole_checksum(self) -> StoredChecksum | None:
        """The whole object's checksum, combined from the parts' (a part reused from an earlier run whose value
        is not known here is read once to compute it)."""
        if self.checksum is None:
            return None
        for number, offset, length in self.ranges:
            if number not in self.part_checksums:
                async with self.budget.hold(length):
                    await self._checksum_fields(number, await bodies.read_range(self.path, offset, length))
        values = [self.part_checksums[number] for number, _offset, _length in self.ranges]
        value = checksums.combine(self.checksum, values, [length for _number, _offset, length in self.ranges])
        return StoredChecksum(self.checksum, value, checksums.checksum_type(self.checksum))

    async def complete(self, condition: Mapping[str, str], whole: StoredChecksum | None) -> Any:
        s3 = self.s3
        parts = [self.completed[n] for n in sorted(self.completed)]
        fields: dict[str, str] = dict(condition)
        if whole is not None:
            name = checksums.api_name(whole.algorithm)
            parts = [{**part, name: self.part_checksums[part["PartNumber"]]} for part in parts]
            if whole.type == checksums.FULL_OBJECT:  # S3 checks it against the one it computes
                fields.update(ChecksumType=whole.type, **{name: whole.value})
        return await s3.request(
            "complete multipart upload of",
            self.key,
            lambda: s3.client.complete_multipart_upload(
                Bucket=s3.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": parts},
                **fields,
            ),
            stats=self.stats,
        )

    async def abort(self) -> None:
        try:
            await self.s3.abort_multipart(self.key, self.upload_id)  # type: ignore[arg-type]
        finally:
            if self.journal:
                await self.journal.finished(self.upload_id, "aborted")  # type: ignore[arg-type]

    async def release_reservation(self) -> None:
        await self.s3.release_reservation(self.key, self.reserved_by)

    def _on_failure(self, cleanup: Cleanup, *, also_when_cancelled: bool = False) -> None:
        self._cleanups.append((cleanup, also_when_cancelled))

    async def _clean_up(self, *, cancelled: bool) -> None:
        """Every registered cleanup (shielded, time-bounded), last registered first; none stops the others."""
        with anyio.move_on_after(ABORT_TIMEOUT, shield=True):
            for cleanup, when_cancelled in reversed(self._cleanups):
                if when_cancelled or not cancelled:
                    with contextlib.suppress(Exception):
                        await cleanup()
