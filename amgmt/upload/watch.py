"""`amgmt watch`: a local dir that uploads itself. Each entry is taken once it has settled (local/settling.py) and
fed to one open upload run (batch.open_run, batch.run_entries): the same pipeline, records and guarantees as
`upload`. Owns the watching: OS events, rescans, settle checks, the ready queue, retries, the stop, the state file.

It never prints: the caller gets every event (start, entry finished, heartbeat, stop) as a dict through `notify`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import ObjectSendStream
from watchfiles import awatch

from amgmt.config import Settings
from amgmt.errors import AmgmtError, ExitCode
from amgmt.local.entries import PlannedEntry, list_entries, plan_entry, top_level_entry
from amgmt.local.settling import describe_writers, held_open, look_at, look_at_all, too_young
from amgmt.models import OperationStatus, UploadRecord, utcnow
from amgmt.naming import display
from amgmt.progress import SilentReporter
from amgmt.text import iso_utc
from amgmt.upload.batch import open_run, run_entries
from amgmt.upload.compressor import Compressor
from amgmt.upload.ownership import KnownKeys, release_key
from amgmt.upload.pipeline import PipelineContext
from amgmt.upload.watch_entries import Phase, WatchedEntries, WatchedEntry
from amgmt.upload.watch_status import LISTED, state_path, write_state

log = logging.getLogger("amgmt")

SETTLE_DEFAULT = 30.0
RESCAN_DEFAULT = 300.0
HEARTBEAT = 300.0  # seconds between heartbeat lines
STOP_GRACE = 30.0  # after a stop, how long entries in flight may take to finish before they are cancelled
MAX_ATTEMPTS = 3  # per entry and watch; then it is left for `amgmt retry` (or the next watch)
RETRY_DELAY = 60.0  # before the second attempt; doubled for each further one
STATE_EVERY = 1.0  # seconds between writes of the state file (its countdowns change every second)
LAST_ERRORS = 10

Notify = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class WatchOptions:
    settle: float = SETTLE_DEFAULT
    rescan: float = RESCAN_DEFAULT
    poll: bool = False  # no OS events: list the local dir every poll_interval instead (network file systems)
    once: bool = False  # take what has settled now (by the age of its last change), upload it, return
    events: bool = True  # False: neither OS events nor polling, only the rescans (tests)
    max_attempts: int = MAX_ATTEMPTS
    retry_delay: float = RETRY_DELAY
    heartbeat: float = HEARTBEAT
    stop_grace: float = STOP_GRACE

    @property
    def poll_interval(self) -> float:
        return min(max(self.settle / 2, 0.2), 5.0)

    @property
    def hint_delay(self) -> float:
        """How soon after an event the entry is looked at (events come in bursts while something is written)."""
        return min(self.settle / 2, 1.0)


@dataclass
class Watch:
    """One watch of the local dir; `await Watch(...).run()` returns its exit code (or raises a run-wide error)."""

    settings: Settings
    options: WatchOptions
    stop: anyio.Event
    notify: Notify = lambda event: None
    command_args: dict[str, Any] = field(default_factory=dict)
    compressor: Compressor | None = None
    credentials: tuple[str, str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        options = self.options
        self.entries = WatchedEntries(options.settle, options.max_attempts, options.retry_delay, options.hint_delay)
        self.counts: Counter[str] = Counter()
        self.failures = 0  # entries that ended failed, partial or changed for good
        self.last_errors: deque[dict[str, str]] = deque(maxlen=LAST_ERRORS)
        self.stopping = False
        self.started_at = utcnow()
        self._wake = anyio.Event()
        self._ready_event = anyio.Event()
        self._events_stop = anyio.Event()
        self._workers = anyio.CancelScope()
        self._feeding = anyio.CancelScope()
        self._state = "starting"
        self._events_mode = "rescans only"
        self._ctx: PipelineContext | None = None

    @property
    def workers(self) -> int:
        return self.settings.concurrency

    # -- the run ----------------------------------------------------------------------------------------------

    async def run(self) -> ExitCode:
        settings, options = self.settings, self.options
        present, _ = list_entries(settings)  # their keys: unjournaled multipart uploads of a dead run are aborted
        async with open_run(
            settings, present, workers=self.workers, compressor=self.compressor, credentials=self.credentials
        ) as run:
            ctx = self._ctx = run.pipeline_context(
                keys=KnownKeys(None),  # a listing goes stale over a long watch: every entry looks with a HEAD
                reporter=SilentReporter(keep=False),
                overwrite=False,
                command_args=self.command_args,
            )
            self._events_mode = "poll" if options.poll else "inotify" if options.events else "rescans only"
            self._state = "watching"
            self._started("once" if options.once else self._events_mode)
            send, receive = anyio.create_memory_object_stream[PlannedEntry](max_buffer_size=self.workers)
            error: AmgmtError | None = None
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._on_stop)
                    tg.start_soon(self._keep_state)
                    if options.once:
                        tg.start_soon(self._feed_once, send)
                    else:
                        tg.start_soon(self._feed, send)
                        tg.start_soon(self._checks)
                        tg.start_soon(self._rescans)
                        if options.events or options.poll:
                            tg.start_soon(self._hints)
                    with self._workers:
                        error = await run_entries(
                            ctx,
                            receive,
                            workers=self.workers,
                            finished=self._finished,
                            taking=self._taking,
                            left=self._left,
                            lookahead=False,  # the stream's small buffer stays the backpressure
                        )
                    tg.cancel_scope.cancel()
            finally:
                self._state = "stopped"
                self._write_state()
        code = self._exit_code() if error is None else error.exit_code
        log.info("watch stop: %s, exit %d", dict(sorted(self.counts.items())), int(code))
        self.notify({"event": "stop", "counts": dict(self.counts), "exit_code": int(code), "error": str(error or "")})
        if error is not None:
            raise error
        return code

    def _exit_code(self) -> ExitCode:
        return ExitCode.ENTRY_FAILED if self.failures else ExitCode.OK

    def _taking(self) -> bool:
        return not self.stopping

    def _started(self, mode: str) -> None:
        settings = self.settings
        log.info(
            "watch start: %s -> s3://%s/%s, settle %gs, rescan %gs, %s, concurrency %d",
            display(settings.local_dir),
            settings.bucket,
            settings.object_prefix,
            self.options.settle,
            self.options.rescan,
            mode,
            self.workers,
        )
        self.notify(
            {
                "event": "start",
                "local_dir": display(settings.local_dir),
                "destination": f"s3://{settings.bucket}/{settings.object_prefix}",
                "settle": self.options.settle,
                "mode": mode,
            }
        )
        self._write_state()

    async def _on_stop(self) -> None:
        """A stop takes no new entry; those in flight get `stop_grace` seconds to finish, then are cancelled as
        `upload` cancels them (recorded cancelled, multipart uploads left open for the next start to resume)."""
        await self.stop.wait()
        self.stopping = True
        self._state = "stopping"
        in_flight = sum(1 for e in self.entries.known.values() if e.phase == Phase.IN_FLIGHT)
        log.info("watch stopping: %d entries in flight finish first (at most %gs)", in_flight, self.options.stop_grace)
        self._events_stop.set()
        self._feeding.cancel()
        self._wake.set()
        await anyio.sleep(self.options.stop_grace)
        self._workers.cancel()

    # -- feeding the workers ----------------------------------------------------------------------------------

    async def _feed_once(self, send: ObjectSendStream[PlannedEntry]) -> None:
        """`--once`: every entry whose last change is older than --settle and that nobody holds open for writing."""
        async with send:
            with self._feeding:
                present, _ = await anyio.to_thread.run_sync(list_entries, self.settings)
                looks = await anyio.to_thread.run_sync(look_at_all, present)
                young = await anyio.to_thread.run_sync(lambda: too_young(looks, min_age=self.options.settle))
                for look in looks:
                    if look.gone:
                        continue  # removed meanwhile, or not a file or directory
                    if look.path in young:
                        reason = young[look.path]
                        self.notify({"event": "left", "target_name": display(look.path.name), "reason": reason})
                        continue
                    entry = WatchedEntry(look.path, Phase.IN_FLIGHT, settled_at=time.monotonic())
                    self.entries.known[look.path] = entry
                    await send.send(await anyio.to_thread.run_sync(plan_entry, self.settings, look.path))

    async def _feed(self, send: ObjectSendStream[PlannedEntry]) -> None:
        """Settled entries to the workers, oldest first; the stream's small buffer is the backpressure (a burst
        waits here as paths, not as plans). Each is looked at once more: one changed since it settled waits again."""
        async with send:
            with self._feeding:
                while True:
                    entry = self.entries.next_ready()
                    if entry is None:
                        await self._ready_event.wait()
                        self._ready_event = anyio.Event()
                        continue
                    look = await anyio.to_thread.run_sync(look_at, entry.path)
                    if look.fingerprint != entry.fingerprint:
                        self.entries.changed_since_ready(entry, look, time.monotonic())
                        self._wake.set()
                        continue
                    planned = await anyio.to_thread.run_sync(plan_entry, self.settings, entry.path)
                    entry.phase = Phase.IN_FLIGHT
                    await send.send(planned)

    def _left(self, planned: PlannedEntry) -> None:
        """Another run holds the entry (PostgreSQL): looked at again once a lease has passed (`--once`: left)."""
        if self.options.once:
            self.entries.forget(planned.path)
        else:
            self.entries.elsewhere(planned.path, time.monotonic(), self.settings.lease_seconds)
        self._wake.set()

    def _finished(self, planned: PlannedEntry, record: UploadRecord) -> None:
        """A worker's entry ended: done, parked, retried later, or waiting to settle again."""
        now = time.monotonic()
        if self._ctx is not None:
            release_key(self._ctx.claimed_keys, record)
        status = OperationStatus(record.status)
        self.counts[str(status)] += 1
        moved = bool(record.completed_dir_path)  # whatever is at its name now is a new entry
        there = os.path.lexists(planned.path)
        outcome = self.entries.finished(
            planned.path, status, still_there=there and not moved, now=now, once=self.options.once
        )
        if moved and there and not self.options.once:
            self.entries.hint(planned.path, now)
        if outcome.failed:
            self.failures += 1
        if record.error_message and status not in (OperationStatus.SKIPPED, OperationStatus.CANCELLED):
            self.last_errors.append(
                {"at": iso_utc(utcnow()), "target_name": record.target_name, "error": record.error_message}
            )
        self._wake.set()
        settled_at = outcome.entry.settled_at
        self.notify(
            {
                "event": "entry",
                "operation_id": record.operation_id,
                "status": str(record.status),
                "target_name": record.target_name,
                "s3_object_key": record.s3_object_key,
                "original_size": record.original_size,
                "error_message": record.error_message,
                "settled_to_done_seconds": round(now - settled_at, 3) if settled_at else None,
                "then": outcome.then,
            }
        )

    # -- finding and settling entries -------------------------------------------------------------------------

    def _hint(self, path: Path, now: float) -> None:
        top = top_level_entry(self.settings, path)
        if top is not None and not self.stopping:
            self.entries.hint(top, now)

    async def _hints(self) -> None:
        """OS events on the local dir itself (a new entry, a write to a top-level file), or with --poll a listing
        of it every poll_interval. Changes deep inside a directory entry are seen by its own checks."""
        if not self.options.poll:
            try:
                async for changes in awatch(
                    self.settings.local_dir,
                    watch_filter=None,
                    debounce=int(self.options.hint_delay * 1000),
                    stop_event=self._events_stop,
                    rust_timeout=1000,
                    recursive=False,
                    ignore_permission_denied=True,
                ):
                    now = time.monotonic()
                    for _change, raw in changes:
                        self._hint(Path(raw), now)
                    self._wake.set()
                return
            except (OSError, RuntimeError) as exc:  # no inotify (limits, file system): poll instead
                log.warning("watch: no OS events for %s (%s); polling", display(self.settings.local_dir), exc)
                self._events_mode = "poll"
        while not self.stopping:
            present, _ = await anyio.to_thread.run_sync(list_entries, self.settings)
            now = time.monotonic()
            for path in present:
                if path not in self.entries.known:
                    self._hint(path, now)
            self._wake.set()
            await anyio.sleep(self.options.poll_interval)

    async def _rescans(self) -> None:
        """Every --rescan seconds (and at the start) the whole local dir: what events missed, what vanished, and
        parked entries looked at again (changed ones are new content to upload)."""
        while not self.stopping:
            present, _ = await anyio.to_thread.run_sync(list_entries, self.settings)
            self.entries.listed(present, time.monotonic())
            self._wake.set()
            await anyio.sleep(self.options.rescan)

    async def _checks(self) -> None:
        """Look at every entry whose check is due; queue those settled and not held open for writing."""
        while not self.stopping:
            due = self.entries.due(time.monotonic())
            if due:
                looks = await anyio.to_thread.run_sync(look_at_all, due)
                settled = self.entries.judge(looks, time.monotonic())
                held = await anyio.to_thread.run_sync(held_open, settled) if settled else {}
                now = time.monotonic()
                for look in settled:
                    if look.path in held:
                        self.entries.held(look.path, describe_writers(held[look.path]), now)
                    elif self.entries.make_ready(look, now):
                        self._ready_event.set()
            delay = max(self.entries.next_check() - time.monotonic(), 0.01)
            with anyio.move_on_after(min(delay, self.options.rescan)):
                await self._wake.wait()
            self._wake = anyio.Event()

    # -- what the outside sees --------------------------------------------------------------------------------

    async def _keep_state(self) -> None:
        """The state file every STATE_EVERY seconds, and a heartbeat line every `heartbeat` seconds."""
        last_beat = time.monotonic()
        while True:
            await anyio.sleep(STATE_EVERY)
            self._write_state()
            if time.monotonic() - last_beat >= self.options.heartbeat:
                last_beat = time.monotonic()
                beat = self.snapshot()
                log.info(
                    "watch heartbeat: waiting %d, in flight %d, %s",
                    beat["waiting_count"],
                    beat["in_flight_count"],
                    dict(sorted(self.counts.items())),
                )
                self.notify({"event": "heartbeat", **beat})

    def snapshot(self) -> dict[str, Any]:
        """What `amgmt watch --status` shows: the state, what waits (and until when), in flight, counts, errors."""
        summary = self.entries.summary(time.monotonic())
        waiting, in_flight = summary["waiting"], summary["in_flight"]
        settings = self.settings
        return {
            "pid": os.getpid(),
            "state": self._state,
            "local_dir": display(settings.local_dir),
            "destination": f"s3://{settings.bucket}/{settings.object_prefix}",
            "started_at": iso_utc(self.started_at),
            "updated_at": iso_utc(utcnow()),
            "settle": self.options.settle,
            "rescan": self.options.rescan,
            "mode": "once" if self.options.once else self._events_mode,
            "waiting_count": len(waiting),
            "waiting": sorted(waiting, key=lambda w: float(w["settles_in"]))[:LISTED],
            "in_flight_count": len(in_flight),
            "in_flight": sorted(in_flight)[:LISTED],
            "retrying": summary["retrying"][:LISTED],
            "counts": dict(self.counts),
            "failed_for_good": self.failures,
            "last_errors": list(self.last_errors),
        }

    def _write_state(self) -> None:
        try:
            write_state(state_path(self.settings), self.snapshot())
        except OSError as exc:  # the watch goes on; only --status is blind
            log.warning("watch: cannot write the state file: %s", exc)
