"""amgmt.s3.retry: the one policy, driven with a fake transport and an injected sleep (nothing really sleeps)."""

from __future__ import annotations

import pytest

from amgmt.s3.errors import Answer, S3StorageError, S3UploadError, error_for
from amgmt.s3.retry import RETRY_POLICY, RetryPolicy


class FakeTransport:
    """Answers each request with the next of `answers` (an exception to raise, or a response)."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.sent = 0

    async def send(self) -> object:
        self.sent += 1
        answer = self.answers.pop(0) if self.answers else {"ok": True}
        if isinstance(answer, BaseException):
            raise answer
        return answer


def slow_down() -> S3UploadError:
    return error_for("upload part 1 of", Answer("SlowDown", 503), bucket="b", key="k")  # type: ignore[return-value]


def policy(**kw: object) -> tuple[RetryPolicy, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return RetryPolicy(sleep=sleep, **kw), slept  # type: ignore[arg-type]


async def test_a_transient_failure_is_sent_again_and_counted() -> None:
    retry, slept = policy()
    transport = FakeTransport(slow_down(), slow_down(), {"ETag": "x"})
    counted: list[None] = []
    assert await retry.run(transport.send, on_retry=lambda: counted.append(None)) == {"ETag": "x"}
    assert transport.sent == 3 and len(counted) == 2 and len(slept) == 2


async def test_a_request_costs_at_most_attempts_requests() -> None:
    retry, slept = policy()
    transport = FakeTransport(*[slow_down() for _ in range(20)])
    with pytest.raises(S3UploadError, match="SlowDown"):
        await retry.run(transport.send)
    assert transport.sent == RETRY_POLICY.attempts == 8
    assert len(slept) == 7


async def test_a_permanent_failure_is_sent_once() -> None:
    retry, slept = policy()
    for permanent in (error_for("PUT", Answer("InvalidArgument", 400), bucket="b", key="k"),
                      error_for("PUT", Answer("AccessDenied", 403), bucket="b", key="k"),
                      ValueError("a bug")):
        transport = FakeTransport(permanent)
        with pytest.raises(type(permanent)):
            await retry.run(transport.send)
        assert transport.sent == 1
    assert slept == []


async def test_an_unreachable_endpoint_gets_its_smaller_budget() -> None:
    retry, slept = policy()
    down = S3StorageError("cannot reach the S3 endpoint", unreachable=True)
    transport = FakeTransport(*[down] * 20)
    with pytest.raises(S3StorageError, match=r"^cannot reach the S3 endpoint \(tried 6 times over \d+\.\d s\)$"):
        await retry.run(transport.send)
    assert transport.sent == RETRY_POLICY.unreachable_attempts == 6
    assert 0.25 + 0.5 + 1 + 2 + 4 <= sum(slept) <= 0.5 + 1 + 2 + 4 + 8


async def test_a_refused_connection_waits_long_enough_for_a_restart() -> None:
    """Whatever the jitter draws, five refusals in a row span at least 7.75 s (a server restart of a few seconds is
    bridged); full jitter, as before, could have drawn five pauses adding up to almost nothing."""
    lows = RetryPolicy(jitter=lambda low, high: low)
    assert [lows.backoff(n, unreachable=True) for n in range(1, 6)] == [0.25, 0.5, 1.0, 2.0, 4.0]
    retry, slept = policy(jitter=lambda low, high: low)
    down = S3StorageError("cannot reach the S3 endpoint", unreachable=True)
    assert await retry.run(FakeTransport(down, down, down, down, "up").send) == "up"
    assert slept == [0.25, 0.5, 1.0, 2.0]


async def test_backoff_is_full_jitter_within_base_and_cap() -> None:
    lows = RetryPolicy(jitter=lambda low, high: low)
    highs = RetryPolicy(jitter=lambda low, high: high)
    assert [lows.backoff(n) for n in range(1, 8)] == [0.0] * 7
    assert [highs.backoff(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert sum(highs.backoff(n) for n in range(1, highs.attempts)) == 31.5  # the most one request waits in all
    for n in range(1, 30):
        assert 0 <= RETRY_POLICY.backoff(n) <= RETRY_POLICY.backoff_cap


async def test_the_sleeps_are_the_policys_backoff() -> None:
    retry, slept = policy(jitter=lambda low, high: high)
    await retry.run(FakeTransport(slow_down(), slow_down(), slow_down(), "done").send)
    assert slept == [0.5, 1.0, 2.0]


def test_the_policy_checks_itself() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=3, unreachable_attempts=5)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0, unreachable_attempts=0)
