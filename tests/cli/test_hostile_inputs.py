"""Hostile inputs, as one table: each case sets up a local dir, runs `amgmt` (or, where only the library can reach
the moment, `upload_batch`), and must end with the documented exit code, one clear line or a per-entry reason, no
traceback, no AWS secret anywhere, and nothing lost: every original is still in the local dir, or it is in the
completed dir and its archive in the bucket holds the very same bytes."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import gzip
import hashlib
import http.server
import inspect
import io
import json
import os
import random
import re
import select
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
import threading
import unicodedata
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest

from amgmt.upload import batch
from amgmt.local.archive import ArchiveResult
from amgmt.local.entries import list_entries
from amgmt.upload.batch import upload_batch
from amgmt.upload.report import BatchReport
from amgmt.cli.common import summary_text
from amgmt.bench.localserver import free_port
from amgmt.naming import object_key
from amgmt.upload.compressor import CompressionPool, Compressor
from amgmt.config import Settings
from amgmt.store import MetadataStore
from clikit import SECRET, snapshot

OUTSIDE_BYTES = b"OUTSIDE-THE-LOCAL-DIR-must-never-be-archived-4b1d"
IS_ROOT = os.geteuid() == 0


# -- the world a case runs in ---------------------------------------------------------------------------------


@dataclass
class World:
    tmp: Path
    local: Path
    bucket: str
    endpoint: str
    s3: Any
    cli_env: dict[str, str]
    make_settings: Callable[..., Settings]
    monkeypatch: pytest.MonkeyPatch
    env: dict[str, str] = field(default_factory=dict)  # on top of the CLI's environment
    command_prefix: list[str] = field(default_factory=list)  # run before `python -m amgmt` (setpriv)
    route: str = "cli"
    completed: Path | None = None
    staging: Path | None = None
    db: Path | None = None
    changed_on_purpose: set[str] = field(default_factory=set)  # entries the case itself alters or removes
    secret_files: set[Path] = field(default_factory=set)  # files the case wrote the marker into on purpose
    before_run: list[Callable[[], None]] = field(default_factory=list)  # after the snapshots of the disk
    after_run: list[Callable[[], None]] = field(default_factory=list)
    teardown: list[Callable[[], None]] = field(default_factory=list)

    @property
    def completed_dir(self) -> Path:
        return self.completed or self.local / "completed"

    @property
    def db_path(self) -> Path:
        return self.db or self.completed_dir / ".metadata" / "operations.db"

    @property
    def staging_dir(self) -> Path:
        return self.staging or self.db_path.parent / "staging"

    def file(self, rel: str | bytes, data: bytes | int = b"x") -> Path:
        path = self.local / os.fsdecode(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(random.Random(os.fsencode(rel)).randbytes(data) if isinstance(data, int) else data)
        return path

    def outside(self) -> Path:
        """{tmp}/outside/secret.txt and {tmp}/outside/dir/inner.txt, which no archive may ever hold."""
        out = self.tmp / "outside"
        (out / "dir").mkdir(parents=True, exist_ok=True)
        (out / "secret.txt").write_bytes(OUTSIDE_BYTES)
        (out / "dir" / "inner.txt").write_bytes(OUTSIDE_BYTES + b"-inner")
        (self.tmp / "outside.mp4").write_bytes(OUTSIDE_BYTES)
        return out

    def keys(self) -> list[str]:
        return sorted(o["Key"] for o in self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", []))

    def object_bytes(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def members(self, key: str) -> dict[str, tarfile.TarInfo]:
        with _open_tar(self.object_bytes(key)) as tar:
            return {m.name: m for m in tar.getmembers()}

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)) as db:
            return db.execute(sql).fetchall()


ENTRY_LINE = re.compile(r"^(success|partial|failed|skipped|changed|cancelled) +\S")  # progress_bar.finished_line


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    route: str

    def __str__(self) -> str:
        return f"[{self.route}] exit {self.code}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"

    @property
    def stderr_lines(self) -> list[str]:
        """stderr without the line per finished entry that a run without a terminal prints (the cases check what
        else it says: errors, warnings, notes)."""
        return [line for line in self.stderr.splitlines() if not ENTRY_LINE.match(line)]


Setup = Callable[[World], Awaitable[None] | None]
Library = Callable[[World], Awaitable[BatchReport]]
Check = Callable[[World, Outcome], None]


@dataclass(frozen=True)
class Case:
    """`run` is the amgmt command line ("{tmp}" and "{local}" filled in) or a library call giving a BatchReport.
    `shows` is how the outcome must be told: "ok" (exit 0, summary, nothing on stderr), "line" (one
    `amgmt: error:` line on stderr, nothing on stdout), "summary" (a per-entry reason or "stopped early" in the
    summary on stdout, nothing on stderr), "usage" (click's own usage error)."""

    setup: Setup
    run: tuple[str, ...] | Library
    code: int
    shows: Literal["ok", "line", "summary", "usage"]
    says: tuple[str, ...] = ()
    check: Check | None = None
    timeout: float = 30.0
    bug: str | None = None


# -- setups ---------------------------------------------------------------------------------------------------


def plain(w: World) -> None:
    w.file("a.mp4", 1000)
    w.file("dir/b.txt", b"hello")
    w.outside()


def with_env(setup: Setup, **env: str) -> Setup:
    async def go(w: World) -> None:
        result = setup(w)
        if inspect.isawaitable(result):
            await result
        w.env.update({k: v.replace("{tmp}", str(w.tmp)).replace("{local}", str(w.local)) for k, v in env.items()})

    return go


def endpoint_down(w: World) -> None:
    plain(w)
    w.env["MGMT_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there


def top_links(w: World) -> None:
    """Symlinks directly in the local dir: to a file and a dir outside, a loop, a dangling one; plus a real file."""
    out = w.outside()
    w.file("real.mp4", 500)
    os.symlink(out / "secret.txt", w.local / "to-file.mp4")
    os.symlink(out / "dir", w.local / "to-dir")
    os.symlink("loop", w.local / "loop")
    os.symlink("nowhere", w.local / "dangling.mp4")
    os.symlink(out, w.local / "linkdir")


def links_inside(w: World) -> None:
    out = w.outside()
    w.file("album/song.mp3", 700)
    album = w.local / "album"
    os.symlink(out / "secret.txt", album / "to-file")  # absolute, outside
    os.symlink("../../outside/dir", album / "to-dir")  # relative, outside
    os.symlink("loop", album / "loop")
    os.symlink("gone", album / "dangling")
    os.symlink("song.mp3", album / "inside")


def fifos(w: World) -> None:
    w.file("show/ep1.mkv", 900)
    os.mkfifo(w.local / "show" / "pipe")
    os.mkfifo(w.local / "top.fifo")


def unreadable(w: World) -> None:
    """chmod 000 on a file, a directory, and a directory inside an entry. As root (which ignores modes) the CLI runs
    with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from its bounding set, so the modes bind it too."""
    if IS_ROOT:
        setpriv = shutil.which("setpriv")
        if setpriv is None or not _has_dac_caps():
            pytest.skip("root ignores file modes, and setpriv (or the DAC capabilities to drop) is not available")
        w.command_prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
        w.route = "cli, root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (setpriv)"
    else:
        w.route = "cli, chmod 000 as a regular user"
    w.file("fine.mp4", 300)
    locked = [w.file("locked.mp4", 400), w.file("locked-dir/inside.txt", b"in").parent,
              w.file("album/private/p.txt", b"p").parent]
    w.file("album/ok.txt", b"ok")
    for path in locked:
        mode = path.stat().st_mode
        os.chmod(path, 0)
        w.teardown.append(lambda path=path, mode=mode: os.chmod(path, stat.S_IMODE(mode)))


def empties(w: World) -> None:
    w.file("empty.mp4", b"")
    (w.local / "empty-dir").mkdir()


# Names that must all upload: spaces, control characters, undecodable bytes, 255 bytes (ASCII and 2-byte UTF-8),
# a leading dash, a would-be flag, '%' against its own escape, dots, NFC against NFD, shell metacharacters.
NON_UTF8 = os.fsdecode(b"bad\xff\xfe.mp4")
HIDDEN = ["...", "..x"]  # `upload all` leaves out hidden entries; by name they upload
HOSTILE = [
    "with space.mp4",
    "new\nline.mp4",
    "tab\tand\rcr.mp4",
    "n" * 251 + ".mp4",
    "\u00e9" * 126 + ".mp",
    "-v.mp4",
    "--overwrite",
    "%41.mp4",
    "A.mp4",
    "a\\b?c#d*e;f|g$(h).mp4",
    "trailing space ",
    "del\x7f.mp4",
    "caf\u00e9.mp4",
    "cafe\u0301.mp4",
]
HOSTILE_DIR = "dir\nwith " + os.fsdecode(b"\xc3(")  # a newline and an invalid UTF-8 sequence


def hostile_names(w: World) -> None:
    for i, name in enumerate([*HOSTILE, *HIDDEN, NON_UTF8]):
        w.file(name, 100 + i)
    w.file(HOSTILE_DIR + "/" + os.fsdecode(b"f-\xff"), b"inside a hostile dir")
    w.file(f"{HOSTILE_DIR}/sub dir/-x", b"deeper")
    w.file("all", b"a file named all")


def growing(w: World) -> None:
    """A 64 MiB sparse file that grows as soon as amgmt's compression worker first reads it (inotify IN_ACCESS):
    nothing else reads the file before compression (validation only stats it), and hashing 64 MiB takes far longer
    than the watcher thread needs to append."""
    path = w.local / "grow.bin"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        pytest.skip(f"inotify is not available: {os.strerror(ctypes.get_errno())}")
    w.teardown.append(lambda: os.close(fd))
    grown = threading.Event()

    def watch() -> None:
        ready, _, _ = select.select([fd], [], [], 25)
        if ready:
            os.read(fd, 4096)
            with open(path, "ab") as f:
                f.write(b"appended while being compressed")
            grown.set()

    thread = threading.Thread(target=watch, daemon=True)

    def start() -> None:
        # Only now: the suite's own snapshot of the originals reads the file too.
        assert libc.inotify_add_watch(fd, os.fsencode(path), 0x1) >= 0, os.strerror(ctypes.get_errno())  # IN_ACCESS
        thread.start()

    def stop() -> None:
        thread.join(30)
        assert grown.is_set(), "the file was never read, so it never grew"

    w.before_run.append(start)
    w.after_run.append(stop)
    w.changed_on_purpose.add("grow.bin")
    w.route = "cli, a thread appends on the worker's first read (inotify)"


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(where)],
                          capture_output=True, timeout=10)
    return done.returncode == 0


