"""compress_entry on real files: round trips, determinism, digests, and failure paths that leave no partial file."""

from __future__ import annotations

import base64
import errno
import gzip
import hashlib
import importlib.metadata
import io
import math
import os
import pickle
import random
import shutil
import stat
import subprocess
import tarfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from awscrt import checksums as crt_checksums

from amgmt import checksums
from amgmt.local import archive, archive_file, deflate
from amgmt.local.archive import ArchiveResult, compress_entry, sha256_file
from amgmt.errors import CompressionError

KiB = 1024
MiB = 1024 * KiB
NON_UTF8 = os.fsdecode(b"raw-\xff\xfe-name.bin")
LONG_NAME = "n" * 251 + ".bin"  # 255 bytes: the longest name most file systems allow


def make_file(path: Path, data: bytes = b"", *, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def make_media(tmp_path: Path, name: str = "album") -> Path:
    """A directory with every kind of member compress_entry must handle, plus a file outside it that a link names."""
    root = tmp_path / "src" / name
    make_file(root / "cover.jpg", os.urandom(40 * KiB))
    make_file(root / "disc 1" / "01 intro.flac", os.urandom(20 * KiB), mode=0o600)
    make_file(root / "disc 1" / "café ü.txt", "ünïcode\n".encode())
    make_file(root / "disc 1" / "deep" / "er" / "run.sh", b"#!/bin/sh\n", mode=0o750)
    make_file(root / "empty.txt")
    make_file(root / NON_UTF8, b"bytes that are not utf-8 in the name")
    make_file(root / LONG_NAME, b"long")
    (root / "empty dir").mkdir()
    (root / "disc 1").chmod(0o710)
    outside = make_file(tmp_path / "src" / "outside.txt", b"must not be archived")
    (root / "to-file").symlink_to("cover.jpg")
    (root / "to-dir").symlink_to("disc 1")
    (root / "dangling").symlink_to("nowhere/at/all")
    (root / "loop").symlink_to("loop")
    (root / "outside").symlink_to(outside)
    return root


def compress(source: Path, tmp_path: Path, *, part_size: int = 64 * KiB, name: str = "out", **kw) -> ArchiveResult:
    (tmp_path / "staging").mkdir(exist_ok=True)
    return compress_entry(str(source), str(tmp_path / "staging" / f"{name}.tar.gz"), part_size=part_size, **kw)


def extract(result: ArchiveResult, dest: Path) -> Path:
    with tarfile.open(result.archive_path, "r:gz") as tar:
        tar.extractall(dest, filter="fully_trusted")  # the tree has a link pointing outside on purpose
    return dest


def snapshot(root: Path) -> dict[bytes, tuple[str, int, bytes]]:
    """relpath (from root's parent) -> (kind, mode, bytes or link target) for root and below; no special files."""
    base = os.fsencode(root.parent)
    found: dict[bytes, tuple[str, int, bytes]] = {}
    pending = [os.fsencode(root)]
    while pending:
        path = pending.pop()
        st = os.lstat(path)
        rel = os.path.relpath(path, base)
        if stat.S_ISLNK(st.st_mode):
            found[rel] = ("symlink", 0, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            found[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
            pending.extend(os.path.join(path, n) for n in os.listdir(path))
        elif stat.S_ISREG(st.st_mode):
            found[rel] = ("file", stat.S_IMODE(st.st_mode), Path(os.fsdecode(path)).read_bytes())
    return found


def expected_manifest_sha256(root: Path) -> str:
    """The manifest as documented in compress_entry, rebuilt independently from the source tree."""
    lines = []
    for rel, (kind, _mode, content) in sorted(snapshot(root).items()):
        if kind == "file":
            size, digest = len(content), hashlib.sha256(content).hexdigest().encode()
        else:
            size, digest = 0, content  # link target, or empty for a directory
        lines.append(b"\0".join((rel, kind.encode(), str(size).encode(), digest)) + b"\n")
    return hashlib.sha256(b"".join(lines)).hexdigest()


def assert_no_leftovers(tmp_path: Path) -> None:
    assert list((tmp_path / "staging").iterdir()) == []


def test_file_round_trip(tmp_path: Path) -> None:
    data = os.urandom(150 * KiB)
    source = make_file(tmp_path / "src" / "clip one.mov", data, mode=0o640)

    result = compress(source, tmp_path)

    dest = extract(result, tmp_path / "dest")
    assert os.listdir(dest) == ["clip one.mov"]
    assert (dest / "clip one.mov").read_bytes() == data
    assert stat.S_IMODE((dest / "clip one.mov").stat().st_mode) == 0o640
    assert result.source_sha256 == hashlib.sha256(data).hexdigest()
    assert (result.source_size, result.file_count, result.is_directory, result.skipped) == (len(data), 1, False, ())
    archive_bytes = Path(result.archive_path).read_bytes()
    assert result.archive_size == len(archive_bytes)
    assert result.archive_sha256 == hashlib.sha256(archive_bytes).hexdigest() == sha256_file(result.archive_path)
    assert stat.S_IMODE(os.stat(result.archive_path).st_mode) == 0o600
    assert not os.path.exists(result.archive_path + ".partial")


def test_directory_round_trip(tmp_path: Path) -> None:
    source = make_media(tmp_path)
    os.mkfifo(source / "disc 1" / "pipe")

    result = compress(source, tmp_path)

    dest = extract(result, tmp_path / "dest")
    original = snapshot(source)
    assert snapshot(dest / "album") == original
    assert os.readlink(dest / "album" / "outside") == str(tmp_path / "src" / "outside.txt")
    assert os.path.exists(dest / "album" / os.fsdecode(os.fsencode(NON_UTF8)))
    assert result.skipped == ("album/disc 1/pipe",)
    assert result.is_directory
    assert result.file_count == 7
    assert result.source_size == sum(len(c) for kind, _, c in original.values() if kind == "file")
    assert result.source_sha256 == expected_manifest_sha256(dest / "album")


def test_members_are_relative_sorted_and_anonymous(tmp_path: Path) -> None:
    source = make_media(tmp_path)

    result = compress(Path(str(source) + "/"), tmp_path)  # a trailing slash must not lose the base name

    with tarfile.open(result.archive_path, "r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == "album"
    assert all(n == "album" or n.startswith("album/") for n in names)
    assert not any(n.startswith("/") or ".." in n.split("/") for n in names)
    assert names == sorted(names, key=os.fsencode)
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
    by_name = {m.name: m for m in members}
    assert by_name["album/outside"].issym()
    assert by_name["album/loop"].linkname == "loop"
    assert by_name["album/cover.jpg"].mtime == int(os.stat(source / "cover.jpg").st_mtime)


def test_same_source_gives_identical_bytes_and_mtime_changes_them(tmp_path: Path) -> None:
    source = make_media(tmp_path)

    first = compress(source, tmp_path, name="first")
    second = compress(source, tmp_path, name="second")

    assert Path(first.archive_path).read_bytes() == Path(second.archive_path).read_bytes()
    assert first == ArchiveResult(**{**second.__dict__, "archive_path": first.archive_path})

    st = os.stat(source / "cover.jpg")
    os.utime(source / "cover.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    third = compress(source, tmp_path, name="third")
    assert third.archive_sha256 != first.archive_sha256
    assert third.source_sha256 == first.source_sha256  # the manifest describes content, not timestamps


def test_gzip_header_has_no_timestamp_or_name(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "a.bin", b"x" * 1000)

    result = compress(source, tmp_path)

    head = Path(result.archive_path).read_bytes()[:10]
    assert head[:3] == b"\x1f\x8b\x08"
    assert head[3] == 0  # no FNAME or other optional fields
    assert head[4:8] == b"\0\0\0\0"  # mtime 0
    with gzip.open(result.archive_path) as f:
        assert tarfile.open(fileobj=io.BytesIO(f.read())).getnames() == ["a.bin"]


@pytest.mark.skipif(shutil.which("gzip") is None, reason="no gzip command")
def test_gzip_command_accepts_archive(tmp_path: Path) -> None:
    result = compress(make_media(tmp_path), tmp_path)

    subprocess.run(["gzip", "-t", result.archive_path], check=True)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_every_level_is_ordinary_gzip(tmp_path: Path, level: int) -> None:
    data = b"media " * 10_000
    source = make_file(tmp_path / "src" / "a.txt", data)

    result = compress(source, tmp_path, level=level)

    with tarfile.open(result.archive_path, "r:gz") as tar:
        assert tar.extractfile("a.txt").read() == data  # type: ignore[union-attr]


def test_part_md5s_are_md5s_of_each_slice(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "a.bin", os.urandom(300 * KiB))
    part_size = 64 * KiB

    result = compress(source, tmp_path, part_size=part_size)

    data = Path(result.archive_path).read_bytes()
    assert len(result.part_md5s) == math.ceil(len(data) / part_size) == 5
    slices = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    assert list(result.part_md5s) == [hashlib.md5(s).hexdigest() for s in slices]


@pytest.mark.parametrize("part_size", [64 * KiB, 1000, 10 * MiB])
def test_part_crc64nvmes_and_the_whole_archives_in_the_same_pass(tmp_path: Path, part_size: int) -> None:
    # The x-amz-checksum-crc64nvme of each part and S3's FULL_OBJECT CRC64NVME of the archive (combined from the
    # parts', not computed again), at the same boundaries as the part MD5s.
    source = make_file(tmp_path / "src" / "a.bin", os.urandom(300 * KiB))

    result = compress(source, tmp_path, part_size=part_size)

    data = Path(result.archive_path).read_bytes()
    slices = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    assert list(result.part_crc64nvmes) == [checksums.of_bytes("crc64nvme", s) for s in slices]
    assert len(result.part_crc64nvmes) == len(result.part_md5s)
    expected = base64.b64encode(crt_checksums.crc64nvme(data).to_bytes(8, "big")).decode()
    assert result.archive_crc64nvme == expected


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_part_boundaries_at_the_archive_end(tmp_path: Path, delta: int) -> None:
    source = make_file(tmp_path / "src" / "a.bin", os.urandom(10 * KiB))
    size = compress(source, tmp_path, name="probe").archive_size
    part_size = size + delta

    result = compress(source, tmp_path, part_size=part_size)

    data = Path(result.archive_path).read_bytes()
    slices = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    assert list(result.part_md5s) == [hashlib.md5(s).hexdigest() for s in slices]
    assert len(result.part_md5s) == (2 if delta < 0 else 1)


def test_part_size_of_one_byte(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "tiny.txt", b"tiny")

    result = compress(source, tmp_path, part_size=1)

    data = Path(result.archive_path).read_bytes()
    assert list(result.part_md5s) == [hashlib.md5(data[i : i + 1]).hexdigest() for i in range(len(data))]


def test_empty_directory_and_empty_file(tmp_path: Path) -> None:
    empty_dir = tmp_path / "src" / "nothing"
    empty_dir.mkdir(parents=True)
    empty_file = make_file(tmp_path / "src" / "zero.bin")

    dir_result = compress(empty_dir, tmp_path, name="d")
    file_result = compress(empty_file, tmp_path, name="f")

    assert (dir_result.file_count, dir_result.source_size) == (0, 0)
    assert dir_result.source_sha256 == hashlib.sha256(b"nothing\0dir\x000\0\n").hexdigest()
    assert file_result.source_sha256 == hashlib.sha256(b"").hexdigest()
    dest = extract(dir_result, tmp_path / "d")
    extract(file_result, dest)
    assert os.listdir(dest / "nothing") == []
    assert (dest / "zero.bin").read_bytes() == b""


def test_link_to_outside_is_stored_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "src" / "clip"
    make_file(root / "a.txt", b"a")
    secret = make_file(tmp_path / "secret.bin", b"s" * 5000)
    (root / "escape").symlink_to(secret)
    (root / "escape-dir").symlink_to(tmp_path)

    result = compress(root, tmp_path)

    with tarfile.open(result.archive_path, "r:gz") as tar:
        links = {m.name: m.linkname for m in tar if m.issym()}
        assert b"s" * 5000 not in b"".join(tar.extractfile(m).read() for m in tar if m.isfile())  # type: ignore
    assert links == {"clip/escape": str(secret), "clip/escape-dir": str(tmp_path)}
    assert (result.file_count, result.source_size) == (1, 1)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "missing"])
def test_source_that_is_not_a_file_or_directory_fails(tmp_path: Path, kind: str) -> None:
    source = tmp_path / "src" / "entry"
    source.parent.mkdir()
    if kind == "symlink":
        source.symlink_to(make_file(tmp_path / "real.bin", b"x"))
    elif kind == "fifo":
        os.mkfifo(source)

    with pytest.raises(CompressionError) as caught:
        compress(source, tmp_path)

    assert caught.value.path == str(source)
    assert str(source) in str(caught.value)
    assert_no_leftovers(tmp_path)


def patch_first_read(monkeypatch: pytest.MonkeyPatch, action) -> None:  # type: ignore[no-untyped-def]
    """Run `action(path)` on the real file just after compress_entry's first read of it."""
    original = archive._DigestingReader.readinto
    done: set[str] = set()

    def readinto(self: archive._DigestingReader, view: memoryview) -> int:
        n = original(self, view)
        if self._path not in done:
            done.add(self._path)
            action(self._path)
        return n

    monkeypatch.setattr(archive._DigestingReader, "readinto", readinto)


def patch_nth_read(monkeypatch: pytest.MonkeyPatch, number: int, action) -> None:  # type: ignore[no-untyped-def]
    """Run `action(path)` just before compress_entry's `number`-th read (counted over all files)."""
    original = archive._DigestingReader.readinto
    reads = 0

    def readinto(self: archive._DigestingReader, view: memoryview) -> int:
        nonlocal reads
        reads += 1
        if reads == number:
            action(self._path)
        return original(self, view)

    monkeypatch.setattr(archive._DigestingReader, "readinto", readinto)


def append(path: str) -> None:
    with open(path, "ab") as f:
        f.write(b"more")


def truncate(path: str) -> None:
    os.truncate(path, 1)


def retouch(path: str) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))


@pytest.mark.parametrize("change", [append, truncate, retouch])
def test_file_changing_while_read_fails_and_leaves_no_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change
) -> None:  # type: ignore[no-untyped-def]
    source = make_media(tmp_path)
    patch_first_read(monkeypatch, lambda p: change(p) if p.endswith("cover.jpg") else None)

    with pytest.raises(CompressionError, match="changed while being compressed") as caught:
        compress(source, tmp_path)

    assert str(source / "cover.jpg") in str(caught.value)
    assert caught.value.path == str(source)
    assert_no_leftovers(tmp_path)


