"""amgmt.objects (resolve, download, transfer, extract) against the real local server: ranged downloads verified
against the upload record, corrupted and replaced objects refused, safe extraction (a table of hostile archives), no
overwrite without --force, a GLACIER object through restore and --wait, and the records every operation leaves."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amgmt.local.entries import list_entries
from amgmt.objects.download import DownloadOptions, DownloadState
from amgmt.objects.extract import extract_archive, plan_extraction
from amgmt.objects.resolve import Objects
from amgmt.objects.transfer import QuietReporter, fetch_to_file
from amgmt.objects.verify import StreamDigests
from amgmt.upload.batch import upload_batch
from amgmt.errors import ConfigError, NotFoundError, ValidationError, VerificationError
from amgmt.models import FileStatus, OperationStatus
from amgmt.parts import MiB
from amgmt.s3 import ByteBudget, ClientOptions, S3Bucket
from amgmt.store import MetadataStore


def listing(root: Path) -> list[str]:
    """Every path under root (links not followed), to prove that nothing was written."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


async def records_of(settings: Any, operation_type: str) -> list[Any]:
    async with MetadataStore(settings.db_path) as store:
        return await store.list_operations(operation_type=operation_type, limit=None)


@pytest.fixture
async def uploaded(make_settings, make_media, snapshot):  # type: ignore[no-untyped-def]
    """`big.bin` (12 MiB: a 3-part object at 5 MiB parts) and a small tree, uploaded; (settings, copy before)."""
    make_media({"big.bin": 12 * MiB, "tree/a.txt": b"alpha", "tree/sub/b.bin": 70_000, "tree/empty/": None})
    before = snapshot()
    settings = make_settings(part_size="5MiB", parts_in_flight=3)
    report = await upload_batch(settings, list_entries(settings)[0])
    assert report.counts() == {"success": 2}, report.to_dict()["failures"]
    return settings, before


async def test_multipart_round_trip_then_extract(uploaded, s3view, files, tmp_path: Path) -> None:
    settings, before = uploaded
    assert s3view.head("big.bin.tar.gz")["ETag"].strip('"').endswith("-3")
    out = tmp_path / "out"
    async with Objects.open(settings, record=True) as objects:
        reporter = QuietReporter()
        got = await objects.download("big.bin", DownloadOptions(dest_dir=out), reporter=reporter)
        assert got.state == DownloadState.DOWNLOADED
        assert got.target.key == "big.bin.tar.gz" and got.target.found_by == "name"
        assert got.verified_by == ("size", "etag", "sha256")
        assert (out / "big.bin.tar.gz").read_bytes() == s3view.get("big.bin.tar.gz")
        assert listing(out) == ["big.bin.tar.gz"]  # the .partial was renamed
        assert reporter.done == reporter.total == s3view.head("big.bin.tar.gz")["ContentLength"]

        # by key, extracted: the tree as it was before the upload
        unpacked = await objects.download("tree.tar.gz", DownloadOptions(dest_dir=out, extract=True))
        assert unpacked.extracted is not None and unpacked.extracted.top_level == ("tree",)
        assert files.tree_of(out / "tree") == files.tree_of(before / "tree")
        assert listing(out) == sorted(["big.bin.tar.gz", "tree", *[f"tree/{p}" for p in listing(before / "tree")]])

    downloads = {r.target_name: r for r in await records_of(settings, "download")}
    big = downloads["big.bin"]
    assert big.status == OperationStatus.SUCCESS and big.target_path == "s3://" + settings.bucket + "/big.bin.tar.gz"
    assert big.result_path == str(out / "big.bin.tar.gz")
    meta = big.metadata
    assert meta["bucket"] == settings.bucket and meta["key"] == "big.bin.tar.gz"
    assert meta["storage_class"] == "STANDARD" and meta["size"] == len(s3view.get("big.bin.tar.gz"))
    assert meta["etag"] == s3view.head("big.bin.tar.gz")["ETag"].strip('"')
    assert meta["local_sha256"] == hashlib.sha256((out / "big.bin.tar.gz").read_bytes()).hexdigest()
    assert meta["local_path"] == str(out / "big.bin.tar.gz") and meta["verified_by"] == ["size", "etag", "sha256"]
    assert downloads["tree"].result_path == str(out / "tree") and downloads["tree"].metadata["extracted"]["files"] == 2