def staging_on_tiny_tmpfs(w: World) -> None:
    mount = w.tmp / "tiny-staging"
    if not _can_mount_tmpfs(mount):
        pytest.skip("mounting a tmpfs is not permitted here: the case staging-full-injected covers ENOSPC instead")
    w.teardown.append(lambda: subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=10))
    w.staging = mount
    w.env["MGMT_STAGING_DIR"] = str(mount)
    w.route = "cli, MGMT_STAGING_DIR on a 1 MiB tmpfs"
    w.file("big.bin", 3 * 1024 * 1024)  # incompressible: its archive cannot fit
    w.file("small.mp4", 2000)


def staging_full_injected(w: World) -> None:
    probe = w.tmp / "probe"
    if _can_mount_tmpfs(probe):
        subprocess.run(["umount", "-l", str(probe)], capture_output=True, timeout=10)
        pytest.skip("a real tmpfs could be mounted: the case staging-full-tmpfs ran instead")
    w.route = "library, compressor wrapper raising ENOSPC"
    w.file("big.bin", 3 * 1024 * 1024)
    w.file("small.mp4", 2000)


def completed_under_a_file(w: World) -> None:
    """The completed dir cannot be created even by root: its parent is a regular file."""
    (w.tmp / "blocker").write_bytes(b"a regular file")
    w.completed = w.tmp / "blocker" / "completed"
    w.db = w.tmp / "meta" / "operations.db"
    w.staging = w.tmp / "meta" / "staging"
    w.env.update(MGMT_COMPLETED_DIR=str(w.completed), MGMT_DB_PATH=str(w.db), MGMT_STAGING_DIR=str(w.staging))
    w.file("movie.mkv", 5000)