def test_file_vanishing_after_the_walk_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_media(tmp_path)
    original = archive._add_file

    def add_file(tar: tarfile.TarFile, member: str, path: str, entry: str) -> tuple[str, int]:
        if path.endswith("empty.txt"):
            os.unlink(path)
        return original(tar, member, path, entry)

    monkeypatch.setattr(archive, "_add_file", add_file)

    with pytest.raises(CompressionError, match=r"empty\.txt vanished"):
        compress(source, tmp_path)
    assert_no_leftovers(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_fails(tmp_path: Path) -> None:
    source = make_media(tmp_path)
    (source / "cover.jpg").chmod(0)

    with pytest.raises(CompressionError, match=r"cannot read .*cover\.jpg: Permission denied"):
        compress(source, tmp_path)
    assert_no_leftovers(tmp_path)


def test_odd_names_in_errors_stay_on_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "src" / "odd"
    make_file(source / "new\nline", b"x")
    make_file(source / NON_UTF8, b"x")
    patch_first_read(monkeypatch, append)

    with pytest.raises(CompressionError) as caught:
        compress(source, tmp_path)

    message = str(caught.value)
    assert "\n" not in message
    message.encode("utf-8")  # no lone surrogates


def test_keyboard_interrupt_removes_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(path: str) -> None:
        assert os.path.exists(tmp_path / "staging" / "out.tar.gz.partial")
        raise KeyboardInterrupt

    patch_first_read(monkeypatch, interrupt)

    with pytest.raises(KeyboardInterrupt):
        compress(make_media(tmp_path), tmp_path)
    assert_no_leftovers(tmp_path)


class _FullDisk(io.FileIO):
    def write(self, b: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_staging_disk_while_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = open

    def open_full_disk(file, mode="r", buffering=-1, *args, **kwargs):  # type: ignore[no-untyped-def]
        if mode == "wb":
            return io.BufferedWriter(_FullDisk(file, "wb"), buffer_size=64 * KiB)
        return real_open(file, mode, buffering, *args, **kwargs)

    monkeypatch.setattr(archive_file, "open", open_full_disk, raising=False)
    source = make_file(tmp_path / "src" / "a.bin", os.urandom(500 * KiB))

    with pytest.raises(CompressionError, match="no space left on device in staging dir .*staging"):
        compress(source, tmp_path)
    assert_no_leftovers(tmp_path)


def test_full_staging_disk_reported_at_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Network file systems may report a full disk only when the file is closed.
    real_close = io.FileIO.close

    class FullAtClose(io.FileIO):
        def close(self) -> None:
            was_open = not self.closed
            real_close(self)
            if was_open:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def opener(fd: int, mode: str, buffering: int = -1) -> io.FileIO:
        return FullAtClose(fd, mode) if "w" in mode else io.FileIO(fd, mode)  # the archive, not the sources

    monkeypatch.setattr(archive_file, "open", opener, raising=False)

    with pytest.raises(CompressionError, match="no space left on device in staging dir"):
        compress(make_file(tmp_path / "src" / "a.bin", b"abc"), tmp_path)
    assert_no_leftovers(tmp_path)


def test_stale_partial_from_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "a.bin", b"fresh")
    make_file(tmp_path / "staging" / "out.tar.gz.partial", b"junk from before", mode=0o666)

    result = compress(source, tmp_path)

    assert os.listdir(tmp_path / "staging") == ["out.tar.gz"]
    assert stat.S_IMODE(os.stat(result.archive_path).st_mode) == 0o600


def test_results_and_errors_survive_pickling(tmp_path: Path) -> None:
    result = compress(make_media(tmp_path), tmp_path)
    assert pickle.loads(pickle.dumps(result)) == result

    with pytest.raises(CompressionError) as caught:
        compress(tmp_path / "src" / "missing", tmp_path)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is CompressionError
    assert (str(copy), copy.path, copy.stage) == (str(caught.value), str(tmp_path / "src" / "missing"), "compress")


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "a.bin", b"x")
    with pytest.raises(ValueError, match="level"):
        compress(source, tmp_path, level=4)
    with pytest.raises(ValueError, match="part_size"):
        compress(source, tmp_path, part_size=0)


