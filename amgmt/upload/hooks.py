"""The per-entry hook (`MGMT_HOOK`): a shell command run after each entry ends, the record in AMGMT_* variables.

Owns the hook's environment (no AWS_* or MGMT_* variables: never credentials) and its process (its own process
group, killed whole after `MGMT_HOOK_TIMEOUT`). What the hook did is logged and saved with the record; it never
changes the entry's outcome and never raises.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, Process

from amgmt.errors import StoreError
from amgmt.models import UploadRecord
from amgmt.store import Store
from amgmt.text import printable

log = logging.getLogger("amgmt")

# What the hook's environment never inherits: S3 credentials and settings (AWS_*), amgmt's own (MGMT_*), and
# AMGMT_* values of an outer run.
STRIPPED_PREFIXES = ("AWS_", "MGMT_", "AMGMT_")
STDERR_KEPT = 2048  # bytes of the hook's stderr kept for the error (its last line is recorded)
STDERR_GRACE = 0.5  # seconds to read what the hook wrote after it exited (a background child may hold the pipe)
SAVE_TIMEOUT = 10.0


@dataclass(frozen=True)
class HookResult:
    """What the hook did: its exit status (None when it never started or was killed), how long it ran, and what
    went wrong (None when it exited 0)."""

    exit: int | None
    seconds: float
    error: str | None = None

    def as_metadata(self) -> dict[str, Any]:
        return {"exit": self.exit, "seconds": round(self.seconds, 3), "error": self.error}


def hook_environment(record: UploadRecord, base: Mapping[str, str]) -> dict[str, str]:
    """`base` (the process's environment) without credentials or settings, plus the record's fields."""
    env = {name: value for name, value in base.items() if not name.startswith(STRIPPED_PREFIXES)}
    env.update(
        {
            "AMGMT_OPERATION_ID": record.operation_id,
            "AMGMT_STATUS": str(record.status),
            "AMGMT_TARGET_NAME": record.target_name,
            "AMGMT_TARGET_PATH": record.target_path,
            "AMGMT_BUCKET": record.s3_bucket,
            "AMGMT_KEY": record.s3_object_key,
            "AMGMT_SIZE": str(record.original_size),
            "AMGMT_COMPRESSED_SIZE": "" if record.compressed_size is None else str(record.compressed_size),
            "AMGMT_ERROR": record.error_message or "",
            "AMGMT_COMPLETED_PATH": record.completed_dir_path or "",
        }
    )
    return env


async def _keep_tail(stream: ByteReceiveStream, tail: bytearray, done: anyio.Event) -> None:
    try:
        async for chunk in stream:
            tail.extend(chunk)
            del tail[:-STDERR_KEPT]
    except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass
    done.set()


def _last_line(tail: bytes) -> str:
    lines = [line for line in tail.decode("utf-8", "replace").splitlines() if line.strip()]
    return printable(lines[-1].strip()) if lines else ""


def _kill_group(process: Process) -> None:
    """SIGKILL to the hook's process group (the shell and whatever it started); only while the shell is not
    reaped, so that its pid, the group's id, cannot belong to anybody else."""
    if process.returncode is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def _wait(process: Process, tail: bytearray) -> None:
    assert process.stderr is not None
    done = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_keep_tail, process.stderr, tail, done)
        await process.wait()
        with anyio.move_on_after(STDERR_GRACE):
            await done.wait()
        tg.cancel_scope.cancel()


async def run_hook(command: str, env: Mapping[str, str], *, timeout: float) -> HookResult:
    """Run `command` through /bin/sh in a process group of its own; killed (the whole group) after `timeout`
    seconds or when cancelled. Never raises for the hook's sake: the result says what happened."""
    started = time.perf_counter()
    try:
        process = await anyio.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return HookResult(None, time.perf_counter() - started, f"cannot start: {exc.strerror or exc}")
    tail = bytearray()
    try:
        with anyio.move_on_after(timeout) as scope:
            await _wait(process, tail)
    finally:
        with anyio.CancelScope(shield=True):
            _kill_group(process)
            await process.aclose()
    seconds = time.perf_counter() - started
    if scope.cancelled_caught:
        return HookResult(None, seconds, f"killed after {timeout:g} s (MGMT_HOOK_TIMEOUT)")
    code = process.returncode
    assert code is not None
    if code == 0:
        return HookResult(0, seconds)
    said = _last_line(bytes(tail))
    reason = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    return HookResult(code, seconds, f"{reason}: {said}" if said else reason)


@dataclass(frozen=True)
class EntryHook:
    """The hook of one run: `after(record)` runs it for an entry that ended and saves the result with the record."""

    command: str
    timeout: float
    store: Store

    async def after(self, record: UploadRecord) -> HookResult:
        """Shielded (a stopping run still tells the hook about its cancelled entries), bounded by the timeout."""
        with anyio.CancelScope(shield=True):
            result = await run_hook(self.command, hook_environment(record, os.environ), timeout=self.timeout)
            record.metadata["hook"] = result.as_metadata()
            if result.error is None:
                log.info("entry %s: hook done in %.1fs", record.operation_id, result.seconds)
            else:
                log.warning("entry %s: hook failed: %s", record.operation_id, result.error)
            try:
                with anyio.fail_after(SAVE_TIMEOUT):
                    await self.store.save_operation(record)
            except (StoreError, TimeoutError) as exc:
                log.warning("entry %s: the hook's result was not recorded: %s", record.operation_id, exc or "timeout")
        return result