async def db_locked(w: World) -> None:
    """Another process holds BEGIN EXCLUSIVE on the database file while amgmt opens it for the first time."""
    plain(w)
    await _lock_db(w, existing=False)


async def db_locked_existing(w: World) -> None:
    """An existing database (amgmt's schema, WAL) on which another process holds BEGIN EXCLUSIVE during the run:
    WAL lets amgmt open and read it, so the lock shows at the entry's first write."""
    plain(w)
    await _lock_db(w, existing=True)


async def db_locked_entry_done(w: World) -> None:
    """The same lock, and a.mp4 already in the completed dir (same size and mtime: amgmt skips it)."""
    plain(w)
    w.completed_dir.mkdir()
    shutil.copy2(w.local / "a.mp4", w.completed_dir / "a.mp4")
    await _lock_db(w, existing=True)


async def _lock_db(w: World, *, existing: bool) -> None:
    if existing:
        async with MetadataStore(w.db_path):
            pass
    else:
        w.db_path.parent.mkdir(parents=True, mode=0o700)
    held = [sqlite3.connect(w.db_path, isolation_level=None, check_same_thread=False)]
    held[0].execute("BEGIN EXCLUSIVE")
    if not existing:
        held[0].execute("CREATE TABLE being_written (x)")

    def release() -> None:
        while held:
            holder = held.pop()
            holder.execute("ROLLBACK")
            holder.close()

    w.after_run.append(release)
    w.teardown.append(release)


def db_corrupt(w: World) -> None:
    plain(w)
    w.db_path.parent.mkdir(parents=True, mode=0o700)
    w.db_path.write_bytes(random.Random(7).randbytes(8192))