# Multi-block archives: the tar stream is deflated in blocks of deflate._BLOCK_SIZE (1 MiB); the tests shrink the
# blocks so that small sources span many, and run with and without the helper threads.
BLOCK = 64 * KiB


@dataclass
class Blocks:
    threaded: bool  # helper threads allowed
    starts: list[None]  # one item per start of the helper threads

    def check(self, *, long_enough: bool = True) -> None:
        """The helper threads ran if allowed and the source was long enough, and are gone."""
        assert bool(self.starts) == (self.threaded and long_enough)
        assert helper_threads() == []


@pytest.fixture(params=["threaded", "inline"])
def small_blocks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Blocks:
    """64 KiB blocks, and helper threads for sources of 2 blocks or more, or none."""
    monkeypatch.setattr(deflate, "_BLOCK_SIZE", BLOCK)
    monkeypatch.setattr(deflate, "_THREADS_MIN_SIZE", 2 * BLOCK)
    monkeypatch.setattr(archive, "_usable_cpus", lambda: 2)  # threads even on a one-CPU test machine
    monkeypatch.setattr(archive, "_HELPER_THREADS", request.param == "threaded")
    blocks = Blocks(request.param == "threaded", [])
    start_threads = deflate.Deflater._start_threads
    monkeypatch.setattr(deflate.Deflater, "_start_threads", lambda self: blocks.starts.append(start_threads(self)))
    return blocks