async def test_ranges_are_fetched_concurrently_within_the_byte_budget(make_settings, s3view, tmp_path: Path) -> None:
    data = random.Random(3).randbytes(3 * MiB + 123)
    s3view.put("blob", data)
    budget = ByteBudget(2 * 256 * 1024)
    digests = StreamDigests(None)
    async with S3Bucket.connect(ClientOptions.from_settings(make_settings())) as s3:
        await fetch_to_file(s3, "blob", tmp_path / "blob", size=len(data), etag=None, digests=digests,
                            range_size=256 * 1024, workers=6, budget=budget, reporter=QuietReporter())
    assert (tmp_path / "blob").read_bytes() == data
    assert budget.peak == budget.limit  # two ranges in flight at once, never more
    got = digests.finish()
    assert got.sha256 == hashlib.sha256(data).hexdigest() and got.part_md5s == (hashlib.md5(data).hexdigest(),)


async def test_a_range_cut_short_is_fetched_again(make_settings, s3view, tmp_path: Path) -> None:
    data = random.Random(4).randbytes(MiB + 17)
    s3view.put("blob", data)
    failures: list[int] = []
    async with S3Bucket.connect(ClientOptions.from_settings(make_settings())) as s3:
        real = s3.client.get_object

        class ShortBody:
            async def __aenter__(self) -> ShortBody:
                return self

            async def __aexit__(self, *exc: object) -> None:
                return None

            async def read(self) -> bytes:
                return b"0123456789"

        async def flaky(**kwargs: Any) -> Any:
            offset = int(kwargs["Range"].split("=")[1].split("-")[0])
            resp = await real(**kwargs)
            if offset == 256 * 1024 and len(failures) < 2:  # the second range, twice: a body cut short
                failures.append(offset)
                async with resp["Body"] as body:
                    await body.read()
                resp["Body"] = ShortBody()
            return resp

        s3.client.get_object = flaky  # type: ignore[method-assign]
        digests = StreamDigests(None)
        await fetch_to_file(s3, "blob", tmp_path / "blob", size=len(data), etag=None, digests=digests,
                            range_size=256 * 1024, workers=3, budget=ByteBudget(MiB), reporter=QuietReporter())
    assert failures == [256 * 1024] * 2 and (tmp_path / "blob").read_bytes() == data
    assert digests.finish().sha256 == hashlib.sha256(data).hexdigest()


async def test_an_object_replaced_behind_amgmts_back_is_refused(uploaded, s3view, tmp_path: Path) -> None:
    settings, _ = uploaded
    size = s3view.head("big.bin.tar.gz")["ContentLength"]
    s3view.put("big.bin.tar.gz", random.Random(9).randbytes(size))  # same size, other bytes
    out = tmp_path / "out"
    async with Objects.open(settings, record=True) as objects:
        with pytest.raises(VerificationError, match="replaced after amgmt uploaded it"):
            await objects.download("big.bin", DownloadOptions(dest_dir=out))
    assert listing(out) == []
    [failed] = await records_of(settings, "download")
    assert failed.status == OperationStatus.FAILED and "ETag" in (failed.error_message or "")


async def test_corrupt_bytes_are_detected_after_the_transfer(uploaded, s3view, make_settings, tmp_path: Path) -> None:
    """No record to compare with (another machine's database): the archive SHA-256 the object carries decides,
    after the bytes are in; the partial file goes."""
    settings, _ = uploaded
    head = s3view.head("tree.tar.gz")
    corrupt = bytearray(s3view.get("tree.tar.gz"))
    corrupt[len(corrupt) // 2] ^= 0xFF
    s3view.put("tree.tar.gz", bytes(corrupt), Metadata=head["Metadata"])
    elsewhere = make_settings(part_size="5MiB", db_path=str(tmp_path / "other.db"))
    out = tmp_path / "out"
    async with Objects.open(elsewhere, record=True) as objects:
        with pytest.raises(VerificationError, match="SHA-256 .* the metadata says"):
            await objects.download("tree.tar.gz", DownloadOptions(dest_dir=out, extract=True))
    assert listing(out) == []
    [failed] = await records_of(elsewhere, "download")
    assert failed.status == OperationStatus.FAILED


async def test_a_foreign_multipart_object_is_checked_with_the_servers_part_size(make_settings, s3_client, bucket,
                                                                                 tmp_path: Path) -> None:
    data = random.Random(5).randbytes(5 * MiB + 999)
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key="other/tool.tar.gz")
    parts = []
    for number, chunk in enumerate((data[: 5 * MiB], data[5 * MiB :]), start=1):
        done = s3_client.upload_part(Bucket=bucket, Key="other/tool.tar.gz", UploadId=upload["UploadId"],
                                     PartNumber=number, Body=chunk)
        parts.append({"PartNumber": number, "ETag": done["ETag"]})
    s3_client.complete_multipart_upload(Bucket=bucket, Key="other/tool.tar.gz", UploadId=upload["UploadId"],
                                        MultipartUpload={"Parts": parts})
    async with Objects.open(make_settings(), record=True) as objects:
        got = await objects.download(f"s3://{bucket}/other/tool.tar.gz", DownloadOptions(dest_dir=tmp_path / "o"))
    assert got.verified_by == ("size", "etag") and got.target.upload is None
    assert (tmp_path / "o" / "tool.tar.gz").read_bytes() == data