class _Stub(http.server.BaseHTTPRequestHandler):
    """Something on the port that is not S3: every request gets `status` (HEAD: `head`) and `body`."""

    status = 200
    head = 200
    body = b""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(self.head if self.command == "HEAD" else self.status)
        self.send_header("Content-Type", "text/html" if self.body.startswith(b"<") else "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


def not_s3(status: int, body: bytes, *, head: int | None = None) -> Setup:
    def setup(w: World) -> None:
        plain(w)
        handler = type("Stub", (_Stub,), {"status": status, "head": status if head is None else head, "body": body})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(10)

        w.teardown.append(stop)
        w.env["MGMT_ENDPOINT_URL"] = f"http://127.0.0.1:{server.server_address[1]}"

    return setup


def _moto_auth(w: World, count: str) -> None:
    request = urllib.request.Request(f"{w.endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as resp:
        json.loads(resp.read())


def wrong_credentials(w: World) -> None:
    """moto accepts any key unless told otherwise: /moto-api/reset-auth with 0 makes it check every request against
    its IAM users (none exist, so every key is unknown) until it is set back to "inf"."""
    plain(w)
    try:
        _moto_auth(w, "0")
    except OSError as exc:
        pytest.skip(f"the S3 server is not a moto that can enforce authentication: {exc}")
    restore = lambda: _moto_auth(w, "inf")  # noqa: E731
    w.after_run.append(restore)
    w.teardown.append(restore)
    w.env["AWS_ACCESS_KEY_ID"] = "AKIAAMGMTWRONGKEY000"
    w.route = "cli, moto with IAM authentication enforced"


def garbage_config(w: World) -> None:
    plain(w)
    config = w.tmp / "amgmt.conf"
    config.write_text(f"MGMT_CONCURRENCY=2\n# comment\naws_secret_access_key: {SECRET}\nMGMT_PREFIX=x\n")
    w.secret_files.add(config)


def control_chars_in_summary(w: World) -> None:
    """Two entries whose upload fails (their keys hold other content) and a symlink, all named with a newline or a
    terminal escape; the summary names them."""
    for name in ("evil\x1b[2K\x1b[1Ahidden.mp4", "two\nlines.mp4"):
        w.file(name, 100)
        w.s3.put_object(Bucket=w.bucket, Key=object_key("", name), Body=b"somebody else's archive")
    w.file("fine.mp4", 100)
    os.symlink("fine.mp4", w.local / "link\x1b]0;owned\x07.mp4")


def c1_controls(w: World) -> None:
    w.file("nel\u0085.mp4", 100)
    w.file("csi\u009b31m.mp4", 100)


def long_name_duplicate(w: World) -> None:
    """A 255-byte name already in the completed dir (an earlier, different version): the new one must go in under a
    duplicate name, as any shorter name does with MGMT_DUPLICATE_HANDLING=timestamp."""
    name = "n" * 251 + ".mp4"
    w.file(name, b"new version")
    w.changed_on_purpose.add(name)
    earlier = w.completed_dir / name
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"the earlier version, already uploaded")


def tilde(w: World) -> None:
    w.file("~", b"a file named tilde")
    w.file("~root", b"a file named tilde-root")


# -- library calls --------------------------------------------------------------------------------------------


def hooked(real: Compressor, hooks: dict[str, Callable[[str, str], None]]) -> Compressor:
    """The real process-pool compressor, with hooks[name](source, archive_path) run first for that entry."""

    async def compress(source: str, archive_path: str, part_size: int, level: int, md5: bool = True) -> ArchiveResult:
        hook = hooks.get(Path(source).name)
        if hook is not None:
            hook(source, archive_path)
        return await real(source, archive_path, part_size, level, md5)

    return compress


async def deleted_after_listing(w: World) -> BatchReport:
    settings = w.make_settings()
    entries = list_entries(settings)[0]  # listed first...
    (w.local / "a.mp4").unlink()  # ...then deleted before its upload
    w.changed_on_purpose.add("a.mp4")
    w.route = "library, upload_batch with entries listed before the delete"
    return await upload_batch(settings, entries)


async def swapped_for_fifo(w: World) -> BatchReport:
    def swap(source: str, archive_path: str) -> None:
        os.unlink(source)
        os.mkfifo(source)

    settings = w.make_settings()
    w.changed_on_purpose.add("a.mp4")
    w.route = "library, the file is replaced by a FIFO just before compression"
    with anyio.fail_after(20):
        async with CompressionPool(anyio.CapacityLimiter(2)) as real:
            return await upload_batch(settings, list_entries(settings)[0], compressor=hooked(real, {"a.mp4": swap}))


async def upload_a_with_short_busy_timeout(w: World) -> BatchReport:
    # Only to wait 0.5 s instead of 5 for the lock (the CLI's wait is fixed); nothing else about the store changes.
    def short_wait(settings: Any) -> MetadataStore:
        return MetadataStore(settings.db_path, busy_timeout=0.5, host_id=settings.host_id)

    w.monkeypatch.setattr(batch, "metadata_store", short_wait)
    w.route = "library, upload_batch with the store's busy timeout cut to 0.5 s"
    return await upload_batch(w.make_settings(), [w.local / "a.mp4"])


async def enospc_injected(w: World) -> BatchReport:
    def full(source: str, archive_path: str) -> None:
        Path(archive_path + ".partial").write_bytes(b"half an archive")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), archive_path + ".partial")

    settings = w.make_settings()
    async with CompressionPool(anyio.CapacityLimiter(2)) as real:
        return await upload_batch(settings, list_entries(settings)[0], compressor=hooked(real, {"big.bin": full}))


# -- checks of single cases -----------------------------------------------------------------------------------


def nothing_uploaded(w: World, out: Outcome) -> None:
    assert w.keys() == [], out


def links_never_followed(w: World, out: Outcome) -> None:
    assert w.keys() == ["real.mp4.tar.gz"], out
    for name in ("to-file.mp4", "to-dir", "loop", "dangling.mp4", "linkdir"):
        assert f"ignored: {name}: symbolic link" in out.stdout, out
        assert (w.local / name).is_symlink()
    assert OUTSIDE_BYTES not in _tar_stream(w.object_bytes("real.mp4.tar.gz"))


def links_stored_as_links(w: World, out: Outcome) -> None:
    members = w.members("album.tar.gz")
    links = {name: m.linkname for name, m in members.items() if m.issym()}
    assert links == {
        "album/to-file": str(w.tmp / "outside" / "secret.txt"),
        "album/to-dir": "../../outside/dir",
        "album/loop": "loop",
        "album/dangling": "gone",
        "album/inside": "song.mp3",
    }
    assert sorted(n for n, m in members.items() if m.isfile()) == ["album/song.mp3"]
    assert OUTSIDE_BYTES not in _tar_stream(w.object_bytes("album.tar.gz"))
    assert (w.tmp / "outside" / "secret.txt").read_bytes() == OUTSIDE_BYTES


