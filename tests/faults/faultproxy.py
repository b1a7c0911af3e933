"""A fault-injecting HTTP reverse proxy in front of the test S3 server: the network and the server misbehaving.

Unlike faultkit (which answers at botocore's `before-call` hook), requests here really cross a socket, so botocore's
own retries, aiohttp's timeouts and connection handling, and amgmt's retries all run as they would against S3.

    with FaultProxy(s3_server.endpoint_url, rates=FaultRates(slowdown=0.1), seed=1) as proxy:
        settings = make_settings(endpoint_url=proxy.url)

The proxy runs its own event loop in a background thread, so it serves sync and async tests alike. Requests are
forwarded unchanged (method, raw path and query, every header including Host, the body byte for byte), so SigV4
signatures still hold; responses come back with the upstream status, headers (hop-by-hop ones dropped) and body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import random
import threading
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy
from yarl import URL

HOST = "127.0.0.1"
BODY_CHUNK = 256 * 1024
# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection and are never forwarded; Content-Length is set again
# from the bytes actually sent, except for HEAD answers, whose Content-Length describes the object.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    }
)


class Fault(StrEnum):
    SLOWDOWN = "slowdown"  # 503 SlowDown, the request never reaches the server
    INTERNAL = "internal"  # 500 InternalError, idem
    DROP = "drop"  # part of the body read, then the connection closed without an answer
    STALL = "stall"  # no answer for longer than the client's read timeout
    ERROR = "error"  # a fixed error answer chosen by a rule (403 AccessDenied, 400 InvalidArgument, ...)
    CORRUPT = "corrupt"  # one byte of the body flipped before the Content-MD5 check / forwarding
    LATE = "late"  # forwarded and done by the server, but its answer is lost: a stall, then a hang-up
    SLOW = "slow"  # forwarded after `slow_seconds` (a slow link or server); no failure (chosen by a rule only)


@dataclass(frozen=True)
class FaultRates:
    """Probability of each random fault per request (their sum is the share of requests that fail)."""

    slowdown: float = 0.0
    internal: float = 0.0
    drop: float = 0.0
    stall: float = 0.0

    def __post_init__(self) -> None:
        if min(self.slowdown, self.internal, self.drop, self.stall) < 0 or self.total > 1:
            raise ValueError(f"fault rates must be >= 0 and sum to at most 1: {self}")

    @property
    def total(self) -> float:
        return self.slowdown + self.internal + self.drop + self.stall

    def pick(self, draw: float) -> Fault | None:
        for fault, rate in (
            (Fault.SLOWDOWN, self.slowdown),
            (Fault.INTERNAL, self.internal),
            (Fault.DROP, self.drop),
            (Fault.STALL, self.stall),
        ):
            if draw < rate:
                return fault
            draw -= rate
        return None


@dataclass(frozen=True)
class Injection:
    """What a rule asks for: a fault, and for Fault.ERROR the status and S3 error code to answer with."""

    fault: Fault
    status: int = 0
    code: str = ""


@dataclass(frozen=True)
class ProxyRequest:
    """One incoming request as the proxy sees it (before forwarding)."""

    method: str
    path: str  # decoded, e.g. /bucket/key
    query: MultiDictProxy[str]
    headers: CIMultiDictProxy[str]

    @property
    def bucket(self) -> str:
        return self.path.lstrip("/").split("/", 1)[0]

    @property
    def key(self) -> str | None:
        """The object key (path-style addressing), None for bucket-level requests."""
        parts = self.path.lstrip("/").split("/", 1)
        return parts[1] if len(parts) == 2 and parts[1] else None

    @property
    def operation(self) -> str:
        """The S3 operation name, as far as amgmt's requests go (path-style addressing)."""
        q, m, key = self.query, self.method, self.key
        if key is None:
            if m == "GET" and "uploads" in q:
                return "ListMultipartUploads"
            return {"HEAD": "HeadBucket", "PUT": "CreateBucket", "GET": "ListObjects", "DELETE": "DeleteBucket"}.get(
                m, m
            )
        if "uploadId" in q:
            if m == "PUT":
                return "UploadPart"
            return {"POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload", "GET": "ListParts"}.get(m, m)
        if m == "POST" and "uploads" in q:
            return "CreateMultipartUpload"
        return {"PUT": "PutObject", "GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(m, m)

    @property
    def part_number(self) -> int | None:
        value = self.query.get("partNumber")
        return int(value) if value else None


@dataclass(frozen=True)
class Event:
    """One request and what the proxy did with it: a Fault value, "bad_digest" or "forwarded"."""

    operation: str
    key: str | None
    part_number: int | None
    outcome: str
    status: int | None  # the status answered (None when nothing was answered)


Rule = Callable[[ProxyRequest], Injection | None]


@dataclass
class FaultProxy:
    """A reverse proxy to `upstream` on 127.0.0.1 that injects faults; a context manager giving `url`.

    Per request, in order: when `enabled` and the request is in scope (`methods`, `operations`), each rule may ask
    for an injection; else a fault is drawn from `rates` with the seeded RNG. With `check_content_md5` the proxy
    answers 400 BadDigest when a body does not match its Content-MD5, as S3 does (the moto server does not check).
    `counts` holds one counter per Fault value, "bad_digest" and "forwarded"; `events` every request.
    """

    upstream: str
    rates: FaultRates = field(default_factory=FaultRates)
    seed: int = 0
    methods: Collection[str] | None = None  # e.g. {"PUT"}: faults only for PutObject/UploadPart
    operations: Collection[str] | None = None  # e.g. {"UploadPart"}
    rules: list[Rule] = field(default_factory=list)
    stall_seconds: float = 3.0
    slow_seconds: float = 0.5
    check_content_md5: bool = True
    # As AWS S3 does and the moto server does not: refuse a body whose x-amz-checksum-* header does not match it
    # (400 BadDigest, outcome "bad_checksum"); a request whose checksum matched is forwarded as "checksum_checked".
    check_checksums: bool = False
    # As AWS S3 does for SSE-KMS objects: their ETag is not the MD5 of the data (here: the MD5 of moto's ETag, mapped
    # back for If-Match). Needs a bucket whose default encryption is aws:kms.
    kms_etags: bool = False
    enabled: bool = True

    def __post_init__(self) -> None:
        self.url = ""
        self.counts: Counter[str] = Counter()
        self.events: list[Event] = []
        self._rng = random.Random(self.seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing: asyncio.Event | None = None
        self._kms_etags: dict[str, str] = {}  # the ETag shown -> moto's

    # -- life ----------------------------------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=_serve, args=(loop,), name="faultproxy", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout=10)
        except BaseException:
            self._stop_loop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._loop is not None
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=15)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> None:
        self._closing = asyncio.Event()
        self._session = aiohttp.ClientSession(
            auto_decompress=False,  # bodies pass through as the server sent them, Content-Encoding and all
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120),
            connector=aiohttp.TCPConnector(limit=64),
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{HOST}:{port}"

    async def _stop(self) -> None:
        assert self._closing is not None
        self._closing.set()  # stalled handlers stop waiting
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- counters ------------------------------------------------------------------------------------------------

    def injected(self, operations: Collection[str] | None = None) -> int:
        """Requests answered with a fault (every outcome but "forwarded"), optionally only of some operations."""
        return sum(
            1 for e in self.events if e.outcome != "forwarded" and (operations is None or e.operation in operations)
        )

    def seen(self, operation: str, *, key: str | None = None, part_number: int | None = None) -> list[Event]:
        return [
            e
            for e in self.events
            if e.operation == operation
            and (key is None or e.key == key)
            and (part_number is None or e.part_number == part_number)
        ]

    def _record(self, req: ProxyRequest, outcome: str, status: int | None) -> None:
        # Only the proxy's loop thread writes these; the test reads them after (or between) requests.
        self.counts[outcome] += 1
        self.events.append(Event(req.operation, req.key, req.part_number, outcome, status))

    # -- one request ---------------------------------------------------------------------------------------------

    def _choose(self, req: ProxyRequest) -> Injection | None:
        if not self.enabled:
            return None
        if self.methods is not None and req.method not in self.methods:
            return None
        if self.operations is not None and req.operation not in self.operations:
            return None
        for rule in self.rules:
            chosen = rule(req)
            if chosen is not None:
                return chosen
        fault = self.rates.pick(self._rng.random())
        return Injection(fault) if fault else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        req = ProxyRequest(request.method, request.path, request.query, request.headers)
        injection = self._choose(req)
        fault = injection.fault if injection else None

        if fault is Fault.DROP:
            declared = request.content_length or 0
            await request.content.read(max(1, declared // 2) if declared else 0)
            self._record(req, Fault.DROP, None)
            return self._hang_up(request)

        body = await _read_body(request)
        if fault is Fault.SLOW:
            self.counts[Fault.SLOW] += 1
            await asyncio.sleep(self.slow_seconds)
        if fault is Fault.LATE:
            async with self._upstream(request, body) as upstream:
                await upstream.read()
        if fault in (Fault.STALL, Fault.LATE):
            self._record(req, fault, None)
            assert self._closing is not None
            try:
                await asyncio.wait_for(self._closing.wait(), self.stall_seconds)
            except TimeoutError:
                pass
            return self._hang_up(request)
        if fault is Fault.SLOWDOWN:
            return self._error(req, Fault.SLOWDOWN, 503, "SlowDown", "Please reduce your request rate.")
        if fault is Fault.INTERNAL:
            return self._error(
                req, Fault.INTERNAL, 500, "InternalError", "We encountered an internal error. Please try again."
            )
        if fault is Fault.ERROR:
            assert injection is not None
            return self._error(req, Fault.ERROR, injection.status, injection.code, "Injected by the fault proxy.")
        if fault is Fault.CORRUPT and body:
            corrupted = bytearray(body)
            corrupted[len(corrupted) // 2] ^= 0xFF
            body = bytes(corrupted)
            self.counts[Fault.CORRUPT] += 1  # what the server then says is the event's outcome

        if self.check_content_md5 and _md5_mismatch(request.headers, body):
            return self._error(
                req, "bad_digest", 400, "BadDigest", "The Content-MD5 you specified did not match what we received."
            )
        outcome = "forwarded"
        if self.check_checksums and req.operation in ("PutObject", "UploadPart"):  # a complete's is the object's
            algorithm, matches = _checksum_check(request.headers, body)
            if algorithm and not matches:
                return self._error(
                    req,
                    "bad_checksum",
                    400,
                    "BadDigest",
                    f"The {algorithm.upper()} you specified did not match the calculated checksum.",
                )
            if algorithm:
                outcome = "checksum_checked"  # and forwarded
        return await self._forward(request, req, body, outcome)

    def _upstream(self, request: web.Request, body: bytes) -> Any:
        """The request sent on to the server as the client sent it (an async context manager of the response)."""
        assert self._session is not None
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
        headers.popall("Content-Length", None)  # aiohttp sets it from `body`
        shown = headers.get("If-Match", "").strip('"')
        if shown in self._kms_etags:  # a signed header, but the moto server does not check signatures
            headers["If-Match"] = f'"{self._kms_etags[shown]}"'
        url = URL(self.upstream.rstrip("/") + request.raw_path, encoded=True)
        return self._session.request(
            request.method,
            url,
            headers=headers,  # Host included: the upstream sees the Host the client signed
            # BytesIO: the same bytes and Content-Length, without aiohttp's warning about large raw bodies.
            data=io.BytesIO(body) if body or request.method in ("PUT", "POST") else None,
            skip_auto_headers=("Content-Type", "User-Agent", "Accept-Encoding", "Accept"),
            allow_redirects=False,
        )

    async def _forward(
        self, request: web.Request, req: ProxyRequest, body: bytes, outcome: str = "forwarded"
    ) -> web.StreamResponse:
        async with self._upstream(request, body) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            kms = self.kms_etags and upstream.headers.get("x-amz-server-side-encryption") == "aws:kms"
            for name, value in upstream.headers.items():
                if name.lower() in HOP_BY_HOP:
                    continue
                if kms and name.lower() == "etag":
                    value = self._kms_etag(value)
                if name.lower() == "content-length" and request.method != "HEAD" and upstream.status not in (204, 304):
                    response.content_length = int(value)
                    continue
                response.headers.add(name, value)
            await response.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_chunked(BODY_CHUNK):
                    await response.write(chunk)
            await response.write_eof()
        self._record(req, outcome, upstream.status)
        return response

    def _kms_etag(self, etag: str) -> str:
        real = etag.strip('"')
        shown = hashlib.md5(b"kms:" + real.encode()).hexdigest()
        self._kms_etags[shown] = real
        return f'"{shown}"'

    def _error(self, req: ProxyRequest, outcome: str, status: int, code: str, message: str) -> web.Response:
        self._record(req, outcome, status)
        # A HEAD answer has no body: botocore then takes the status as the error code, as with S3 itself.
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>faultproxy-{len(self.events)}</RequestId></Error>"
        )
        return web.Response(
            status=status, body=None if req.method == "HEAD" else body.encode(), content_type="application/xml"
        )

    @staticmethod
    def _hang_up(request: web.Request) -> web.StreamResponse:
        """Close the connection without a byte of answer. The response returned is never written: aiohttp finds
        the transport closed and treats it as a client that went away (quietly, no error logged)."""
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=499)


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The proxy thread: its loop runs until stopped, then is closed here, in the thread that ran it."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


async def _read_body(request: web.Request) -> bytes:
    if not request.body_exists:
        return b""
    chunks = []
    async for chunk in request.content.iter_chunked(BODY_CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


def _md5_mismatch(headers: Any, body: bytes) -> bool:
    claimed = headers.get("Content-MD5")
    if claimed is None or "aws-chunked" in headers.get("Content-Encoding", ""):
        return False
    return base64.b64encode(hashlib.md5(body).digest()).decode() != claimed.strip()


def _checksum_check(headers: Any, body: bytes) -> tuple[str | None, bool]:
    """(the algorithm of the request's x-amz-checksum-* header, whether the body matches it); (None, True) without
    one. The CRCs by awscrt, as S3 computes them."""
    from awscrt import checksums as crt

    for algorithm in ("crc64nvme", "crc32c", "crc32", "sha256"):
        claimed = headers.get(f"x-amz-checksum-{algorithm}")
        if claimed is None:
            continue
        if algorithm == "sha256":
            raw = hashlib.sha256(body).digest()
        else:
            width = 8 if algorithm == "crc64nvme" else 4
            raw = int(getattr(crt, algorithm)(body)).to_bytes(width, "big")
        return algorithm, base64.b64encode(raw).decode() == claimed.strip()
    return None, True
