"""`download NAME --member PATH`: one member of a directory archive (or a member directory's subtree) taken out while
the archive streams from S3, decompressed on the fly and never stored on disk. Every member is checked by
extract.member_problem before anything is written; a file lands under a .partial name, then in place.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import os
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread

from amgmt.errors import ConfigError, EntryError, NotFoundError, ValidationError, VerificationError, first_error
from amgmt.naming import PARTIAL_SUFFIX, display
from amgmt.objects.extract import ExtractSummary, describe_problems, member_problem
from amgmt.objects.transfer import DownloadReporter, place_file, unlink_if_present
from amgmt.parts import part_ranges
from amgmt.s3 import ObjectHead
from amgmt.text import counted

if TYPE_CHECKING:
    from amgmt.objects.resolve import Objects, Target
    from amgmt.store import StoredMember

PREFETCH = 2  # ranges handed on and waiting for the decompression
FETCH_AHEAD = 4  # ranges asked for at once (at most MGMT_PARTS_IN_FLIGHT): memory stays within 7 ranges
COPY_CHUNK = 1 << 20


@dataclass
class MemberTaken:
    """What `take_member` wrote."""

    member: str  # the member path asked for, as the archive names it
    summary: ExtractSummary
    local_path: str
    sha256: str | None  # of the member's bytes, when it is one file
    verified_by: tuple[str, ...]
    archive_bytes_read: int  # what the decompression read
    archive_bytes_fetched: int  # what the GETs brought (ranges fetched ahead included)
    archive_size: int
    recorded: bool  # whether the upload's member list was known (sizes checked against it, reading stopped early)
    written: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.member,
            "member_list_recorded": self.recorded,
            "archive_bytes_read": self.archive_bytes_read,
            "archive_bytes_fetched": self.archive_bytes_fetched,
            "archive_size": self.archive_size,
            "written": list(self.written),
        }


def _wanted(name: str, path: str) -> bool:
    return name == path or name.startswith(path + "/")


async def plan_member(objects: Objects, target: Target, text: str) -> tuple[str, list[StoredMember] | None]:
    """The member path `text` names in the target's archive (with or without the entry's name in front), and what
    the upload's member list records at and below it (None when no list was recorded: older uploads, file entries,
    or no database). NotFoundError when the list is known and holds no such member."""
    path = str(PurePosixPath(text.strip().lstrip("/"))) if text.strip() else ""
    if path in ("", ".") or ".." in PurePosixPath(path).parts:
        raise ConfigError(f"--member {text!r}: name a path inside the archive, e.g. {target.name}/DCIM/IMG_0001.JPG")
    upload = target.upload
    if objects.store is None or upload is None:
        return path, None
    candidates = [path] if path.split("/", 1)[0] == target.name else [f"{target.name}/{path}", path]
    total = 0
    for candidate in candidates:
        found, total = await objects.store.member_subtree(upload.operation_id, candidate)
        if found:
            return candidate, found
    if total == 0:
        return path if path.split("/", 1)[0] == target.name else candidates[0], None
    if "/" not in path:  # a bare file name: the one member of that name, wherever it is
        named = await objects.store.member_paths_named(upload.operation_id, path)
        if len(named) == 1:
            found, _ = await objects.store.member_subtree(upload.operation_id, named[0])
            return named[0], found
        if named:
            shown = ", ".join(named[:10]) + (", ..." if len(named) > 10 else "")
            raise ConfigError(
                f"--member {text!r} is the name of several members of {target.url}: {shown}; give its path"
            )
    raise NotFoundError(
        f"{target.url} (upload {upload.operation_id[:8]}) holds no member {text!r} among its "
        f"{counted(total, 'recorded member')}; `amgmt search` finds members"
    )


def local_name(name: str, path: str) -> str:
    """Where a member lands below the destination: its path from the asked-for member's parent on
    (trip/DCIM/IMG_1.JPG asked for lands as IMG_1.JPG; trip/DCIM as DCIM/...)."""
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    return name[len(parent) + 1 :] if parent else name


def refuse_existing(dest: Path, path: str, expected: list[StoredMember], *, force: bool) -> None:
    """Before any request: paths the members would take that exist already (without --force), or that hold a
    directory where the archive has a file or the reverse (even with it)."""
    existing: list[str] = []
    blocked: list[str] = []
    for member in expected:
        target = dest / local_name(member.path, path)
        if not os.path.lexists(target):
            continue
        on_disk_dir = target.is_dir() and not target.is_symlink()
        if member.kind == "dir" and on_disk_dir:
            continue
        if member.kind == "dir" or on_disk_dir:
            blocked.append(repr(display(target)))
        elif not force:
            existing.append(repr(display(target)))
    if blocked:
        raise ConfigError(
            f"refusing: a directory where the member is a file, or the reverse: {describe_problems(blocked)}"
        )
    if existing:
        verb = "exists" if len(existing) == 1 else "exist"
        raise ConfigError(
            f"refusing: {counted(len(existing), 'path')} already {verb}: {describe_problems(existing)}; "
            "use --force to replace them; nothing was written"
        )


class _RangeReader:
    """A read-only file over the chunks the fetching task sends, read from the decompression's thread; it hashes
    and counts what it hands on."""

    def __init__(self, receive: Callable[[], bytes | None]) -> None:
        self._receive = receive
        self._buffer = memoryview(b"")
        self._ended = False
        self.sha256 = hashlib.sha256()
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        out: list[bytes] = []
        want = size if size >= 0 else 1 << 62
        while want > 0:
            if not self._buffer:
                if self._ended:
                    break
                chunk = self._receive()
                if chunk is None:
                    self._ended = True
                    break
                self.sha256.update(chunk)
                self.read_bytes += len(chunk)
                self._buffer = memoryview(chunk)
            piece = self._buffer[:want]
            self._buffer = self._buffer[len(piece) :]
            want -= len(piece)
            out.append(bytes(piece))
        return b"".join(out)

    def drain(self) -> None:
        while self.read(COPY_CHUNK):
            pass

    @property
    def at_end(self) -> bool:
        return self._ended and not self._buffer


class _Writer:
    """Writes the wanted members as the tar stream passes them (in the decompression's thread)."""

    def __init__(self, dest: Path, path: str, expected: list[StoredMember] | None, *, force: bool) -> None:
        self.dest = dest
        self.dest_real = os.path.realpath(dest)
        self.path = path
        self.expected = {m.path: m for m in expected} if expected is not None else None
        self.force = force
        self.kinds: dict[str, str] = {}
        self.files = self.directories = self.links = self.nbytes = self.replaced = 0
        self.sha256: str | None = None
        self.written: list[str] = []
        self.seen: set[str] = set()

    @property
    def complete(self) -> bool:
        """Every recorded member is written: the rest of the archive need not be read."""
        return self.expected is not None and len(self.seen) == len(self.expected)

    def take(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = display(member.name)
        recorded = self.expected.get(name) if self.expected is not None else None
        if self.expected is not None and recorded is None:
            raise VerificationError(f"the archive holds {name!r}, which its recorded member list does not")
        local = member.replace(name=local_name(member.name, self.path), deep=False)
        problem = member_problem(local, self.dest_real, self.kinds)
        if problem:
            raise ValidationError(f"refusing to write {name!r}: {problem}; nothing more was written", stage="extract")
        if recorded is not None and (recorded.kind, recorded.size) != (_kind(member), member.size):
            raise VerificationError(
                f"{name!r} is a {_kind(member)} of {member.size} bytes in the archive, the upload recorded a "
                f"{recorded.kind} of {recorded.size}"
            )
        self.seen.add(name)
        norm = str(PurePosixPath(local.name))
        self.kinds[norm] = "dir" if member.isdir() else "link" if member.issym() else "file"
        target = self.dest / norm
        if member.isdir():
            self._directory(target)
        elif member.issym():
            self._symlink(target, member.linkname)
        else:
            self._file(tar, member, target)
        self.written.append(display(target.absolute()))

    def _directory(self, target: Path) -> None:
        if os.path.lexists(target) and not (target.is_dir() and not target.is_symlink()):
            raise ConfigError(f"{display(target)} exists and is not a directory")
        target.mkdir(exist_ok=True)
        self.directories += 1

    def _symlink(self, target: Path, linkname: str) -> None:
        if os.path.lexists(target):
            if not self.force:
                raise ConfigError(f"{display(target)} exists; use --force to replace it")
            os.unlink(target)
            self.replaced += 1
        os.symlink(linkname, target)
        self.links += 1

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        partial = target.with_name(target.name + PARTIAL_SUFFIX)
        source = tar.extractfile(member)
        digest = hashlib.sha256()
        size = 0
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with open(fd, "wb") as out:
                while source is not None and (chunk := source.read(COPY_CHUNK)):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size != member.size:
                raise VerificationError(
                    f"{display(member.name)}: {size} bytes came out, the tar header says {member.size}"
                )
            os.utime(partial, (member.mtime, member.mtime))
            existed = os.path.lexists(target)
            place_file(partial, target, force=self.force)
        except BaseException:
            unlink_if_present(partial)
            raise
        self.replaced += existed
        self.files += 1
        self.nbytes += size
        self.sha256 = digest.hexdigest()


def _kind(member: tarfile.TarInfo) -> str:
    return "dir" if member.isdir() else "symlink" if member.issym() else "file"


def _unpack(reader: _RangeReader, writer: _Writer, *, size: int, drain_within: int) -> None:
    """Read the tar.gz stream, writing the wanted members; once the recorded ones are all written, stop, unless
    no more than `drain_within` bytes of the `size` are left (then read them: the archive's SHA-256 is checked)."""
    try:
        with tarfile.open(fileobj=reader, mode="r|gz") as tar:  # type: ignore[call-overload]
            for member in tar:
                if _wanted(display(member.name), writer.path):
                    writer.take(tar, member)
                    if writer.complete:
                        break
            if not writer.complete or size - reader.read_bytes <= drain_within:
                reader.drain()  # to its end: the whole archive's SHA-256 can be checked
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValidationError(f"the archive is not a readable tar.gz: {exc}", stage="extract") from exc
    except OSError as exc:  # the stream itself raises none: this is writing into the destination (full, read-only)
        where = display(exc.filename) if exc.filename else display(writer.dest)
        raise EntryError(f"cannot write {where}: {exc.strerror or exc}", stage="extract") from exc


async def take_member(
    objects: Objects,
    target: Target,
    head: ObjectHead,
    *,
    path: str,
    expected: list[StoredMember] | None,
    dest: Path,
    force: bool,
    reporter: DownloadReporter,
) -> MemberTaken:
    """Stream the archive with ranged GETs (FETCH_AHEAD at once, handed on in order), decompress and untar it in a
    thread, and write the members at and below `path` into `dest`. With the recorded member list the reading stops
    after the last of them and each is checked against it (kind, size); without it the whole archive is read and
    its SHA-256 compared with the record's. Either way each file's bytes must match its tar header's size."""
    if expected is not None:
        refuse_existing(dest, path, expected, force=force)
    try:
        await anyio.to_thread.run_sync(lambda: dest.mkdir(parents=True, exist_ok=True))
    except OSError as exc:
        raise ConfigError(f"cannot create --to {display(dest)}: {exc.strerror or exc}") from exc
    send, receive = anyio.create_memory_object_stream[bytes | None](PREFETCH)
    etag = head.etag or None

    fetch_failed = False
    fetched = 0  # bytes GET brought (up to FETCH_AHEAD + PREFETCH ranges more than the decompression read)

    ranges = part_ranges(head.size, objects.range_size) if head.size else []
    ahead = max(1, min(objects.workers, FETCH_AHEAD))

    async def fetch() -> None:
        """GETs of up to `ahead` ranges at once, handed on in order."""
        nonlocal fetch_failed
        got: dict[int, bytes] = {}
        ready = [anyio.Event() for _ in ranges]
        window = anyio.Semaphore(ahead)  # ranges asked for and not yet handed on

        async def get(number: int, offset: int, length: int) -> None:
            nonlocal fetched
            got[number] = await objects.s3.get_range(target.key, offset, length, if_match=etag)
            fetched += length
            ready[number].set()

        async def ask_all(tg: anyio.abc.TaskGroup) -> None:
            for number, (_, offset, length) in enumerate(ranges):
                await window.acquire()
                tg.start_soon(get, number, offset, length)

        try:
            async with send, anyio.create_task_group() as tg:
                tg.start_soon(ask_all, tg)
                for number in range(len(ranges)):
                    await ready[number].wait()
                    data = got.pop(number)
                    try:
                        await send.send(data)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        tg.cancel_scope.cancel()  # the unpacking has what it needs (or failed itself)
                        return
                    window.release()
                    reporter.advance(len(data))
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await send.send(None)
        except BaseException:
            fetch_failed = True  # the stream the unpacking reads ends short because of this, not the archive
            raise

    def next_chunk() -> bytes | None:
        try:
            return anyio.from_thread.run(receive.receive)
        except anyio.EndOfStream:
            return None

    reader = _RangeReader(next_chunk)
    writer = _Writer(dest, path, expected, force=force)
    reporter.transfer_started(head.size)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch)

            async def unpack() -> None:
                try:
                    unpack_all = functools.partial(_unpack, size=head.size, drain_within=objects.range_size)
                    await anyio.to_thread.run_sync(unpack_all, reader, writer)
                except Exception:
                    if not fetch_failed:
                        raise
                finally:
                    receive.close()  # the fetching task stops at its next send

            tg.start_soon(unpack)
    except BaseExceptionGroup as group:
        raise first_error(group)  # noqa: B904 -- the error itself, with its own cause
    reporter.transfer_done()
    if not writer.seen:
        raise NotFoundError(f"{target.url} holds no member {path!r}; nothing was written")
    verified = ["size"]
    if expected is not None:
        missing = sorted(set(writer.expected or ()) - writer.seen)
        if missing:
            raise VerificationError(f"recorded members missing from the archive: {describe_problems(missing)}")
        verified.append("member list")
    if reader.at_end and reader.read_bytes == head.size:
        recorded = target.upload.checksum_compressed if target.upload else None
        if recorded and reader.sha256.hexdigest() != recorded:
            raise VerificationError(
                f"{target.url}: the archive read has SHA-256 {reader.sha256.hexdigest()}, the upload recorded "
                f"{recorded}; the members written may not be what was uploaded"
            )
        if recorded:
            verified.append("archive sha256")
    summary = ExtractSummary(
        top_level=(local_name(path, path),),
        files=writer.files,
        directories=writer.directories,
        links=writer.links,
        bytes=writer.nbytes,
        replaced=writer.replaced,
    )
    single = writer.files == 1 and not writer.directories and not writer.links
    return MemberTaken(
        member=path,
        summary=summary,
        local_path=display((dest / local_name(path, path)).absolute()),
        sha256=writer.sha256 if single else None,
        verified_by=tuple(verified),
        archive_bytes_read=reader.read_bytes,
        archive_bytes_fetched=fetched,
        archive_size=head.size,
        recorded=expected is not None,
        written=writer.written,
    )