def fifos_skipped(w: World, out: Outcome) -> None:
    assert w.keys() == ["show.tar.gz"], out
    assert "ignored: top.fifo: not a regular file or directory" in out.stdout, out
    assert sorted(w.members("show.tar.gz")) == ["show", "show/ep1.mkv"]
    assert stat.S_ISFIFO((w.local / "top.fifo").lstat().st_mode)
    [(tags,)] = w.rows("SELECT tags FROM file_records WHERE role = 'source'")
    assert json.loads(tags)["skipped_special_files"] == "1"


def unreadable_fail_alone(w: World, out: Outcome) -> None:
    assert w.keys() == ["fine.mp4.tar.gz"], out
    assert "failed 3" in out.stdout and "success 1" in out.stdout, out
    for name in ("locked.mp4", "locked-dir", "album"):
        [line] = [ln for ln in out.stdout.splitlines() if ln.startswith(f"  failed    {name}: ")]
        assert "Permission denied" in line, out


def empties_uploaded(w: World, out: Outcome) -> None:
    assert w.keys() == ["empty-dir.tar.gz", "empty.mp4.tar.gz"], out
    [file_member] = w.members("empty.mp4.tar.gz").values()
    assert file_member.isfile() and file_member.size == 0
    [dir_member] = w.members("empty-dir.tar.gz").values()
    assert dir_member.isdir() and dir_member.name == "empty-dir"


def hostile_uploaded(expected_names: list[str]) -> Check:
    def check(w: World, out: Outcome) -> None:
        expected = [object_key("", n) for n in expected_names]
        assert len(set(expected)) == len(expected)  # '%41' and 'A', NFC and NFD, ...: no two names share a key
        assert w.keys() == sorted(expected), out
        secure_metadata(w, out)

    return check


def secure_metadata(w: World, out: Outcome) -> None:
    """The db 0600 in a 0700 dir, staging 0700; the marker in none of their bytes nor in command_args."""
    meta = w.db_path.parent
    assert stat.S_IMODE(meta.stat().st_mode) == 0o700
    assert stat.S_IMODE(w.staging_dir.stat().st_mode) == 0o700
    db_files = [p for p in meta.iterdir() if p.name.startswith(w.db_path.name)]
    assert w.db_path in db_files
    for path in db_files:  # the db and, when still there, its -wal and -shm
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert SECRET.encode() not in path.read_bytes(), path
    rows = w.rows("SELECT command_args, metadata, user FROM operations")
    assert rows, "no operation recorded"
    for command_args, metadata, user in rows:
        assert SECRET not in command_args + metadata + (user or "")
        assert "AWS_" not in command_args and "secret" not in command_args.lower()


def names_after_double_dash(w: World, out: Outcome) -> None:
    hostile_uploaded([*HOSTILE, *HIDDEN])(w, out)
    [(command_args,)] = w.rows("SELECT DISTINCT command_args FROM operations")
    assert json.loads(command_args)["names"][:2] == ["with space.mp4", "new\nline.mp4"]


def grew_and_stayed(w: World, out: Outcome) -> None:
    assert w.keys() == [], out
    assert (w.local / "grow.bin").stat().st_size == 64 * 1024 * 1024 + len(b"appended while being compressed")


def deleted_reported(w: World, out: Outcome) -> None:
    assert w.keys() == ["dir.tar.gz"], out
    assert not (w.local / "a.mp4").exists()


def fifo_swap_reported(w: World, out: Outcome) -> None:
    assert w.keys() == ["dir.tar.gz"], out
    assert stat.S_ISFIFO((w.local / "a.mp4").lstat().st_mode)


def small_one_uploaded(w: World, out: Outcome) -> None:
    assert w.keys() == ["small.mp4.tar.gz"], out
    assert (w.local / "big.bin").stat().st_size == 3 * 1024 * 1024
    assert (w.completed_dir / "small.mp4").exists()


def partial_but_verified(w: World, out: Outcome) -> None:
    assert w.keys() == ["movie.mkv.tar.gz"], out
    member = w.members("movie.mkv.tar.gz")["movie.mkv"]
    with _open_tar(w.object_bytes("movie.mkv.tar.gz")) as tar:
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == (w.local / "movie.mkv").read_bytes()
    assert w.rows("SELECT status, stage, verification_method FROM operations") == [("partial", "done", "etag")]
    assert not w.completed_dir.exists()


def summary_one_line_per_failure(w: World, out: Outcome) -> None:
    for line in out.stdout.splitlines():
        assert line.isprintable(), f"a raw control character reaches the terminal: {line!r}"
    failures = [ln for ln in out.stdout.splitlines() if "already exists with other content" in ln]
    assert len(failures) == 2 and all(ln.startswith("  failed    ") for ln in failures), out