async def test_existing_files_are_not_overwritten_without_force(uploaded, s3view, files, tmp_path: Path) -> None:
    settings, before = uploaded
    out = tmp_path / "out"
    (out / "tree").mkdir(parents=True)
    (out / "tree" / "a.txt").write_bytes(b"mine")
    (out / "big.bin.tar.gz").write_bytes(b"mine too")
    async with Objects.open(settings, record=True) as objects:
        with pytest.raises(ConfigError, match="tree exists; use --force"):
            await objects.download("tree", DownloadOptions(dest_dir=out, extract=True))
        with pytest.raises(ConfigError, match="big.bin.tar.gz exists; use --force"):
            await objects.download("big.bin", DownloadOptions(dest_dir=out))
        assert (out / "tree" / "a.txt").read_bytes() == b"mine" and (out / "big.bin.tar.gz").read_bytes() == b"mine too"
        assert listing(out) == ["big.bin.tar.gz", "tree", "tree/a.txt"]

        # an empty directory of the entry's name passes the early check; the member check still protects files
        (out / "tree" / "a.txt").unlink()
        (out / "tree" / "sub").mkdir()
        (out / "tree" / "sub" / "b.bin").write_bytes(b"keep")
        with pytest.raises(ConfigError, match="exists; use --force"):
            await objects.download("tree", DownloadOptions(dest_dir=out, extract=True))
        (out / "tree" / "sub" / "b.bin").unlink()
        (out / "tree" / "sub").rmdir()
        (out / "tree" / "a.txt").write_bytes(b"mine")

        forced = await objects.download("tree", DownloadOptions(dest_dir=out, extract=True, force=True))
        assert forced.extracted is not None and forced.extracted.replaced == 1
        assert files.tree_of(out / "tree") == files.tree_of(before / "tree")
        await objects.download("big.bin", DownloadOptions(dest_dir=out, force=True))
        assert (out / "big.bin.tar.gz").read_bytes() == s3view.get("big.bin.tar.gz")
    assert sorted(p.name for p in out.iterdir()) == ["big.bin.tar.gz", "tree"]  # no .partial left anywhere
    assert [r.status for r in await records_of(settings, "download")] == ["success", "success"]  # refusals: no work


async def test_a_name_nobody_uploaded_is_a_clear_error(make_settings, tmp_path: Path) -> None:
    async with Objects.open(make_settings(object_prefix="media"), record=False) as objects:
        with pytest.raises(NotFoundError, match=r"no object at nope, media/nope.tar.gz"):
            await objects.download("nope", DownloadOptions(dest_dir=tmp_path / "o"))
        with pytest.raises(ConfigError, match="not the configured"):
            await objects.status("s3://some-other-bucket/x.tar.gz")
    assert not (tmp_path / "o").exists()


