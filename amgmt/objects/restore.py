"""Restores of archived objects (GLACIER, DEEP_ARCHIVE, archived tiering): asking for one, recorded as a "restore"
operation, and waiting until the copy is readable. Never downloads; the caller decides whether to wait.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio

from amgmt.errors import ConfigError
from amgmt.models import OperationStatus
from amgmt.s3 import ObjectHead

if TYPE_CHECKING:
    from amgmt.objects.resolve import Objects, Target
    from amgmt.objects.transfer import DownloadReporter

DEFAULT_RESTORE_DAYS = 3
DEFAULT_POLL_SECONDS = 60.0
# What AWS documents as the usual time of a restore, for the message that says to come back later.
RESTORE_TIMES = {
    ("GLACIER", "Expedited"): "1-5 minutes",
    ("GLACIER", "Standard"): "3-5 hours",
    ("GLACIER", "Bulk"): "5-12 hours",
    ("DEEP_ARCHIVE", "Standard"): "within 12 hours",
    ("DEEP_ARCHIVE", "Bulk"): "within 48 hours",
}


def restore_days(head: ObjectHead, days: int) -> int | None:
    """The Days of a restore request: archived tiering copies take none (they stay until they are archived again)."""
    return None if head.archive_status else days


async def request_restore(
    objects: Objects, target: Target, head: ObjectHead, *, tier: str, days: int, command_args: dict[str, Any] | None
) -> str:
    """Ask for a restore of an archived object that has none; the answer (started | restored | in-progress) is
    recorded as a "restore" operation. ConfigError before any request for a tier the storage class refuses."""
    if tier == "Expedited" and "DEEP_ARCHIVE" in (head.storage_class, head.archive_status):
        raise ConfigError("DEEP_ARCHIVE objects cannot be restored with the Expedited tier")
    answer = await objects.s3.restore_object(target.key, tier=tier, days=restore_days(head, days))
    record = objects.new_record("restore", target, command_args)
    record.metadata |= {
        "storage_class": head.storage_class,
        "archive_status": head.archive_status,
        "tier": tier,
        "days": restore_days(head, days),
        "answer": answer,
    }
    record.finish(OperationStatus.SUCCESS)
    await objects.save_record(record)
    return answer


async def wait_for_restore(
    objects: Objects, target: Target, *, tier: str, days: int, poll_interval: float, reporter: DownloadReporter
) -> tuple[ObjectHead, float]:
    """Poll HEAD until the restored copy is readable; (the HEAD that says so, seconds waited)."""
    started = time.monotonic()
    while True:
        head = await objects.head(target)
        waited = time.monotonic() - started
        if not head.needs_restore:
            return head, waited
        if head.restore is None:  # it expired, or was never asked for by this command: ask (again)
            await objects.s3.restore_object(target.key, tier=tier, days=restore_days(head, days))
        reporter.restore_waiting(head, waited, poll_interval)
        await anyio.sleep(poll_interval)