def long_duplicate_moved(w: World, out: Outcome) -> None:
    name = "n" * 251 + ".mp4"
    assert not (w.local / name).exists(), out
    assert (w.completed_dir / name).read_bytes() == b"the earlier version, already uploaded"
    moved = [p for p in w.completed_dir.iterdir() if p.is_file() and p.name != name]
    assert [p.read_bytes() for p in moved] == [b"new version"], moved
    assert w.keys() == [object_key("", name)]
    [member] = w.members(object_key("", name)).values()
    assert member.name == name and member.size == len(b"new version")


def tilde_uploaded(w: World, out: Outcome) -> None:
    assert w.keys() == ["~.tar.gz", "~root.tar.gz"], out


# -- the table ------------------------------------------------------------------------------------------------

CASES: dict[str, Case] = {
    # names that are not entries of the local dir: refused before anything is done
    "missing-name": Case(plain, ("upload", "nosuch.mp4"), 2, "line", ("nosuch.mp4", "no such file or directory")),
    "dotdot-outside": Case(plain, ("upload", "../outside.mp4"), 2, "line", ("outside the local dir",)),
    "absolute-outside": Case(plain, ("upload", "{tmp}/outside.mp4"), 2, "line", ("outside the local dir",)),
    "through-symlinked-dir": Case(top_links, ("upload", "linkdir/secret.txt"), 2, "line", ("outside the local dir",)),
    # symlinks: refused as NAME, ignored by `all`, stored as links inside a directory
    "symlink-to-file-as-name": Case(top_links, ("upload", "to-file.mp4"), 2, "line", ("symbolic link",)),
    "symlink-to-dir-as-name": Case(top_links, ("upload", "to-dir"), 2, "line", ("symbolic link",)),
    "symlink-loop-as-name": Case(top_links, ("upload", "loop"), 2, "line", ("symbolic link",)),
    "symlink-dangling-as-name": Case(top_links, ("upload", "dangling.mp4"), 2, "line", ("symbolic link",)),
    "symlinks-with-all": Case(top_links, ("upload", "all"), 0, "ok", check=links_never_followed),
    "symlinks-inside-a-dir": Case(links_inside, ("upload", "album"), 0, "ok", check=links_stored_as_links),
    # FIFOs: refused as NAME, skipped inside a directory and by `all`, never waited on
    "fifo-as-name": Case(fifos, ("upload", "top.fifo"), 2, "line", ("not a regular file or directory",), timeout=15),
    "fifo-inside-a-dir-and-with-all": Case(fifos, ("upload", "all"), 0, "ok", check=fifos_skipped, timeout=15),
    "fifo-swapped-in-after-listing": Case(plain, swapped_for_fifo, 1, "summary",
                                          ("a.mp4: compress:", "not a regular file or directory"),
                                          check=fifo_swap_reported),
    # contents amgmt cannot read or that change under it
    "unreadable-file-and-dirs": Case(unreadable, ("upload", "all"), 1, "summary", ("Permission denied",),
                                     check=unreadable_fail_alone),
    "grows-while-compressed": Case(growing, ("upload", "grow.bin"), 1, "summary",
                                   ("grow.bin: compress:", "changed while being compressed"), check=grew_and_stayed),
    "deleted-after-listing": Case(plain, deleted_after_listing, 1, "summary",
                                  ("a.mp4: validate:", "does not exist (deleted since it was listed?)"),
                                  check=deleted_reported),
    # empty entries and hostile names all upload
    "empty-file-and-dir": Case(empties, ("upload", "all"), 0, "ok", ("success 2",), check=empties_uploaded),
    "hostile-names-with-all": Case(hostile_names, ("upload", "all"), 0, "ok", (f"success {len(HOSTILE) + 3}",),
                                   check=hostile_uploaded([*HOSTILE, NON_UTF8, HOSTILE_DIR, "all"])),
    "hostile-names-after-double-dash": Case(hostile_names, ("upload", "--", *HOSTILE, *HIDDEN), 0, "ok",
                                            (f"success {len(HOSTILE) + 2}",), check=names_after_double_dash),
    # -v is upload's own flag since issue 15 (-v/--debug after the command): `-v.mp4` is read as -v -. -m ...
    "leading-dash-without-double-dash": Case(hostile_names, ("upload", "-v.mp4"), 2, "usage",
                                             ("No such option", "'-.'"), check=nothing_uploaded),
    # the staging dir, the completed dir and the database in trouble
    "staging-full-tmpfs": Case(staging_on_tiny_tmpfs, ("upload", "all"), 1, "summary",
                                ("big.bin: compress:", "no space left on device in staging dir"),
                                check=small_one_uploaded),
    "staging-full-injected": Case(staging_full_injected, enospc_injected, 1, "summary",
                                   ("big.bin: compress:", "No space left on device"), check=small_one_uploaded),
    "completed-dir-not-writable": Case(completed_under_a_file, ("upload", "movie.mkv"), 1, "summary",
                                       ("partial", "uploaded and verified, but the original stays in place",
                                        "Not a directory"), check=partial_but_verified),
    "db-locked": Case(db_locked, ("upload", "a.mp4"), 4, "line", ("operations.db is locked by another process",),
                      check=nothing_uploaded),
    "db-locked-existing-wal": Case(db_locked_existing, upload_a_with_short_busy_timeout, 4, "summary",
                                   ("operations.db is locked by another process",), check=nothing_uploaded),
    "db-corrupt": Case(db_corrupt, ("upload", "all"), 4, "line",
                       ("operations.db is not a valid SQLite database",), check=nothing_uploaded),
    # the S3 side unreachable or unusable: stop at once
    "endpoint-down": Case(endpoint_down, ("upload", "all"), 3, "line", ("cannot reach the S3 endpoint",),
                          check=nothing_uploaded),
    "wrong-port-404-html": Case(not_s3(404, b"<html><body><h1>Not Found</h1></body></html>"), ("upload", "all"),
                                3, "line", check=nothing_uploaded),
    "wrong-port-not-s3": Case(not_s3(400, b"hello", head=200), ("upload", "all"), 3, "line", check=nothing_uploaded),
    "bucket-missing": Case(with_env(plain, MGMT_BUCKET=f"amgmt-missing-{uuid.uuid4().hex[:12]}"), ("upload", "all"),
                           3, "line", ("does not exist",)),
    "wrong-credentials": Case(wrong_credentials, ("upload", "all"), 3, "line", ("403",), check=nothing_uploaded),
    # settings
    "config-garbage-line": Case(garbage_config, ("upload", "a.mp4", "--config", "{tmp}/amgmt.conf"), 2, "line",
                                ("config file {tmp}/amgmt.conf line 3: expected KEY=VALUE",)),
    "prefix-with-dotdot": Case(with_env(plain, MGMT_OBJECT_PREFIX="media/../escape"), ("upload", "all"), 2, "line",
                               ("MGMT_OBJECT_PREFIX", "'..' segments are not allowed")),
    # bugs this suite found (fixed; kept as regression cases)
    "control-chars-in-summary": Case(control_chars_in_summary, ("upload", "all"), 1, "summary",
                                     check=summary_one_line_per_failure),
    "c1-control-chars-in-keys": Case(c1_controls, ("upload", "all"), 0, "ok"),
    "255-byte-name-duplicate": Case(long_name_duplicate, ("upload", "--", "n" * 251 + ".mp4"), 0, "ok",
                                    check=long_duplicate_moved),
    "db-locked-entry-already-done": Case(db_locked_entry_done, upload_a_with_short_busy_timeout, 4, "summary",
                                         ("operations.db is locked by another process",)),
    "non-utf8-name-as-name": Case(hostile_names, ("upload", "--", NON_UTF8), 0, "ok", ("success 1",),
                                  check=hostile_uploaded([NON_UTF8])),
    "tilde-name": Case(tilde, ("upload", "--", "~", "~root"), 0, "ok", check=tilde_uploaded),
}