def mixed_data(size: int, seed: int = 0) -> bytes:
    """Compressible text interleaved with random runs: both kinds of deflate block, within every block."""
    text = b"".join(b"frame %d of the media file, seed %d\n" % (i, seed) for i in range(size // 30 + 1))
    noise = os.urandom(size)
    out = bytearray()
    while len(out) < size:
        out += text[len(out) : len(out) + 7000] + noise[len(out) : len(out) + 3000]
    return bytes(out[:size])


def helper_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("amgmt-")]


def tarfile_stream(root: Path) -> bytes:
    """The tar stream tarfile.addfile itself writes for the same members (what compress_entry must reproduce)."""
    buf = io.BytesIO()
    with tarfile.TarFile(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        if root.is_dir():
            members = archive._walk(str(root), root.name, [], entry=str(root))
        else:
            members = [(b"", root.name, str(root), os.lstat(root))]
        for _key, member, path, st in sorted(members, key=lambda m: m[0]):
            if stat.S_ISDIR(st.st_mode):
                tar.addfile(archive._tarinfo(member, st, tarfile.DIRTYPE))
            elif stat.S_ISLNK(st.st_mode):
                info = archive._tarinfo(member, st, tarfile.SYMTYPE)
                info.linkname = os.readlink(path)
                tar.addfile(info)
            else:
                info = archive._tarinfo(member, st, tarfile.REGTYPE)
                info.size = st.st_size
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    return buf.getvalue()


def test_tar_stream_is_what_tarfile_writes(tmp_path: Path) -> None:
    source = make_media(tmp_path)
    make_file(source / "big.bin", mixed_data(3 * 1024 * KiB + 123))
    make_file(source / "pax" / ("ü" * 60 + ".txt"), b"a name that needs a PAX header")

    result = compress(source, tmp_path)
    single = compress(source / "big.bin", tmp_path, name="single")

    assert gzip.decompress(Path(result.archive_path).read_bytes()) == tarfile_stream(source)
    assert gzip.decompress(Path(single.archive_path).read_bytes()) == tarfile_stream(source / "big.bin")


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_threads_do_not_change_the_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, level: int) -> None:
    monkeypatch.setattr(deflate, "_BLOCK_SIZE", BLOCK)
    monkeypatch.setattr(deflate, "_THREADS_MIN_SIZE", 2 * BLOCK)
    monkeypatch.setattr(archive, "_usable_cpus", lambda: 2)
    source = make_file(tmp_path / "src" / "clip.mov", mixed_data(20 * BLOCK + 777))
    started = []
    start_threads = deflate.Deflater._start_threads
    monkeypatch.setattr(deflate.Deflater, "_start_threads", lambda self: started.append(start_threads(self)))
    results = {}
    for threaded in (True, False):
        monkeypatch.setattr(archive, "_HELPER_THREADS", threaded)
        results[threaded] = compress(source, tmp_path, name=f"t{threaded}", level=level)
        assert len(started) == 1  # the threaded run started them, the inline one did not

    data = Path(results[True].archive_path).read_bytes()
    assert data == Path(results[False].archive_path).read_bytes()
    assert results[True] == ArchiveResult(**{**results[False].__dict__, "archive_path": results[True].archive_path})
    assert gzip.decompress(data) == tarfile_stream(source)


RECORD = tarfile.RECORDSIZE


# Tar stream lengths (whole 10 KiB records): one short block; ending on a block boundary (5 blocks = 32 records);
# a last block nearly full; a last block of one record, and of 2 KiB (shorter than deflate's 32 KiB window).
@pytest.mark.parametrize("tar_size", [RECORD, 5 * BLOCK, 5 * BLOCK - RECORD, 5 * BLOCK + RECORD, 45 * RECORD])
@pytest.mark.parametrize("slack", [1536, 10239])
def test_streams_ending_near_a_block_boundary(tmp_path: Path, small_blocks: Blocks, tar_size: int, slack: int) -> None:
    # A file of n bytes makes a tar stream of 512 + n rounded up to 512, + 1024, rounded up to 10240: with
    # n = tar_size - slack for slack from 1536 to 10239 (to 11775 but for the first record), exactly tar_size.
    size = tar_size - slack
    data = mixed_data(size, seed=size)
    source = make_file(tmp_path / "src" / "a.bin", data)

    result = compress(source, tmp_path, part_size=5 * KiB + 3)

    archive_bytes = Path(result.archive_path).read_bytes()
    with gzip.open(result.archive_path) as f:
        tar_bytes = f.read()  # checks the CRC and length in the trailer
    assert len(tar_bytes) == tar_size
    assert tar_bytes == tarfile_stream(source)
    raw = zlib.decompressobj(-zlib.MAX_WBITS)
    assert raw.decompress(archive_bytes[10:]) == tar_bytes
    assert raw.unused_data == archive_bytes[-8:]  # one deflate stream, then the trailer: no second gzip member
    assert result.archive_sha256 == hashlib.sha256(archive_bytes).hexdigest()
    slices = [archive_bytes[i : i + result.part_size] for i in range(0, len(archive_bytes), result.part_size)]
    assert list(result.part_md5s) == [hashlib.md5(s).hexdigest() for s in slices]
    assert result.source_sha256 == hashlib.sha256(data).hexdigest()
    small_blocks.check(long_enough=tar_size > BLOCK)


def test_multi_block_directory_round_trip(tmp_path: Path, small_blocks: Blocks) -> None:
    source = make_media(tmp_path)
    for i in range(12):
        make_file(source / "logs" / f"{i:02d}.log", mixed_data(i * 9 * KiB + 5, seed=i))

    result = compress(source, tmp_path)
    again = compress(source, tmp_path, name="again")

    assert Path(result.archive_path).read_bytes() == Path(again.archive_path).read_bytes()
    dest = extract(result, tmp_path / "dest")
    assert snapshot(dest / "album") == snapshot(source)
    assert result.source_sha256 == expected_manifest_sha256(dest / "album")
    if shutil.which("gzip"):
        subprocess.run(["gzip", "-t", result.archive_path], check=True)
    small_blocks.check()


def test_file_changing_mid_stream_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: Blocks) -> None:
    source = make_file(tmp_path / "src" / "clip.mov", mixed_data(30 * BLOCK))
    patch_nth_read(monkeypatch, 10, lambda path: os.truncate(path, 5 * BLOCK))

    with pytest.raises(CompressionError, match="changed while being compressed"):
        compress(source, tmp_path)
    assert_no_leftovers(tmp_path)
    small_blocks.check()


