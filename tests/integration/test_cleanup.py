"""Stage 8 (cleanup) must never turn one entry's trouble into a crash of the whole batch."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.store import MetadataStore


def _deep_dir(base: Path, length: int) -> Path:
    """A directory path of exactly `length` characters under `base` (components of at most 200)."""
    path = base
    while len(str(path)) < length - 202:
        path = path / ("d" * 200)
    return path / ("e" * (length - len(str(path)) - 1))


async def test_unremovable_staging_path_fails_the_entry_not_the_batch(
    make_settings, make_media, local_dir: Path, s3view, tmp_path: Path
) -> None:
    make_media({"a.mp4": 100, "b.mp4": 200})
    # The staging dir itself fits in PATH_MAX (4096), a staging archive's path inside it does not.
    staging = _deep_dir(tmp_path, 4060)
    settings = make_settings(staging_dir=str(staging))
    with pytest.raises(OSError) as too_long:
        os.open(staging / ("x" * 60), os.O_CREAT | os.O_WRONLY)
    assert too_long.value.errno == errno.ENAMETOOLONG

    report = await upload_batch(settings, list_entries(settings)[0])

    assert report.counts() == {"failed": 2}
    assert report.aborted is None and report.exit_code == 1
    for r in report.records:
        assert r.error_message.startswith("compress:"), r.error_message
    async with MetadataStore(settings.db_path) as store:
        for r in report.records:
            assert (await store.get_operation(r.operation_id)).status == "failed"
    assert s3view.keys() == []
    assert (local_dir / "a.mp4").exists() and (local_dir / "b.mp4").exists()
