"""amgmt.s3.multipart with a fake botocore client (no server): the abort is registered the moment the UploadId
exists, so every later failure aborts it (s3transfer's test_upload_failure_invokes_abort); cancellation leaves the
upload open; one part costs at most RETRY_POLICY.attempts requests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import anyio
import pytest
from botocore.exceptions import ClientError

from amgmt.errors import UploadError
from amgmt.parts import MiB
from amgmt.s3 import multipart
from amgmt.s3 import RETRY_POLICY, ByteBudget, ClientOptions, RetryPolicy, S3Bucket, UploadStats


def refused(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


class FakeClient:
    """The botocore calls of a multipart upload, each logged; `fail` maps an operation to the error it raises."""

    def __init__(self, **fail: BaseException) -> None:
        self.fail = fail
        self.calls: list[str] = []

    def _call(self, name: str, answer: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(name)
        if name in self.fail:
            raise self.fail[name]
        return answer

    async def create_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        return self._call("create", {"UploadId": "up-1"})

    async def upload_part(self, **kw: Any) -> dict[str, Any]:
        return self._call(f"part{kw['PartNumber']}", {"ETag": '"e"'})

    async def complete_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        return self._call("complete", {"ETag": '"x-2"'})

    async def abort_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        return self._call("abort", {})


class Journal:
    def __init__(self, fail_started: bool = False) -> None:
        self.events: list[str] = []
        self.fail_started = fail_started

    async def started(self, upload_id: str) -> None:
        self.events.append("started")
        if self.fail_started:
            raise OSError("journal gone")

    async def part_done(self, upload_id: str, part: Any) -> None:
        self.events.append(f"part{part.number}")

    async def finished(self, upload_id: str, state: str) -> None:
        self.events.append(state)


async def no_sleep(seconds: float) -> None:
    pass


def bucket(client: FakeClient) -> S3Bucket:
    return S3Bucket(client, ClientOptions(bucket="b", checksum_algorithm="md5"),
                    retry=RetryPolicy(sleep=no_sleep))


async def upload(s3: S3Bucket, tmp_path: Path, journal: Journal, stats: UploadStats | None = None) -> Any:
    path = tmp_path / "a.tar.gz"
    data = bytes(range(256)) * (40 * 1024)  # 10 MiB: two parts of 5 MiB
    path.write_bytes(data)
    md5s = [hashlib.md5(data[:5 * MiB]).hexdigest(), hashlib.md5(data[5 * MiB:]).hexdigest()]
    return await multipart.upload_file(s3, "k", str(path), size=len(data), part_size=5 * MiB, part_md5s=md5s, metadata={},
                                storage_class=None, budget=ByteBudget(64 * MiB), journal=journal,
                                stats=stats if stats is not None else UploadStats())


async def test_a_complete_upload(tmp_path: Path) -> None:
    client, journal = FakeClient(), Journal()
    result = await upload(bucket(client), tmp_path, journal)
    assert result.multipart and result.upload_id == "up-1" and result.etag == "x-2"
    assert client.calls[0] == "create" and client.calls[-1] == "complete" and "abort" not in client.calls
    assert journal.events[-1] == "completed"


@pytest.mark.parametrize("failing", ["part2", "complete"])
async def test_upload_failure_invokes_abort(tmp_path: Path, failing: str) -> None:
    client, journal = FakeClient(**{failing: refused("InvalidArgument", 400)}), Journal()
    with pytest.raises(UploadError, match="InvalidArgument"):
        await upload(bucket(client), tmp_path, journal)
    assert client.calls.count("abort") == 1 and journal.events[-1] == "aborted"


async def test_a_journal_that_fails_right_after_the_create_aborts_the_upload(tmp_path: Path) -> None:
    client, journal = FakeClient(), Journal(fail_started=True)
    with pytest.raises(OSError):
        await upload(bucket(client), tmp_path, journal)
    assert client.calls == ["create", "abort"]


async def test_a_cancelled_upload_is_left_open(tmp_path: Path) -> None:
    client, journal = FakeClient(), Journal()

    async def stalled(**kw: Any) -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError

    client.upload_part = stalled  # type: ignore[method-assign]
    with anyio.move_on_after(0.2):
        await upload(bucket(client), tmp_path, journal)
    assert client.calls == ["create"] and "aborted" not in journal.events


async def test_one_part_costs_at_most_the_policys_attempts(tmp_path: Path) -> None:
    client, journal, stats = FakeClient(part2=refused("SlowDown", 503)), Journal(), UploadStats()
    with pytest.raises(UploadError, match="SlowDown"):
        await upload(bucket(client), tmp_path, journal, stats)
    assert client.calls.count("part2") == RETRY_POLICY.attempts == 8
    assert stats.retries == RETRY_POLICY.attempts - 1
    assert client.calls.count("abort") == 1