def test_keyboard_interrupt_mid_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: Blocks) -> None:
    source = make_file(tmp_path / "src" / "clip.mov", mixed_data(30 * BLOCK))

    def interrupt(path: str) -> None:
        raise KeyboardInterrupt

    patch_nth_read(monkeypatch, 12, interrupt)

    with pytest.raises(KeyboardInterrupt):
        compress(source, tmp_path)
    assert_no_leftovers(tmp_path)
    small_blocks.check()


def test_full_disk_mid_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: Blocks) -> None:
    real_open = open

    class FillsUp(io.FileIO):
        written = 0

        def write(self, b: object) -> int:
            if FillsUp.written > 4 * BLOCK:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            n = super().write(b)  # type: ignore[arg-type]
            FillsUp.written += n or 0
            return n  # type: ignore[return-value]

    def open_filling(file, mode="r", buffering=-1, *args, **kwargs):  # type: ignore[no-untyped-def]
        if mode == "wb":
            return FillsUp(file, "wb")
        return real_open(file, mode, buffering, *args, **kwargs)

    monkeypatch.setattr(archive_file, "open", open_filling, raising=False)
    source = make_file(tmp_path / "src" / "a.bin", os.urandom(40 * BLOCK))

    with pytest.raises(CompressionError, match="no space left on device in staging dir"):
        compress(source, tmp_path)
    assert_no_leftovers(tmp_path)
    small_blocks.check()


