from pathlib import Path

from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch


async def test_upload_all_moves_and_records(make_settings, make_media, local_dir: Path, s3_client, bucket) -> None:
    make_media({"a.mp4": 1000, "dir/b.txt": b"hello", "empty-dir/": None})
    settings = make_settings()
    entries, ignored = list_entries(settings)
    report = await upload_batch(settings, entries)
    assert report.counts() == {"success": 3}, report.to_dict()
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["a.mp4.tar.gz", "dir.tar.gz", "empty-dir.tar.gz"]
    assert (local_dir / "completed" / "a.mp4").exists() and not (local_dir / "a.mp4").exists()
