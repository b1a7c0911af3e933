"""The direct transport: HEAD and single-part PUT of objects straight over aiohttp, signed with amgmt.s3.sigv4,
behind the `ObjectTransport` interface. Must not retry (retry.py does) nor raise anything but amgmt's errors.

botocore spends ~1.5-2 ms of CPU per call on the event loop thread (parameter validation, endpoint rules, event
hooks, user agent, response parsing) for requests that are a few headers each way; on the `small` data set those
calls were most of amgmt's CPU. A stand-alone comparison against radosgw (500 x (PUT 64 KiB + HEAD) at concurrency
8, the same headers both ways): botocore 3.6-4.0 ms of client CPU per pair, plain aiohttp with this signing 0.7-0.8.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import time
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import anyio
import yarl

from amgmt import checksums
from amgmt.s3.bodies import FileRange, off_loop
from amgmt.s3.errors import answer_from_body, error_for, translate_errors
from amgmt.s3.sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, Keys, Signer, encode_path, encode_query
from amgmt.s3.values import ClientOptions

log = logging.getLogger(__name__)

_PROBE_KEY = "amgmt-probe"
PROBE_ATTEMPTS = 3
PROBE_BACKOFF = 0.25
_EXTRA_HEADERS = {
    "ContentType": "content-type",
    "StorageClass": "x-amz-storage-class",
    "IfNoneMatch": "if-none-match",
    "ChecksumAlgorithm": "x-amz-sdk-checksum-algorithm",
    "ServerSideEncryption": "x-amz-server-side-encryption",
    "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
    "ACL": "x-amz-acl",
    "Tagging": "x-amz-tagging",
    **{checksums.api_name(a): checksums.header(a) for a in checksums.FLEXIBLE},
}
# HEAD answer headers -> botocore's keys, for the object's flexible checksum and encryption
_HEAD_HEADERS = {
    "x-amz-checksum-type": "ChecksumType",
    "x-amz-server-side-encryption": "ServerSideEncryption",
    **{checksums.header(a): checksums.api_name(a) for a in checksums.FLEXIBLE},
}


class ObjectTransport(Protocol):
    """HEAD and single PUT of one object, answered as botocore's head_object/put_object answer (the same keys), a
    failure raised as amgmt's error (errors.error_for), once: the caller's RetryPolicy decides about another."""

    async def head(self, key: str, *, action: str = "HEAD", checksum_mode: bool = False) -> dict[str, Any]: ...

    async def put(
        self,
        key: str,
        body: bytearray,
        content_md5: str | None,
        extra: Mapping[str, Any],
        *,
        action: str = "PUT",
        payload_sha256: str | None = None,
    ) -> dict[str, Any]: ...


class DirectRequests:
    """The aiohttp `ObjectTransport`.

    Everything botocore decides is still botocore's: the URL of the bucket (path-style or virtual-hosted, from a
    presigned URL it builds), the region and the credentials (the same provider chain, refreshed by it). Before the
    first use the path proves itself with a signed HEAD of the bucket; if that does not answer 200 (another region,
    a private CA, a proxy, anything), it is never used and every call goes through botocore.
    """

    def __init__(self, client: Any, options: ClientOptions, credentials: Any, region: str) -> None:
        self._client = client
        self._options = options
        self._credentials = credentials
        self._signer = Signer(region)
        self._session: aiohttp.ClientSession | None = None
        self._origin = ""  # scheme://host[:port]
        self._bucket_path = ""  # "/bucket" (path-style) or "" (virtual-hosted)
        self._host = ""
        self._usable: bool | None = None  # unknown until the probe
        self._lock = anyio.Lock()

    async def usable(self) -> bool:
        if self._usable is None:
            async with self._lock:
                if self._usable is None:
                    self._usable = await self._probe()
        return self._usable

    async def _probe(self) -> bool:
        try:
            url = await self._client.generate_presigned_url(
                "head_object", Params={"Bucket": self._options.bucket, "Key": _PROBE_KEY}, ExpiresIn=60
            )
            parts = urlsplit(url)
            if not parts.path.endswith("/" + _PROBE_KEY) or parts.scheme not in ("http", "https"):
                return False
            if _proxied(parts.scheme, parts.hostname or ""):  # HTTP(S)_PROXY applies: botocore's proxy handling
                log.debug("direct S3 requests not used: a proxy is set for %s", parts.netloc)
                return False
            self._origin = f"{parts.scheme}://{parts.netloc}"
            self._host = parts.netloc
            self._bucket_path = parts.path[: -len(_PROBE_KEY) - 1]
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._options.max_connections),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._options.connect_timeout, sock_read=self._options.read_timeout
                ),
                auto_decompress=False,
                # Not the environment: proxies send this path to botocore (above), and with trust_env aiohttp
                # would read ~/.netrc again for every request (measured: 0.6 ms per request), for nothing: we sign.
                trust_env=False,
            )
        except Exception as exc:  # any doubt: botocore does it
            log.debug("direct S3 requests not used: %s: %s", type(exc).__name__, exc)
            return False
        status = 0
        for attempt in range(PROBE_ATTEMPTS):  # a server hiccup is not a verdict; a 4xx or 3xx is
            try:
                status, _headers, _body = await self._send("HEAD", self._bucket_path or "/", {})
            except (aiohttp.ClientError, OSError) as exc:
                log.debug("direct S3 probe attempt %d: %s: %s", attempt + 1, type(exc).__name__, exc)
                status = 0
            if status == 200:
                return True
            if 0 < status < 500:
                break
            await anyio.sleep(PROBE_BACKOFF * 2**attempt)
        log.debug("direct S3 requests not used: HEAD bucket answered %d", status)
        return False

    async def head(self, key: str, *, action: str = "HEAD", checksum_mode: bool = False) -> dict[str, Any]:
        asked = {"x-amz-checksum-mode": "ENABLED"} if checksum_mode else {}
        with translate_errors(action, bucket=self._options.bucket, key=key):
            status, headers, body = await self._send("HEAD", self._object_path(key), asked)
        if status != 200:
            raise error_for(action, answer_from_body(status, body), bucket=self._options.bucket, key=key)
        metadata = {
            name[len("x-amz-meta-") :]: value
            for name, value in headers.items()
            if name.lower().startswith("x-amz-meta-")
        }
        modified = headers.get("Last-Modified")
        found = {api: headers[name] for name, api in _HEAD_HEADERS.items() if name in headers}
        return {
            **found,
            "ContentLength": int(headers.get("Content-Length") or 0),
            "ETag": headers.get("ETag"),
            "StorageClass": headers.get("x-amz-storage-class"),
            "Metadata": metadata,
            "LastModified": email.utils.parsedate_to_datetime(modified) if modified else None,
            "Restore": headers.get("x-amz-restore"),
            "ArchiveStatus": headers.get("x-amz-archive-status"),
            "ContentType": headers.get("Content-Type"),
            "ResponseMetadata": {"HTTPStatusCode": status},
        }

    async def put(
        self,
        key: str,
        body: bytearray,
        content_md5: str | None,
        extra: Mapping[str, Any],
        *,
        action: str = "PUT",
        payload_sha256: str | None = None,
    ) -> dict[str, Any]:
        """`content_md5` None: no Content-MD5 (a flexible checksum in `extra` proves the body).
        `extra` as botocore's put_object takes it (Metadata, ContentType, StorageClass, IfNoneMatch, a flexible
        checksum, the ObjectOptions' fields: each one a header, and every header signed); `payload_sha256`: the
        body's SHA-256 when the caller has it (the archive's, for a single PUT), so that a signed payload is not
        hashed again, nor on every retry."""
        headers = {"content-md5": content_md5} if content_md5 is not None else {}
        for name, value in extra.items():
            if name == "Metadata":
                headers.update({f"x-amz-meta-{k.lower()}": str(v) for k, v in value.items()})
            else:
                headers[_EXTRA_HEADERS[name]] = str(value)
        if not self._options.payload_signing:
            payload = UNSIGNED_PAYLOAD
        elif payload_sha256 is not None:
            payload = payload_sha256
        else:
            payload = await off_loop(_sha256_hex, body)
        with translate_errors(action, bucket=self._options.bucket, key=key):
            status, answer, text = await self._send("PUT", self._object_path(key), headers, body, payload=payload)
        if status != 200:
            raise error_for(action, answer_from_body(status, text), bucket=self._options.bucket, key=key)
        return {"ETag": answer.get("ETag"), "ResponseMetadata": {"HTTPStatusCode": status}}

    async def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        body: FileRange,
        content_md5: str | None,
        checksum: Mapping[str, str],
        *,
        action: str = "upload part",
    ) -> dict[str, Any]:
        """One part of a multipart upload sent straight from the staging archive with os.sendfile (the kernel
        moves the page-cache pages to the socket: no read into a buffer, no copy through Python), unsigned; its
        `content_md5` and `checksum` (botocore's ChecksumAlgorithm/Checksum* parameters) were computed while
        packing. Answered as botocore's upload_part: {"ETag": ...}."""
        headers = {"content-md5": content_md5} if content_md5 is not None else {}
        headers.update({_EXTRA_HEADERS[name]: value for name, value in checksum.items()})
        query = {"partNumber": str(number), "uploadId": upload_id}
        with translate_errors(action, bucket=self._options.bucket, key=key):
            status, answer, text = await self._send(
                "PUT", self._object_path(key), headers, _FilePayload(body), payload=UNSIGNED_PAYLOAD, query=query
            )
        if status != 200:
            raise error_for(action, answer_from_body(status, text), bucket=self._options.bucket, key=key)
        return {"ETag": answer.get("ETag"), "ResponseMetadata": {"HTTPStatusCode": status}}

    def _object_path(self, key: str) -> str:
        return encode_path(f"{self._bucket_path}/{key}")

    async def _send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytearray | aiohttp.Payload | None = None,
        *,
        payload: str = EMPTY_SHA256,
        query: Mapping[str, str] | None = None,
    ) -> tuple[int, Any, bytes]:
        """One signed request: (status, headers, body). aiohttp's errors (a failure to connect, a read timeout, a
        connection lost) are raised as they are, for translate_errors."""
        assert self._session is not None
        frozen = await self._credentials.get_frozen_credentials()
        keys = Keys(frozen.access_key, frozen.secret_key, frozen.token)
        headers["host"] = self._host
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self._signer.sign(method, path, query or {}, headers, keys=keys, amz_date=amz_date, payload_hash=payload)
        url = yarl.URL(self._origin + path + (f"?{encode_query(query)}" if query else ""), encoded=True)
        async with self._session.request(method, url, headers=headers, data=body) as resp:
            text = b"" if method == "HEAD" else await resp.read()
            return resp.status, resp.headers, text

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _proxied(scheme: str, host: str) -> bool:
    """Whether the environment sends requests for `scheme://host` through a proxy (HTTP_PROXY/HTTPS_PROXY, unless
    NO_PROXY names the host), as botocore reads it."""
    return bool(urllib.request.getproxies().get(scheme)) and not urllib.request.proxy_bypass(host)


def _sha256_hex(body: bytearray) -> str:
    return hashlib.sha256(body).hexdigest()


class _FilePayload(aiohttp.Payload):
    """A request body sent from a byte range of an open file by the event loop's sendfile (os.sendfile on the
    request's socket once the headers are out). A file that shrinks meanwhile raises OSError (the server then
    sees a body cut short)."""

    def __init__(self, body: FileRange) -> None:
        super().__init__(body, content_type="application/octet-stream")
        self._body = body
        self._size = body.length

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a file range is sent, never decoded")

    async def write(self, writer: Any) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        body = self._body
        count = body.length if content_length is None else min(body.length, content_length)
        writer.send_headers()
        await writer.drain()
        transport = writer.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the connection closed before the body was sent")
        sent = await asyncio.get_running_loop().sendfile(transport, body.file, body.offset, count, fallback=True)
        if sent != count:
            raise OSError(f"{body.path} shrank while a part of it was sent ({sent} of {count} bytes)")