def test_deflate_error_is_raised_in_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: Blocks
) -> None:
    original = deflate.Deflater._deflate
    calls = 0

    def failing_deflate(self: deflate.Deflater, data: memoryview, window: bytes) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 6:
            raise MemoryError("no room for a block")
        return original(self, data, window)

    monkeypatch.setattr(deflate.Deflater, "_deflate", failing_deflate)
    source = make_file(tmp_path / "src" / "a.bin", mixed_data(25 * BLOCK))

    with pytest.raises(MemoryError, match="no room for a block"):
        compress(source, tmp_path)
    assert_no_leftovers(tmp_path)
    small_blocks.check()


@pytest.mark.parametrize(
    ("cpus", "siblings", "size", "threads"),
    [(1, [], 5, False), (2, [], 5, True), (2, [], 3, False), (2, ["other.tar.gz.partial"], 5, False),
     (2, ["stale.tar.gz.partial"], 5, True), (2, ["done.tar.gz"], 5, True),
     (4, ["a.tar.gz.partial", "b.tar.gz.partial"], 5, True),
     (4, ["a.tar.gz.partial", "b.tar.gz.partial", "c.tar.gz.partial"], 5, False)],
)
@pytest.mark.parametrize("as_directory", [False, True])
def test_helper_threads_only_with_a_cpu_to_spare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpus: int, siblings: list[str], size: int, threads: bool,
    as_directory: bool,
) -> None:
    monkeypatch.setattr(deflate, "_BLOCK_SIZE", BLOCK)
    monkeypatch.setattr(deflate, "_THREADS_MIN_SIZE", 4 * BLOCK)  # sources of 3 blocks stay inline
    monkeypatch.setattr(archive, "_usable_cpus", lambda: cpus)
    for name in siblings:  # other compressions in the same staging dir; a stale one was left by a killed worker
        sibling = make_file(tmp_path / "staging" / name, b"partial")
        if name.startswith("stale"):
            os.utime(sibling, (1, 1))
    started = []
    start_threads = deflate.Deflater._start_threads
    monkeypatch.setattr(deflate.Deflater, "_start_threads", lambda self: started.append(start_threads(self)))
    if as_directory:
        source = tmp_path / "src" / "dir"
        for i in range(size):
            make_file(source / f"{i}.bin", mixed_data(BLOCK, seed=i))
    else:
        source = make_file(tmp_path / "src" / "a.bin", mixed_data(size * BLOCK))

    result = compress(source, tmp_path)

    assert len(started) == threads
    assert gzip.decompress(Path(result.archive_path).read_bytes()) == tarfile_stream(source)


