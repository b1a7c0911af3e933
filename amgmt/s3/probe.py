"""Which flexible checksum an endpoint keeps, and whether the one it reports proves the bytes: probed once per
connection (one endpoint, one bucket) with a few short-lived objects, and what `MGMT_CHECKSUM_ALGORITHM` asks.

A stored checksum proves the bytes only if the server checked the value it was sent (AWS: BadDigest on a mismatch)
or computed its own; a server that stores whatever it is sent (moto 5.2 for a single PUT) proves nothing, and
neither does one that keeps none (Ceph radosgw 16.2). So the probe sends a WRONG value once and looks at what
happens. Must not retry (S3Bucket.request does) nor decide anything about entries.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from amgmt import checksums
from amgmt.errors import AmgmtError, StorageError
from amgmt.s3.errors import has_code

if TYPE_CHECKING:
    from amgmt.s3.client import S3Bucket

log = logging.getLogger(__name__)

PROBE_BODY = b"amgmt checksum probe\n" * 64
_OTHER_BODY = b"not the probe body"
# What a server answers to a checksum that does not match the body (AWS: 400 BadDigest). Anything else (a 5xx, a
# timeout) is no verdict: the probe fails, and the endpoint is taken to keep no usable checksum.
MISMATCH_CODES = frozenset({"BadDigest", "XAmzContentChecksumMismatch", "InvalidDigest"})


@dataclass(frozen=True)
class ChecksumSupport:
    """What the endpoint does with flexible checksums of `algorithm` (None: none is sent, Content-MD5 only)."""

    algorithm: str | None
    single_put: bool = False  # a single PUT's stored checksum proves its bytes (checked or computed by the server)
    multipart: bool = False  # a multipart upload's whole-object checksum does
    note: str = ""  # what the probe found, for the log and for an error naming the setting

    def sends(self, *, multipart: bool) -> str | None:
        """The algorithm an upload of this kind sends and verifies by, or None (Content-MD5 and the ETag)."""
        proven = self.multipart if multipart else self.single_put
        return self.algorithm if proven else None

    def needs_md5(self, *, multipart: bool | None) -> bool:
        """Whether an upload of this kind (None: either, not known yet) needs the part MD5s: Content-MD5 and the
        predicted ETag are its proof where no flexible checksum proves the bytes. Where one does, the MD5s are
        never computed (the packing pass skips them: ~1.7 CPU-s/GiB)."""
        kinds = (multipart,) if multipart is not None else (False, True)
        return any(self.sends(multipart=kind) is None for kind in kinds)


MD5_ONLY = ChecksumSupport(None, note="MGMT_CHECKSUM_ALGORITHM=md5")


async def probe_checksums(s3: S3Bucket, requested: str, key_base: str) -> ChecksumSupport:
    """What `requested` ("auto" or an algorithm) gives on this endpoint. "auto" tries CRC64NVME (the fastest) and
    settles for Content-MD5 where the endpoint keeps no checksum that proves anything; an algorithm named
    explicitly that the endpoint cannot prove at all stops the run (StorageError, naming the setting).

    The probe writes under `key_base` (ClientOptions.probe_key_base), after removing what an earlier probe with
    the same base left: only a run killed during its probe leaves anything, and the run lock of the local dir the
    base is named for keeps those runs to one at a time."""
    if requested == checksums.MD5:
        return MD5_ONLY
    algorithm = checksums.CRC64NVME if requested == "auto" else requested
    await _remove_leftovers(s3, key_base)
    key = f"{key_base}{secrets.token_hex(8)}"
    try:
        single = await _probe_single_put(s3, key, algorithm)
        multipart = await _probe_multipart(s3, key, algorithm)
    except AmgmtError as exc:  # an endpoint that refuses the headers, or the probe key: no checksums
        single = multipart = None
        failure = str(exc)
    else:
        failure = ""
    finally:
        await _quietly(lambda: s3.delete_object(key))
    support = ChecksumSupport(
        algorithm if (single or multipart) else None,
        single_put=bool(single),
        multipart=bool(multipart),
        note=failure or f"{algorithm}: single PUT {single or 'unproven'}, multipart {multipart or 'unproven'}",
    )
    log.debug("checksum probe of s3://%s: %s", s3.bucket, support.note)
    if requested != "auto" and support.algorithm is None:
        raise StorageError(
            f"the endpoint keeps no {algorithm.upper()} checksum that proves an object's bytes ({support.note}):"
            " set MGMT_CHECKSUM_ALGORITHM to auto or md5"
        )
    return support


async def _probe_single_put(s3: S3Bucket, key: str, algorithm: str) -> str | None:
    right = checksums.of_bytes(algorithm, PROBE_BODY)
    await _put(s3, key, algorithm, right)  # the right value must be taken and reported back
    stored = await _stored(s3, key, algorithm)
    if stored is None or stored.value != right:
        return None
    wrong = checksums.of_bytes(algorithm, _OTHER_BODY)
    try:
        await _put(s3, key, algorithm, wrong, final_codes=MISMATCH_CODES)
    except AmgmtError as exc:
        if not has_code(exc, MISMATCH_CODES):
            raise
        return "checked"  # refused the wrong value
    stored = await _stored(s3, key, algorithm)
    return "computed" if stored is not None and stored.value == right else None  # else it kept ours: an echo


async def _probe_multipart(s3: S3Bucket, key: str, algorithm: str) -> str | None:
    """One upload of one small part, sent first with a wrong part checksum: refused ("checked": sent again with the
    right one), or taken, and then completed with a wrong whole-object value too; the stored checksum must then be
    the right one, computed by the server from the bytes ("computed")."""
    kind = checksums.checksum_type(algorithm)
    name = checksums.api_name(algorithm)
    created = await s3.request(
        "probe create multipart upload of",
        key,
        lambda: s3.client.create_multipart_upload(
            Bucket=s3.bucket, Key=key, ChecksumAlgorithm=algorithm.upper(), ChecksumType=kind
        ),
    )
    upload_id: str = created["UploadId"]
    right_part = checksums.of_bytes(algorithm, PROBE_BODY)
    right = checksums.combine(algorithm, [right_part], [len(PROBE_BODY)])
    wrong = checksums.of_bytes(algorithm, _OTHER_BODY)

    async def send_part(value: str, *, final_codes: frozenset[str] = frozenset()) -> Any:
        return await s3.request(
            "probe upload part of",
            key,
            lambda: s3.client.upload_part(
                Bucket=s3.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=1,
                Body=PROBE_BODY,
                ChecksumAlgorithm=algorithm.upper(),
                **{name: value},
            ),
            final_codes=final_codes,
        )

    try:
        try:
            part, sent, verdict = await send_part(wrong, final_codes=MISMATCH_CODES), wrong, None
        except AmgmtError as exc:
            if not has_code(exc, MISMATCH_CODES):
                raise
            part, sent, verdict = await send_part(right_part), right_part, "checked"
        whole_value = right if verdict else wrong
        whole = {"ChecksumType": kind, name: whole_value} if kind == checksums.FULL_OBJECT else {}
        await s3.request(
            "probe complete multipart upload of",
            key,
            lambda: s3.client.complete_multipart_upload(
                Bucket=s3.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"], name: sent}]},
                **whole,
            ),
        )
        upload_id = ""
        stored = await _stored(s3, key, algorithm)
    finally:
        if upload_id:
            await _quietly(lambda: s3.abort_multipart(key, upload_id))
    expected = checksums.StoredChecksum(algorithm, right, kind)
    if stored is None or not stored.same_value(expected):
        return None
    return verdict or "computed"


async def _put(
    s3: S3Bucket, key: str, algorithm: str, value: str, *, final_codes: frozenset[str] = frozenset()
) -> None:
    await s3.request(
        "probe PUT",
        key,
        lambda: s3.client.put_object(
            Bucket=s3.bucket,
            Key=key,
            Body=PROBE_BODY,
            ChecksumAlgorithm=algorithm.upper(),
            **{checksums.api_name(algorithm): value},
        ),
        final_codes=final_codes,
    )


async def _stored(s3: S3Bucket, key: str, algorithm: str) -> checksums.StoredChecksum | None:
    resp = await s3.request(
        "probe HEAD", key, lambda: s3.client.head_object(Bucket=s3.bucket, Key=key, ChecksumMode="ENABLED")
    )
    return checksums.from_response(resp, algorithm)


async def _remove_leftovers(s3: S3Bucket, key_base: str) -> None:
    """Objects and open uploads of earlier probes with this base (one listing page each: a killed probe leaves at
    most one of each); quietly, as without the permission to list them none can be found."""
    try:
        keys = await s3.list_keys(key_base, max_pages=1) or frozenset()
        uploads = await s3.list_multipart_uploads(key_base)
    except AmgmtError as exc:
        log.debug("checksum probe leftovers not listed: %s", exc)
        return
    for left in sorted(keys):
        await _quietly(functools.partial(s3.delete_object, left))
    for upload in uploads:
        await _quietly(functools.partial(s3.abort_multipart, upload["key"], upload["upload_id"]))


async def _quietly(call: Callable[[], Awaitable[Any]]) -> None:
    try:
        await call()
    except AmgmtError as exc:
        log.debug("checksum probe cleanup: %s", exc)