def _params() -> list[Any]:
    params = []
    for name, case in CASES.items():
        marks = [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []
        params.append(pytest.param(case, id=name, marks=marks))
    return params


# -- running a case -------------------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path, local_dir: Path, bucket: str, s3_server: Any, s3_client: Any, cli_env: dict[str, str],
          make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    w = World(tmp=tmp_path, local=local_dir, bucket=bucket, endpoint=s3_server.endpoint_url, s3=s3_client,
              cli_env=dict(cli_env), make_settings=make_settings, monkeypatch=monkeypatch)
    yield w
    with contextlib.ExitStack() as undo:  # last registered first; every one runs even if another fails
        for step in w.teardown:
            undo.callback(step)


def _fill(text: str, w: World) -> str:
    return text.replace("{tmp}", str(w.tmp)).replace("{local}", str(w.local))


def run_cli(w: World, args: tuple[str, ...], timeout: float) -> Outcome:
    """As tests/cli/conftest.py's `amgmt` fixture runs it, with w.env and w.command_prefix on top."""
    env = {**w.cli_env, "AWS_SECRET_ACCESS_KEY": SECRET, "XDG_CONFIG_HOME": str(w.tmp / "xdg"), **w.env}
    done = subprocess.run([*w.command_prefix, sys.executable, "-m", "amgmt", *(_fill(a, w) for a in args)],
                          env=env, cwd=w.tmp, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return Outcome(done.returncode, done.stdout, done.stderr, w.route)


@pytest.mark.parametrize("case", _params())
async def test_hostile_input(case: Case, world: World) -> None:
    w = world
    prepared = case.setup(w)
    if inspect.isawaitable(prepared):
        await prepared
    before = originals(w)
    untouched = snapshot(w.tmp)
    for before_run in w.before_run:
        before_run()
    try:
        if isinstance(case.run, tuple):
            outcome = run_cli(w, case.run, case.timeout)
        else:
            w.route = w.route if w.route != "cli" else "library"
            report = await case.run(w)
            outcome = Outcome(int(report.exit_code), summary_text(report) + "\n", "", w.route)
    finally:
        for after in w.after_run:
            after()
    print(f"route: {outcome.route}")

    assert SECRET not in outcome.stdout + outcome.stderr, outcome
    assert "Traceback" not in outcome.stdout + outcome.stderr, outcome
    assert outcome.code == case.code, outcome
    assert_told(case, outcome, w)
    if case.code == 2:
        assert snapshot(w.tmp) == untouched, "a refused command changed the disk"
    assert_nothing_lost(w, before)
    assert_safe_keys(w)
    assert_no_secret_on_disk(w)
    assert_staging_empty(w)
    if case.check is not None:
        case.check(w, outcome)


def assert_told(case: Case, out: Outcome, w: World) -> None:
    says = tuple(_fill(s, w) for s in case.says)
    if case.shows == "line":
        assert out.stdout == "", out
        assert len(out.stderr_lines) == 1 and out.stderr_lines[0].startswith("amgmt: error: "), out
        told = out.stderr_lines[0]
    elif case.shows == "usage":
        assert out.stdout == "" and out.stderr.startswith("Usage: amgmt upload"), out
        told = out.stderr
    else:
        assert out.stderr_lines == [], out
        assert re.search(r"^\d+ (entry|entries) in ", out.stdout), out  # "1 entry", not "1 entries" (issue 15)
        if case.shows == "summary":
            assert "not done:" in out.stdout or "stopped early:" in out.stdout, out
        else:
            assert "not done:" not in out.stdout and "stopped early:" not in out.stdout, out
        told = out.stdout
    for piece in says:
        assert piece in told, out


# -- what must hold after every case --------------------------------------------------------------------------

Tree = dict[str, tuple[Any, ...]]


def tree(path: Path, name: str) -> Tree:
    """Every member of an entry as ("file", sha256 | None if unreadable) / ("dir",) / ("link", target) / ("other",),
    by path starting with the entry's name; never following links, never opening anything but regular files."""
    found: Tree = {}
    stack = [(path, name)]
    while stack:
        here, rel = stack.pop()
        st = here.lstat()
        if stat.S_ISDIR(st.st_mode):
            found[rel] = ("dir",)
            try:
                children = list(os.scandir(here))
            except PermissionError:
                found[rel] = ("dir", "unreadable")
                continue
            stack.extend((Path(c.path), f"{rel}/{c.name}") for c in children)
        elif stat.S_ISLNK(st.st_mode):
            found[rel] = ("link", os.readlink(here))
        elif stat.S_ISREG(st.st_mode):
            try:
                found[rel] = ("file", hashlib.sha256(here.read_bytes()).hexdigest())
            except PermissionError:
                found[rel] = ("file", None)
        else:
            found[rel] = ("other",)
    return found


def originals(w: World) -> dict[str, Tree]:
    skip = {w.completed_dir, w.db_path.parent, w.staging_dir}
    return {p.name: tree(p, p.name) for p in w.local.iterdir() if p not in skip}


def archive_tree(w: World, key: str) -> Tree:
    found: Tree = {}
    with _open_tar(w.object_bytes(key)) as tar:
        for m in tar.getmembers():
            if m.isdir():
                found[m.name] = ("dir",)
            elif m.issym():
                found[m.name] = ("link", m.linkname)
            else:
                data = tar.extractfile(m)
                assert data is not None
                found[m.name] = ("file", hashlib.sha256(data.read()).hexdigest())
    return found


def assert_nothing_lost(w: World, before: dict[str, Tree]) -> None:
    """Each original is in place, unchanged; or it is in the completed dir, unchanged, and its object holds it."""
    keys = set(w.keys())
    for name, was in before.items():
        if name in w.changed_on_purpose:
            continue
        here = w.local / name
        if os.path.lexists(here):
            assert tree(here, name) == was, f"{name!r} changed in place"
            continue
        moved = w.completed_dir / name
        assert os.path.lexists(moved), f"{name!r} is neither in the local dir nor in the completed dir"
        assert tree(moved, name) == was, f"{name!r} changed on its way to the completed dir"
        key = object_key("", name)
        assert key in keys, f"{name!r} was moved but {key!r} is not in the bucket"
        assert archive_tree(w, key) == {k: v for k, v in was.items() if v != ("other",)}, f"{key!r} differs"


def assert_safe_keys(w: World) -> None:
    for key in w.keys():
        assert not any(unicodedata.category(ch) == "Cc" for ch in key), f"control character in key {key!r}"
        assert ".." not in key.split("/"), f"'..' segment in key {key!r}"


def assert_no_secret_on_disk(w: World) -> None:
    marker = SECRET.encode()
    for root, _, names in os.walk(w.tmp):
        for name in names:
            path = Path(root) / name
            if path in w.secret_files:
                continue
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode) or st.st_size > 16 * 1024 * 1024:
                continue
            try:
                data = path.read_bytes()
            except PermissionError:
                continue
            assert marker not in data, f"the AWS secret is in {path}"


def assert_staging_empty(w: World) -> None:
    if w.staging_dir.is_dir():
        assert list(w.staging_dir.iterdir()) == [], "archives left in the staging dir"


def _has_dac_caps() -> bool:
    status = Path("/proc/self/status").read_text()
    bounding = int(re.search(r"^CapBnd:\s*([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
    return bool(bounding & 0b110)  # CAP_DAC_OVERRIDE (1), CAP_DAC_READ_SEARCH (2)


def _open_tar(data: bytes) -> tarfile.TarFile:
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:gz", encoding="utf-8", errors="surrogateescape")


def _tar_stream(data: bytes) -> bytes:
    return gzip.decompress(data)