def test_incompressible_blocks_are_stored_not_deflated(tmp_path: Path) -> None:
    # Random bytes (video-like) between two runs of text: the random 1 MiB blocks go out as stored deflate blocks
    # (archive barely bigger than the source, no inflation), the text still shrinks, and every reader agrees.
    text = b"2024-01-01T00:00:00,sensor-7,21.5,ok\n" * 60_000  # ~2.2 MiB
    noise = os.urandom(5 * 1024 * KiB)
    source = make_file(tmp_path / "clip.mp4", text + noise + text)
    result = compress_entry(str(source), str(tmp_path / "clip.tar.gz"), part_size=8 * 1024 * KiB)
    archive_path = tmp_path / "clip.tar.gz"
    assert result.archive_size < len(noise) + len(text) // 10  # text compressed, noise not inflated
    assert result.archive_size > len(noise)
    with tarfile.open(archive_path) as tar:
        assert tar.extractfile("clip.mp4").read() == source.read_bytes()  # type: ignore[union-attr]
    subprocess.run(["gzip", "-t", str(archive_path)], check=True)
    out = subprocess.run(["tar", "-xzOf", str(archive_path)], check=True, capture_output=True).stdout
    assert hashlib.sha256(out).hexdigest() == result.source_sha256
    again = compress_entry(str(source), str(tmp_path / "again.tar.gz"), part_size=8 * 1024 * KiB)
    assert again.archive_sha256 == result.archive_sha256  # the choice depends on the content only


def test_stored_blocks_are_valid_deflate_in_isolation() -> None:
    data = memoryview(os.urandom(3 * 65_535 + 17))
    stream = deflate._stored_blocks(data) + deflate._FINAL_BLOCK
    assert zlib.decompress(stream, wbits=-zlib.MAX_WBITS) == bytes(data)
    assert deflate._incompressible(data) and deflate._incompressible(memoryview(os.urandom(1024 * KiB)))
    assert not deflate._incompressible(memoryview(b"abc" * 400_000))
    assert not deflate._incompressible(memoryview(os.urandom(64 * KiB)))  # too short to judge: deflated


# --- isal: the private block compressor and the bytes it gives ------------------------------------------------------
# deflate.block_compressor uses isal_zlib._ParallelCompress (private): the public compressobj(zdict=...) writes other
# bytes for some blocks, and archive bytes must not change (a resume compares part MD5s). These two tests fail with a
# clear message when an isal upgrade removes or changes the class, or changes the bytes.

PINNED_ARCHIVES = {  # level -> SHA-256 of compress_entry(pinned_source) with the isal pinned in pyproject.toml
    0: "c5f112ace34c610e62369eaf60561d4f2f67e5e705120d4b3c253afafe860ae2",
    1: "2d4ad66e74b7bf2e3ea5a29356c62510fe93524f781ff629bc5a3c13c70a8980",
    3: "7ea26bef3bcfd7c370d550a39fa34d110f1255016c17fd4f75c53419532b43aa",
}


def test_isal_private_block_compressor_is_there_as_expected() -> None:
    from isal import isal_zlib

    installed = importlib.metadata.version("isal")
    assert hasattr(isal_zlib, "_ParallelCompress"), (
        f"isal {installed} has no isal_zlib._ParallelCompress, which amgmt.local.deflate needs (private API):"
        " pin isal back to the range in pyproject.toml"
    )
    data = b"frame 0001 of the clip\n" * 3000
    window = b"dictionary: the 32 KiB before the block " * 10
    try:
        compressed, crc = deflate.block_compressor(64 * KiB, 1).compress_and_crc(data, window)
    except (TypeError, RuntimeError) as exc:
        pytest.fail(f"isal {installed}: _ParallelCompress(buffersize=, level=).compress_and_crc(data, zdict) changed:"
                    f" {exc}")
    assert crc == zlib.crc32(data), f"isal {installed}: compress_and_crc no longer returns the CRC32 of its input"
    assert compressed.endswith(b"\x00\x00\xff\xff"), f"isal {installed}: the block no longer ends in a sync flush"
    inflate = zlib.decompressobj(wbits=-zlib.MAX_WBITS, zdict=window)
    assert inflate.decompress(compressed) == data, f"isal {installed}: the block is not deflate primed with zdict"


