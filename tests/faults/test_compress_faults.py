"""Stage 3 fails for one entry: the batch goes on, the entry is recorded failed at compress, nothing is left over."""

from __future__ import annotations

from pathlib import Path

import anyio

from amgmt.local.archive import ArchiveResult
from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.errors import CompressionError
from amgmt.upload.compressor import CompressionPool, Compressor

MEDIA = {"a.mp4": 1000, "dir/b.txt": b"hello", "bad.mov": 300_000}
OTHERS = ["a.mp4", "dir"]


def wrapping(real: Compressor, before: dict[str, object]) -> Compressor:
    """The real process-pool compressor, with `before[name]()` run first for that entry (it may raise)."""

    async def compress(source: str, archive_path: str, part_size: int, level: int, md5: bool = True) -> ArchiveResult:
        hook = before.get(Path(source).name)
        if callable(hook):
            hook(source, archive_path)
        return await real(source, archive_path, part_size, level, md5)

    return compress


async def test_compression_error_fails_only_that_entry(make_settings, make_media, aftermath) -> None:
    make_media(MEDIA)
    settings = make_settings()

    def fail(source: str, archive_path: str) -> None:
        # As a worker would: a partial archive exists when the error is raised.
        Path(archive_path + ".partial").write_bytes(b"half an archive")
        raise CompressionError(f"cannot read {source}: Input/output error", path=source)

    async with CompressionPool(anyio.CapacityLimiter(2)) as real:
        report = await upload_batch(settings, list_entries(settings)[0], compressor=wrapping(real, {"bad.mov": fail}))

    record = await aftermath(settings).check(report, failed="bad.mov", stage="compress", others=OTHERS)
    assert "Input/output error" in record.error_message
    assert record.compressed_size is None and record.s3_file_record is None


async def test_source_changing_size_before_compression_fails_that_entry(
    make_settings, make_media, aftermath, local_dir: Path
) -> None:
    make_media(MEDIA)
    settings = make_settings()
    entries = list_entries(settings)[0]

    def grow(source: str, archive_path: str) -> None:
        with open(source, "ab") as f:
            f.write(b"appended after listing")

    async with CompressionPool(anyio.CapacityLimiter(2)) as real:
        report = await upload_batch(settings, entries, compressor=wrapping(real, {"bad.mov": grow}))

    record = await aftermath(settings).check(report, failed="bad.mov", stage="compress", others=OTHERS)
    assert "changed between listing and compression" in record.error_message
    assert f"{300_000} -> {300_000 + 22} bytes" in record.error_message
    assert (local_dir / "bad.mov").stat().st_size == 300_000 + 22