# -- hostile archives ----------------------------------------------------------------------------------------------


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x",
           link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def tar_gz(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return buffer.getvalue()


GOOD = (member("entry", tarfile.DIRTYPE), member("entry/ok.txt", data=b"fine"))
HOSTILE = {
    "dot-dot": (member("entry/../../evil", data=b"owned"), "'..'"),
    "absolute": (member("/tmp/amgmt-absolute-evil", data=b"owned"), "absolute path"),
    "symlink-out": (member("entry/up", tarfile.SYMTYPE, link="../../.."), "link pointing outside"),
    "symlink-absolute": (member("entry/pw", tarfile.SYMTYPE, link="/etc/passwd"), "link to an absolute path"),
    "hardlink-out": (member("entry/h", tarfile.LNKTYPE, link="../victim.txt"), "hard link"),
    "hardlink-to-existing": (member("entry/h", tarfile.LNKTYPE, link="victim.txt"), "hard link"),
    "device": (member("entry/dev", tarfile.CHRTYPE), "device"),
    "fifo": (member("entry/fifo", tarfile.FIFOTYPE), "device or FIFO"),
}


@pytest.fixture
def target_dir(tmp_path: Path) -> Iterator[Path]:
    """A target dir holding a file of the user's, inside a parent that must stay untouched."""
    dest = tmp_path / "parent" / "dest"
    dest.mkdir(parents=True)
    (dest / "victim.txt").write_bytes(b"the user's")
    (tmp_path / "parent" / "victim.txt").write_bytes(b"outside")
    yield dest


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_extraction_refuses_hostile_members(case: str, target_dir: Path, tmp_path: Path) -> None:
    hostile, reason = HOSTILE[case]
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz(*GOOD, hostile))
    parent = target_dir.parent
    before = listing(parent)
    for run in (plan_extraction, extract_archive):
        with pytest.raises(ValidationError, match=reason):
            run(archive, target_dir, force=True)
        assert listing(parent) == before
    assert (target_dir / "victim.txt").read_bytes() == b"the user's" and not Path("/tmp/amgmt-absolute-evil").exists()


def test_extraction_refuses_paths_through_its_own_links_and_duplicates(target_dir: Path, tmp_path: Path) -> None:
    through = tar_gz(*GOOD, member("entry/sub", tarfile.DIRTYPE), member("entry/d", tarfile.SYMTYPE, link="sub"),
                     member("entry/d/x", data=b"via a link"))
    twice = tar_gz(*GOOD, member("entry/ok.txt", data=b"again"))
    for data, reason in ((through, "a link of the archive"), (twice, "second member of the same name")):
        archive = tmp_path / "a.tar.gz"
        archive.write_bytes(data)
        with pytest.raises(ValidationError, match=reason):
            extract_archive(archive, target_dir, force=True)
        assert listing(target_dir) == ["victim.txt"]


def test_force_replaces_an_existing_link_instead_of_writing_through_it(target_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz(*GOOD))
    (target_dir / "entry").mkdir()
    (target_dir / "entry" / "ok.txt").symlink_to(target_dir / "victim.txt")
    with pytest.raises(ConfigError, match="already exist"):
        extract_archive(archive, target_dir, force=False)
    summary = extract_archive(archive, target_dir, force=True)
    assert summary.replaced == 1
    replaced = target_dir / "entry" / "ok.txt"
    assert not replaced.is_symlink() and replaced.read_bytes() == b"fine"
    assert (target_dir / "victim.txt").read_bytes() == b"the user's"
    (target_dir / "entry" / "ok.txt").unlink()
    (target_dir / "entry" / "ok.txt").mkdir()
    with pytest.raises(ConfigError, match="a directory where the archive has a file"):
        extract_archive(archive, target_dir, force=True)


async def test_download_extract_refuses_a_malicious_object(make_settings, s3view, tmp_path: Path) -> None:
    s3view.put("evil.tar.gz", tar_gz(*GOOD, HOSTILE["dot-dot"][0], HOSTILE["absolute"][0],
                                     HOSTILE["symlink-out"][0]))
    before = listing(tmp_path)
    settings = make_settings()
    async with Objects.open(settings, record=True) as objects:
        with pytest.raises(ValidationError, match="3 unsafe member") as refused:
            await objects.download("evil.tar.gz", DownloadOptions(dest_dir=tmp_path / "out", extract=True))
    assert "nothing was extracted" in str(refused.value)
    new = set(listing(tmp_path)) - set(before)
    assert sorted(p for p in new if not p.startswith("media")) == ["out"]  # the target dir itself, empty
    assert listing(tmp_path / "out") == [] and not Path("/tmp/amgmt-absolute-evil").exists()
    [failed] = await records_of(settings, "download")
    assert failed.status == OperationStatus.FAILED and "unsafe" in (failed.error_message or "")


# -- GLACIER -------------------------------------------------------------------------------------------------------