def test_missing_private_block_compressor_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(deflate.isal_zlib, "_ParallelCompress")
    with pytest.raises(RuntimeError, match="private block compressor of isal.*pinned in amgmt's pyproject.toml"):
        deflate.block_compressor(64 * KiB, 1)


@pytest.mark.parametrize("level", sorted(PINNED_ARCHIVES))
def test_archive_bytes_are_those_of_the_pinned_isal(tmp_path: Path, level: int) -> None:
    result = compress_entry(str(pinned_source(tmp_path)), str(tmp_path / "out.tar.gz"), part_size=1 << 20,
                            level=level)
    assert result.archive_sha256 == PINNED_ARCHIVES[level], (
        f"isal {importlib.metadata.version('isal')} writes other archive bytes than the pinned one: resumed uploads"
        " would not reuse their parts; keep isal in the range pinned in pyproject.toml, or update PINNED_ARCHIVES"
        " knowingly"
    )


def pinned_source(root: Path) -> Path:
    """A directory whose archive must never change: fixed contents (text and random runs), modes and times."""
    rng = random.Random(7)
    text = b"".join(b"%06d frame of the pinned clip, exposure %d\n" % (i, i % 97) for i in range(40_000))
    entry = root / "shoot"
    files = {"a/clip.bin": text[:900_000] + rng.randbytes(1_300_000) + text[900_000:], "b.txt": text[:70_000],
             "empty": b""}
    for relative, data in files.items():
        make_file(entry / relative, data)
    (entry / "link").symlink_to("b.txt")
    for path in [*sorted(entry.rglob("*"), reverse=True), entry]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    return entry


def test_a_directorys_member_list_is_what_the_archive_holds(tmp_path: Path) -> None:
    """The member list (search, download --member) names every archived member, in archive order, with the kind, size
    and mtime of its tar header; special files are left out of it as out of the archive; a file entry has none."""
    source = make_media(tmp_path)
    os.mkfifo(source / "disc 1" / "pipe")

    result = compress(source, tmp_path)

    with tarfile.open(result.archive_path, "r:gz") as tar:
        headers = tar.getmembers()
    kind = {tarfile.REGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink"}
    assert list(result.members) == [
        (m.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"), kind[m.type], m.size, m.mtime)
        for m in headers
    ]
    assert any("\\x" in path for path, *_ in result.members), "an undecodable name is kept as record text"
    assert not any(path.endswith("pipe") for path, *_ in result.members)
    single = compress(make_file(tmp_path / "src" / "clip.mov", b"x" * 10), tmp_path)
    assert single.members == ()


def test_without_md5_the_same_archive_and_crcs_come_out_and_no_md5_is_computed(tmp_path: Path) -> None:
    src = tmp_path / "clip.bin"
    src.write_bytes(random.Random(5).randbytes(3 * 1024 * 1024 + 77))
    with_md5 = compress_entry(str(src), str(tmp_path / "a.tar.gz"), part_size=1024 * 1024)
    without = compress_entry(str(src), str(tmp_path / "b.tar.gz"), part_size=1024 * 1024, md5=False)

    assert without.part_md5s == () and len(with_md5.part_md5s) == with_md5.part_count == 4
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert (without.part_crc64nvmes, without.archive_crc64nvme, without.archive_sha256) == (
        with_md5.part_crc64nvmes, with_md5.archive_crc64nvme, with_md5.archive_sha256)
    # Each step's CPU time is measured; the MD5 step exists only where MD5s were computed.
    assert "md5" not in without.cpu_seconds and with_md5.cpu_seconds["md5"] > 0
    for step in ("read source", "sha256 source", "deflate", "crc64nvme", "sha256 archive", "write staging"):
        assert without.cpu_seconds.get(step, 0) > 0, step
    # An archive that needs its MD5s afterwards gets the very ones the packing pass would have given.
    assert archive.part_md5s(without.archive_path, without.part_size) == with_md5.part_md5s


def test_part_md5s_of_a_file_split_on_part_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = random.Random(1).randbytes(10_000)
    path.write_bytes(data)
    assert archive.part_md5s(str(path), 4096) == tuple(
        hashlib.md5(data[i : i + 4096]).hexdigest() for i in range(0, len(data), 4096))
    assert archive.part_md5s(str(path), 10_000, chunk=3000) == (hashlib.md5(data).hexdigest(),)
    path.write_bytes(b"")
    assert archive.part_md5s(str(path), 4096) == (hashlib.md5(b"").hexdigest(),)
