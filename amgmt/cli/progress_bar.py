"""How a run shows its progress (the CLI's Reporters): a bar on a terminal (tqdm), one line per finished entry
without one (cron, CI, `| tee`). The library reports through amgmt.progress.Reporter and never prints."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Collection
from typing import TextIO

from tqdm import tqdm

from amgmt.cli.common import quiet, show_progress
from amgmt.models import OperationRecord, UploadRecord
from amgmt.progress import Reporter, SilentReporter
from amgmt.text import human_size, printable

REDRAW_SECONDS = 0.2  # the in-flight line is redrawn at most this often for upload percentages


def in_flight_text(in_flight: Collection[tuple[str, str]], width: int) -> str:
    """The entries in flight and their stage on one line of `width` columns: `clip.mp4 upload 42% | trip compress`,
    the names shortened (and the tail counted) when they do not fit. Reads only as many entries as the line can
    show: the lane has ~200 in flight, and the line is drawn at each of their stage changes."""
    if not in_flight:
        return ""
    parts: list[str] = []
    length = -3
    for name, stage in in_flight:
        part = f"{printable(name)} {stage}"
        length += len(part) + 3
        if length > width:
            break
        parts.append(part)
    else:
        return " | ".join(parts)
    shown: list[str] = []
    for n, (name, stage) in enumerate(in_flight):
        rest = f" | +{len(in_flight) - n} more"
        part = f"{printable(name)} {stage}"
        short = part if len(part) <= 30 else f"{printable(name)[: 27 - len(stage)]}… {stage}"
        if len(" | ".join([*shown, short])) + len(rest) > width:
            return " | ".join(shown) + rest if shown else rest.lstrip(" |")
        shown.append(short)
    return " | ".join(shown)


class TqdmReporter(SilentReporter):
    """A byte progress bar over all entries (source bytes), a line below it with the entries in flight and their
    stage (compress, upload NN%, verify, move), and one line per entry as it finishes.

    The bar is drawn from the first `add_work`, which a batch calls once it holds the run lock and has recovered
    what a dead run left: a run refused at the start shows no bar at all."""

    def __init__(
        self, stream: TextIO | None = None, *, desc: str = "upload", unit: str = "B", noun: str = "entries"
    ) -> None:
        super().__init__(keep=False)  # the bar counts; a long run holds no records
        self._stream = stream
        self._bar: tqdm | None = None
        self._desc = desc
        self._unit = unit  # "B": a byte bar (KiB, MiB, ...); another unit counts items
        self._noun = noun  # what the "done/total" beside the bar counts
        self._status: tqdm | None = None  # the in-flight line under the bar
        self._drawn = 0.0

    def _shown(self) -> tqdm:
        if self._bar is None:
            self._bar = tqdm(
                total=0,
                unit=self._unit,
                unit_scale=self._unit == "B",
                unit_divisor=1024,
                file=self._stream or sys.stderr,
                dynamic_ncols=True,
                desc=self._desc,
                leave=True,
            )
        return self._bar

    def add_work(self, entries: int, nbytes: int) -> None:
        super().add_work(entries, nbytes)
        bar = self._shown()
        bar.total = self.total_bytes
        bar.set_postfix_str(f"{self.done_entries}/{self.total_entries} {self._noun}", refresh=False)
        bar.refresh()

    def advance(self, nbytes: int) -> None:
        super().advance(nbytes)
        self._shown().update(nbytes)

    def entry_stage(self, record: OperationRecord, stage: str) -> None:
        known = record.operation_id in self.in_flight
        before = self.in_flight.get(record.operation_id, ("", ""))[1].split(" ")[0]
        super().entry_stage(record, stage)
        # A new entry or a new stage is drawn at once; an upload's percentages at most every REDRAW_SECONDS.
        if known and stage.split(" ")[0] == before and time.monotonic() - self._drawn < REDRAW_SECONDS:
            return
        self._draw_in_flight()

    def _draw_in_flight(self) -> None:
        self._drawn = time.monotonic()
        stream = self._stream or sys.stderr
        if self._status is None:
            if not self.in_flight:
                return
            self._shown()
            self._status = tqdm(total=0, file=stream, bar_format="{desc}", position=1, leave=False)
        width = shutil.get_terminal_size((100, 24)).columns - 1
        self._status.set_description_str(in_flight_text(self.in_flight.values(), width), refresh=True)

    def entry_done(self, record: OperationRecord) -> None:
        super().entry_done(record)
        if self._status is not None:
            self._draw_in_flight()
        bar = self._shown()
        bar.write(finished_line(record), file=self._stream or sys.stderr)  # tqdm.write defaults to stdout
        bar.set_postfix_str(f"{self.done_entries}/{self.total_entries} {self._noun}", refresh=True)

    def close(self) -> None:
        if self._status is not None:
            self._status.close()
            self._status = None
        if self._bar is not None:
            self._bar.close()


class LineReporter(SilentReporter):
    """No bar: one line per entry as it finishes, on stderr, written at once (a log file or a pipe sees each entry
    end, not only the summary)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(keep=False)
        self._stream = stream

    def entry_done(self, record: OperationRecord) -> None:
        super().entry_done(record)
        stream = self._stream or sys.stderr
        stream.write(finished_line(record) + "\n")
        stream.flush()


def finished_line(record: OperationRecord) -> str:
    """The one line shown for a finished entry: status, name, size, and its key (or why it did not end well)."""
    if isinstance(record, UploadRecord):
        detail = record.s3_object_key if record.status in ("success", "partial") else (record.error_message or "")
        line = f"{record.status:<9} {record.target_name}  {human_size(record.original_size)}  {detail}"
    else:
        line = f"{record.status:<9} {record.target_name}  {record.error_message or record.target_path}"
    return printable(line)


def run_reporter(progress: bool | None, *, as_json: bool) -> Reporter:
    """What an upload or retry shows: the bar on a terminal (or with --progress), else a line per finished entry;
    nothing under -q or --json (stdout is then the JSON document, and stderr keeps only errors)."""
    if show_progress(progress, as_json=as_json):
        return TqdmReporter()
    if as_json or quiet():
        return SilentReporter(keep=False)
    return LineReporter()
