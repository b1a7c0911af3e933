"""THE retry policy of every S3 request amgmt makes, botocore's and the direct transport's alike (botocore's own
retries are off: `total_max_attempts=1`). Must not translate errors (errors.py) nor know what a request does.

How many requests one call may cost, at most (RETRY_POLICY):
  - any one request (a part, a single PUT, a HEAD, one listing page, one GET range, a create, a complete, an
    abort): `attempts` = 8 requests, with at most 0.5 + 1 + 2 + 4 + 8 + 8 + 8 = 31.5 s of backoff between them;
  - one that cannot even connect (refused: a server restarting, or down): `unreachable_attempts` = 6, waiting at
    least 0.25 + 0.5 + 1 + 2 + 4 = 7.75 s and at most twice that in all, so a restart of a few seconds is bridged
    and a dead endpoint stops the run (StorageError, exit 3) within 15.5 s of waiting;
  - aiohttp itself re-sends an idempotent request (PUT, HEAD, GET) once when a reused keep-alive connection turns
    out to have been closed by the server before it answered: on the wire, 16 at the very most.
A multipart upload of N parts therefore costs at most 8 x (N + 2) requests (create, N parts, complete), plus the
reservation's PUT and HEAD (8 each) when the key is reserved.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio

from amgmt.s3.errors import S3Failure

_T = TypeVar("_T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures are tried again, how often, how long to wait in between.

    Transient: an `S3Failure` with `transient` set by errors.py: throttling (SlowDown, 503), server errors (5xx but
    501), RequestTimeout, BadDigest/IncompleteBody (a body corrupted in transit), read timeouts and connections lost
    mid-request, and a failure to connect (`unreachable`, with its own, smaller budget). Everything else (4xx,
    credentials, missing keys) fails at the first answer. Backoff: full jitter, uniform(0, min(cap, base * 2**n))
    after the n-th attempt; after a failure to connect, "equal" jitter, uniform(b/2, b) of the same b: full jitter
    could retry a refused connection five times within a second, before a restarting server listens again.
    """

    attempts: int = 8
    unreachable_attempts: int = 6
    backoff_base: float = 0.25
    backoff_cap: float = 8.0
    sleep: Callable[[float], Awaitable[None]] = field(default=anyio.sleep, compare=False, repr=False)
    jitter: Callable[[float, float], float] = field(default=random.uniform, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.unreachable_attempts <= self.attempts:
            raise ValueError("attempts must be at least 1, and unreachable_attempts at most attempts")

    def backoff(self, attempt: int, *, unreachable: bool = False) -> float:
        """The pause after the `attempt`-th failed attempt (1-based); longer at the least when it could not connect."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2**attempt)
        return self.jitter(ceiling / 2 if unreachable else 0, ceiling)

    def worth_another(self, exc: BaseException, attempt: int, unreachable: int) -> bool:
        """Whether a request that failed with `exc` on its `attempt`-th try (`unreachable` of them not even
        connecting, this one included) is sent again."""
        if not isinstance(exc, S3Failure) or not exc.transient or attempt >= self.attempts:
            return False
        return not exc.unreachable or unreachable < self.unreachable_attempts

    async def run(self, attempt_once: Callable[[], Awaitable[_T]], *, on_retry: Callable[[], None] | None = None) -> _T:
        """`attempt_once()` (one request, its errors already translated) until it succeeds or its failure is not
        worth another attempt (then that failure is raised). `on_retry` is called once per request sent again."""
        unreachable = 0
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            try:
                return await attempt_once()
            except S3Failure as exc:
                unreachable += exc.unreachable
                if not self.worth_another(exc, attempt, unreachable):
                    if exc.unreachable and attempt > 1 and exc.args:  # the one line says how hard it was tried
                        exc.args = (f"{exc.args[0]} (tried {attempt} times over {waited:.1f} s)", *exc.args[1:])
                    raise
                pause = self.backoff(attempt, unreachable=exc.unreachable)
                if exc.unreachable:  # the log file shows a server restart being waited out
                    log.warning("%s; trying again in %.1f s (attempt %d)", exc, pause, attempt + 1)
            if on_retry is not None:
                on_retry()
            waited += pause
            await self.sleep(pause)


RETRY_POLICY = RetryPolicy()
