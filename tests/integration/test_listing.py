"""The library of `ls`, `search` and `stats`: the paginated object listing (moto, and a scripted client for what moto
cannot show), the join with the store and the local dir, and the statistics of a known set of records."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.errors import ConfigError, StorageError
from amgmt.objects.listing import ArchiveState as Shown, Scope, build_listing, search
from amgmt.models import OperationStatus, Stage, UploadRecord, new_operation_id
from amgmt.s3 import ClientOptions, RestoreState, S3Bucket
from amgmt.objects.stats import compute_statistics, failure_reason, upload_statistics
from amgmt.store import MetadataStore, UploadSummary

# -- the object listing ---------------------------------------------------------------------------------------


async def test_list_objects_follows_every_page_under_the_prefix(make_settings, s3view) -> None:
    keys = [f"media/{i:03d}.mp4.tar.gz" for i in range(25)]
    for key in keys:
        s3view.put(key, b"x" * 3)
    s3view.put("media-old/x.tar.gz", b"no")  # same start, another segment
    s3view.put("other/y.tar.gz", b"no")
    s3view.put("media/cold.tar.gz", b"brrr", StorageClass="GLACIER")
    settings = make_settings()

    async with S3Bucket.connect(ClientOptions.from_settings(settings)) as s3:
        listed = await s3.list_objects("media/", page_size=10)

    assert [o.key for o in listed] == sorted([*keys, "media/cold.tar.gz"])
    first = listed[0]
    assert first.size == 3 and first.storage_class == "STANDARD" and first.last_modified is not None
    assert first.etag and '"' not in first.etag
    cold = next(o for o in listed if o.key == "media/cold.tar.gz")
    assert cold.storage_class == "GLACIER" and cold.restore is None  # moto does not report restores in listings


async def test_listing_a_missing_bucket_is_a_storage_error(make_settings) -> None:
    settings = make_settings(bucket="no-such-bucket-here")
    with pytest.raises(StorageError, match="does not exist"):
        await build_listing(settings, Scope.S3)


class ScriptedClient:
    """An S3 client answering ListObjectsV2 from a script of pages, recording every call's arguments; it can refuse
    OptionalObjectAttributes as a server without that feature would."""

    def __init__(self, pages: list[dict[str, Any]], *, refuse_attributes: str | None = None) -> None:
        self.pages = pages
        self.refuse_attributes = refuse_attributes
        self.calls: list[dict[str, Any]] = []

    async def list_objects_v2(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        if self.refuse_attributes and "OptionalObjectAttributes" in kwargs:
            raise ClientError({"Error": {"Code": self.refuse_attributes, "Message": "no"},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, "ListObjectsV2")
        index = int(kwargs.get("ContinuationToken", "0"))
        return self.pages[index]


WHEN = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)
PAGES = [
    {"IsTruncated": True, "NextContinuationToken": "1", "Contents": [
        {"Key": "p/a.tar.gz", "Size": 1, "StorageClass": "GLACIER", "ETag": '"AA"', "LastModified": WHEN,
         "RestoreStatus": {"IsRestoreInProgress": True}},
        {"Key": "p/b.tar.gz", "Size": 2, "StorageClass": "DEEP_ARCHIVE", "ETag": '"bb"', "LastModified": WHEN,
         "RestoreStatus": {"IsRestoreInProgress": False, "RestoreExpiryDate": WHEN + timedelta(days=2)}},
    ]},
    {"IsTruncated": False, "Contents": [
        {"Key": "p/c.tar.gz", "Size": 3, "StorageClass": "GLACIER", "ETag": '"cc"', "LastModified": WHEN},
        {"Key": "p/d.tar.gz", "Size": 4, "ETag": '"dd"', "LastModified": WHEN},
    ]},
]


async def test_restore_status_comes_from_the_listing_itself() -> None:
    client = ScriptedClient(PAGES)
    listed = await S3Bucket(client, ClientOptions(bucket="b")).list_objects("p/", page_size=2)

    assert [c.get("ContinuationToken") for c in client.calls] == [None, "1"]
    assert all(c["OptionalObjectAttributes"] == ["RestoreStatus"] and c["MaxKeys"] == 2 for c in client.calls)
    assert [o.restore for o in listed] == [
        RestoreState(ongoing=True),
        RestoreState(ongoing=False, expiry=WHEN + timedelta(days=2)),
        None,
        None,
    ]
    assert listed[0].etag == "aa" and listed[3].storage_class == "STANDARD"

    client = ScriptedClient(PAGES)
    first = await S3Bucket(client, ClientOptions(bucket="b")).list_objects("p/", limit=1, page_size=2)
    assert [o.key for o in first] == ["p/a.tar.gz"] and len(client.calls) == 1  # no page beyond the limit


@pytest.mark.parametrize("code", ["InvalidArgument", "NotImplemented", "AccessDenied"])
async def test_a_server_refusing_the_restore_attribute_is_asked_without_it(code: str) -> None:
    client = ScriptedClient(PAGES, refuse_attributes=code)
    listed = await S3Bucket(client, ClientOptions(bucket="b")).list_objects("p/", page_size=2)

    assert len(listed) == 4
    assert ["OptionalObjectAttributes" in c for c in client.calls] == [True, False, False]


async def test_a_missing_bucket_is_not_asked_twice() -> None:
    client = ScriptedClient(PAGES, refuse_attributes="NoSuchBucket")
    with pytest.raises(StorageError, match="does not exist"):
        await S3Bucket(client, ClientOptions(bucket="b")).list_objects("p/")
    assert len(client.calls) == 1


# -- ls and search ----------------------------------------------------------------------------------------------


@pytest.fixture
async def uploaded(make_settings, make_media, local_dir: Path, s3view):  # type: ignore[no-untyped-def]
    """done.mp4 uploaded (and moved away); Taken.MOV failed (other content at its key); new.mp4 never tried; plus
    objects under the prefix that no upload of this database made, one of them archived."""
    settings = make_settings(object_prefix="media")
    make_media({"done.mp4": 100, "Taken.MOV": 200})
    s3view.put("media/Taken.MOV.tar.gz", b"someone else's")
    report = await upload_batch(settings, list_entries(settings)[0])
    assert report.counts() == {"success": 1, "failed": 1}
    make_media({"new.mp4": 300})
    s3view.put("media/50%25 off%09promo.mp4.tar.gz", b"p")
    s3view.put("media/old/ICE.tar.gz", b"cold", StorageClass="DEEP_ARCHIVE")
    return settings, {r.target_name: r for r in report.records}


async def test_ls_joins_the_local_dir_the_bucket_and_the_records(uploaded) -> None:  # type: ignore[no-untyped-def]
    settings, records = uploaded
    listing = await build_listing(settings, Scope.ALL, page_size=2)

    assert listing.prefix == "media/" and listing.bucket == settings.bucket
    local = {e.name: e for e in listing.local}
    assert sorted(local) == ["Taken.MOV", "new.mp4"]  # done.mp4 moved to the completed dir
    taken = local["Taken.MOV"]
    assert (taken.upload_status, taken.operation_id) == ("failed", records["Taken.MOV"].operation_id)
    assert taken.changed_since is False and taken.in_s3 is True and taken.size == 200
    assert (local["new.mp4"].upload_status, local["new.mp4"].changed_since, local["new.mp4"].in_s3) == (None, None, False)

    objects = {o.key: o for o in listing.objects}
    assert sorted(objects) == ["media/50%25 off%09promo.mp4.tar.gz", "media/Taken.MOV.tar.gz",
                               "media/done.mp4.tar.gz", "media/old/ICE.tar.gz"]
    assert objects["media/done.mp4.tar.gz"].operation_id == records["done.mp4"].operation_id
    assert objects["media/done.mp4.tar.gz"].target_name == "done.mp4"
    assert objects["media/Taken.MOV.tar.gz"].operation_id is None  # its upload failed: not ours
    assert objects["media/old/ICE.tar.gz"].restore == Shown.ARCHIVED
    assert objects["media/done.mp4.tar.gz"].restore is None
    assert objects["media/50%25 off%09promo.mp4.tar.gz"].name == "50% off\tpromo.mp4.tar.gz"

    only_local = await build_listing(settings, Scope.LOCAL)
    assert only_local.objects is None and [e.in_s3 for e in only_local.local] == [None, None]
    only_s3 = await build_listing(settings, Scope.S3)
    assert only_s3.local is None and len(only_s3.objects) == 4


async def test_a_new_file_under_an_uploaded_name_is_marked_changed(uploaded, local_dir: Path) -> None:  # type: ignore[no-untyped-def]
    settings, _ = uploaded
    (local_dir / "done.mp4").write_bytes(b"a different file under the same name")
    listing = await build_listing(settings, Scope.LOCAL)
    done = next(e for e in listing.local if e.name == "done.mp4")
    assert done.upload_status == "success" and done.changed_since is True


async def test_search_is_case_insensitive_over_names_and_keys(uploaded) -> None:  # type: ignore[no-untyped-def]
    settings, _ = uploaded

    found = await search(settings, "taken.mov", page_size=2)
    assert [e.name for e in found.local] == ["Taken.MOV"]
    assert [o.key for o in found.objects] == ["media/Taken.MOV.tar.gz"]

    found = await search(settings, "ice")
    assert found.local == [] and [o.key for o in found.objects] == ["media/old/ICE.tar.gz"]
    found = await search(settings, "50% OFF")  # the decoded name
    assert [o.key for o in found.objects] == ["media/50%25 off%09promo.mp4.tar.gz"]
    found = await search(settings, "MEDIA")  # the prefix is not part of what is matched
    assert found.local == [] and found.objects == []
    found = await search(settings, "MP4", Scope.LOCAL)
    assert [e.name for e in found.local] == ["new.mp4"] and found.objects is None
    with pytest.raises(ConfigError):
        await search(settings, "")


async def test_ls_without_a_database_creates_none(make_settings, make_media) -> None:
    settings = make_settings()
    make_media({"a.mp4": 10})
    listing = await build_listing(settings, Scope.ALL)
    assert [(e.name, e.upload_status, e.in_s3) for e in listing.local] == [("a.mp4", None, False)]
    assert listing.objects == []
    assert not settings.db_path.exists()


# -- stats ------------------------------------------------------------------------------------------------------

MONDAY = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)  # ISO week 48
MiB = 1024 * 1024


def make_upload(name: str, *, day: int, status: OperationStatus = OperationStatus.SUCCESS, size: int = MiB,
                packed: int | None = None, seconds: float = 1.0, error: str | None = None,
                stage: Stage = Stage.DONE) -> UploadRecord:
    started = MONDAY + timedelta(days=day)
    record = UploadRecord(
        operation_id=new_operation_id(),
        target_path=f"/media/{name}",
        target_name=name,
        started_at=started,
        original_size=size,
        compressed_size=size // 2 if packed is None else packed,
        s3_bucket="bucket",
        s3_object_key=f"media/{name}.tar.gz",
        stage=stage,
    )
    record.finish(status, error=error, when=started + timedelta(seconds=seconds))
    return record


KNOWN = [
    make_upload("a.mp4", day=0, size=4 * MiB, seconds=2.0),  # ratio 2
    make_upload("b.mp4", day=0, size=2 * MiB, packed=2 * MiB, seconds=2.0),  # ratio 1
    make_upload("c.mp4", day=1, size=6 * MiB, seconds=4.0, status=OperationStatus.PARTIAL,
                error="move: cannot move /media/c.mp4: Permission denied"),  # ratio 2
    make_upload("d.mp4", day=7, size=MiB, seconds=0.5, status=OperationStatus.FAILED, stage=Stage.UPLOAD,
                error="upload: s3://bucket/media/d.mp4.tar.gz already exists with other content; use --overwrite"),
    make_upload("e e.mp4", day=7, size=MiB, status=OperationStatus.FAILED, stage=Stage.UPLOAD,
                error="upload: s3://bucket/media/e e.mp4.tar.gz already exists with other content; use --overwrite"),
    make_upload("f.mp4", day=8, status=OperationStatus.FAILED, stage=Stage.UPLOAD,
                error="upload: PUT s3://bucket/media/f.mp4.tar.gz failed: SlowDown (HTTP 503): Please reduce"),
    make_upload("g.mp4", day=8, status=OperationStatus.CANCELLED, stage=Stage.COMPRESS, error="compress: interrupted"),
    make_upload("h.mp4", day=8, status=OperationStatus.SKIPPED, error="identical content already uploaded"),
]


async def test_statistics_of_known_records(tmp_path: Path) -> None:
    async with MetadataStore(tmp_path / "ops.db") as store:
        for record in KNOWN:
            await store.save_operation(record)
        stats = await upload_statistics(store, tz=timezone.utc)
        recent = await upload_statistics(store, tz=timezone.utc, since=MONDAY + timedelta(days=7))

    assert stats.operations == 8
    assert stats.by_status == {"cancelled": 1, "failed": 3, "partial": 1, "skipped": 1, "success": 2}
    assert stats.entries == 3  # success and partial
    assert stats.original_bytes == 12 * MiB and stats.uploaded_bytes == 7 * MiB
    assert stats.compression_ratio == round(12 / 7, 4)
    assert stats.mean_compression_ratio == round((2 + 1 + 2) / 3, 4)
    assert stats.upload_seconds == 8.0 and stats.throughput == 12 * MiB / 8.0

    assert [(p.period, p.entries, p.original_bytes, p.uploaded_bytes, p.failures) for p in stats.per_day] == [
        ("2026-11-23", 2, 6 * MiB, 4 * MiB, 0),
        ("2026-11-24", 1, 6 * MiB, 3 * MiB, 1),
        ("2026-11-30", 0, 0, 0, 2),
        ("2026-12-01", 0, 0, 0, 2),
    ]
    assert [(p.period, p.entries, p.original_bytes, p.failures) for p in stats.per_week] == [
        ("2026-W48", 3, 12 * MiB, 1),
        ("2026-W49", 0, 0, 4),
    ]
    assert [(f.reason, f.status, f.count) for f in stats.failures] == [
        ("upload: <object> already exists with other content", "failed", 2),
        ("compress: interrupted", "cancelled", 1),
        ("move: cannot move <entry>: Permission denied", "partial", 1),
        ("upload: PUT <object> failed: SlowDown", "failed", 1),
    ]
    assert stats.failures[0].last_operation_id == KNOWN[4].operation_id

    assert recent.operations == 5 and recent.entries == 0 and recent.throughput is None
    assert recent.compression_ratio is None and [p.period for p in recent.per_week] == ["2026-W49"]


def test_days_are_counted_in_the_given_time_zone() -> None:
    late = make_upload("late.mp4", day=0)
    summary = UploadSummary(
        operation_id=late.operation_id, target_name="late.mp4", target_path="/m/late.mp4", status="success",
        stage="done", started_at=datetime(2026, 11, 29, 23, 30, tzinfo=timezone.utc), duration_seconds=1.0,
        original_size=10, compressed_size=5, s3_bucket="b", s3_object_key="late.mp4.tar.gz", error_message=None,
        source_modified_at=None,
    )
    plus_two = timezone(timedelta(hours=2))
    assert [p.period for p in compute_statistics([summary], tz=timezone.utc).per_day] == ["2026-11-29"]
    stats = compute_statistics([summary], tz=plus_two)
    assert [p.period for p in stats.per_day] == ["2026-11-30"]
    assert [p.period for p in stats.per_week] == ["2026-W49"]  # Monday 30 November


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("validate: /m/x.mp4 does not exist (deleted since it was listed?)", "validate: <entry> does not exist"),
        ("verify: s3://b/k.tar.gz is missing after the upload", "verify: <object> is missing after the upload"),
        ("upload: internal error: RuntimeError: boom 42", "upload: internal error: RuntimeError: boom N"),
        ("something without a stage", "upload: something without a stage"),
        (None, "upload: (no message)"),
    ],
)
def test_failure_reasons_leave_out_what_names_the_entry(message: str | None, reason: str) -> None:
    summary = UploadSummary(
        operation_id="x", target_name="x.mp4", target_path="/m/x.mp4", status="failed", stage="upload",
        started_at=MONDAY, duration_seconds=None, original_size=None, compressed_size=None, s3_bucket="b",
        s3_object_key="k.tar.gz", error_message=message, source_modified_at=None,
    )
    assert failure_reason(summary) == reason