class RestoreClock:
    """moto's restores, driven by the test. moto moves a restore none -> in progress -> restored by its state
    manager, one step once `times` requests reached the object since the last step (the default completes it at
    once). `step()` makes the next request move it one step; `hold()` keeps it where it is."""

    def __init__(self, endpoint_url: str) -> None:
        self.endpoint_url = endpoint_url

    def _post(self, path: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/state-manager/{path}", method="POST",
                                         data=json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 201, answer.status

    def _times(self, times: int) -> None:
        self._post("set-transition", {"model_name": "s3::keyrestore",
                                      "transition": {"progression": "manual", "times": times}})

    def step(self) -> None:
        self._times(1)

    def hold(self) -> None:
        self._times(10**9)

    def reset(self) -> None:
        self._post("unset-transition", {"model_name": "s3::keyrestore"})


@pytest.fixture
def restore_clock(s3_server) -> Iterator[RestoreClock]:  # type: ignore[no-untyped-def]
    clock = RestoreClock(s3_server.endpoint_url)
    try:
        clock.step()
    except OSError as exc:
        pytest.skip(f"not a moto server with a state manager: {exc}")
    yield clock
    clock.reset()


class ReleasingReporter(QuietReporter):
    """Lets the restore finish after the second check, as S3 would some hours later."""

    def __init__(self, clock: RestoreClock) -> None:
        super().__init__()
        self.clock = clock

    def restore_waiting(self, head: Any, waited: float, next_check: float) -> None:
        super().restore_waiting(head, waited, next_check)
        assert head.restore is not None and head.restore.ongoing
        if self.restore_polls == 2:
            self.clock.step()


async def test_a_glacier_object_is_restored_then_downloaded(restore_clock, make_settings, make_media, snapshot,
                                                            s3view, files, tmp_path: Path) -> None:
    make_media({"cold/clip.mov": 300_000})
    before = snapshot()
    settings = make_settings(storage_class="GLACIER")
    assert (await upload_batch(settings, list_entries(settings)[0])).counts() == {"success": 1}
    assert s3view.head("cold.tar.gz")["StorageClass"] == "GLACIER"
    out = tmp_path / "out"
    async with Objects.open(settings, record=True) as objects:
        first = await objects.download("cold", DownloadOptions(dest_dir=out, tier="Bulk", days=2))
        assert first.state == DownloadState.RESTORE_STARTED and first.restore_request == "started"
        assert not out.exists()
        status = await objects.status("cold")  # this HEAD moves the restore to "in progress"; it stays there
        restore_clock.hold()
        assert status.head is not None and status.head.restore is not None and status.head.restore.ongoing
        assert status.head.needs_restore
        assert [op.operation_type for op in status.operations] == ["restore", "upload"]
        assert status.operations[0].metadata.items() >= {"tier": "Bulk", "days": 2, "storage_class": "GLACIER"}.items()

        again = await objects.download("cold", DownloadOptions(dest_dir=out))
        assert again.state == DownloadState.RESTORE_IN_PROGRESS and again.restore_request is None
        assert not out.exists()

        reporter = ReleasingReporter(restore_clock)
        done = await objects.download("cold", DownloadOptions(dest_dir=out, extract=True, wait=True,
                                                              poll_interval=0.05), reporter=reporter)
    assert reporter.restore_polls == 2
    assert done.state == DownloadState.DOWNLOADED and done.head.restore is not None and not done.head.restore.ongoing
    assert done.restore_waited_seconds >= 0.1
    assert files.tree_of(out / "cold") == files.tree_of(before / "cold")
    [download] = await records_of(settings, "download")
    assert download.metadata["storage_class"] == "GLACIER" and download.metadata["restore_expiry"]
    assert len(await records_of(settings, "restore")) == 1  # the later calls found the restore under way


async def test_delete_keeps_the_records_and_marks_them(uploaded, s3view) -> None:
    settings, _ = uploaded
    async with Objects.open(settings, record=True) as objects:
        plan = await objects.plan_delete("tree")
        assert plan.target.key == "tree.tar.gz" and [u.target_name for u in plan.uploads] == ["tree"]
        record = await objects.delete(plan, command_args={"command": "test"})
        assert "tree.tar.gz" not in s3view.keys()
        with pytest.raises(NotFoundError, match=f"amgmt deleted it at .*operation {record.operation_id[:8]}"):
            await objects.plan_delete("tree")
        status = await objects.status("tree")
    assert status.head is None and [op.operation_type for op in status.operations] == ["delete", "upload"]
    upload = status.operations[1]
    assert upload.status == OperationStatus.SUCCESS  # what happened then stays true
    assert upload.s3_file_record.status == FileStatus.DELETED
    assert upload.s3_file_record.tags["deleted_by_operation_id"] == record.operation_id
    assert record.metadata["upload_operation_ids"] == [upload.operation_id]
