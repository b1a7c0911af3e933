"""The upload progress bar on a terminal (tqdm): the CLI's Reporter. The library reports through
amgmt.progress.Reporter and never prints."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

from amgmt.models import UploadRecord
from amgmt.progress import SilentReporter
from amgmt.text import human_size


class TqdmReporter(SilentReporter):
    """A byte progress bar over all entries (source bytes), and one line per entry as it finishes.

    The bar is drawn from the first `add_work`, which a batch calls once it holds the run lock and has recovered
    what a dead run left: a run refused at the start shows no bar at all."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream
        self._bar: tqdm | None = None

    def _shown(self) -> tqdm:
        if self._bar is None:
            self._bar = tqdm(
                total=0,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self._stream or sys.stderr,
                dynamic_ncols=True,
                desc="upload",
                leave=True,
            )
        return self._bar

    def add_work(self, entries: int, nbytes: int) -> None:
        super().add_work(entries, nbytes)
        bar = self._shown()
        bar.total = self.total_bytes
        bar.set_postfix_str(f"{len(self.finished)}/{self.total_entries} entries", refresh=False)
        bar.refresh()

    def advance(self, nbytes: int) -> None:
        super().advance(nbytes)
        self._shown().update(nbytes)

    def entry_done(self, record: UploadRecord) -> None:
        super().entry_done(record)
        bar = self._shown()
        detail = record.s3_object_key if record.status in ("success", "partial") else (record.error_message or "")
        line = f"{record.status:<9} {record.target_name}  {human_size(record.original_size)}  {detail}"
        bar.write("".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in line))
        bar.set_postfix_str(f"{len(self.finished)}/{self.total_entries} entries", refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
