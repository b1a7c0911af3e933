"""Safe unpacking of a downloaded tar.gz: every member header checked before anything is written, then extracted
with tarfile's "data" filter; and the source digest an archive's members give. Pure file work (called from a
thread); knows nothing of S3 or the store.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from amgmt.errors import ConfigError, EntryError, ValidationError
from amgmt.naming import display
from amgmt.text import counted

SHOWN_PROBLEMS = 10
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExtractSummary:
    top_level: tuple[str, ...]
    files: int
    directories: int
    links: int
    bytes: int
    replaced: int  # existing files replaced (--force)


_FILTER_REASONS: dict[type[Exception], str] = {
    tarfile.AbsolutePathError: "an absolute path",
    tarfile.OutsideDestinationError: "outside the target directory",
    tarfile.SpecialFileError: "a device or FIFO",
    tarfile.AbsoluteLinkError: "a link to an absolute path",
    tarfile.LinkOutsideDestinationError: "a link pointing outside the target directory",
}


def member_problem(member: tarfile.TarInfo, dest: str, kinds: dict[str, str]) -> str | None:
    """Why this member must not be extracted into `dest`, or None. `kinds` holds the earlier members' normalised
    names and kinds ("file", "dir", "link")."""
    name = member.name
    path = PurePosixPath(name)
    if name.startswith("/") or os.path.isabs(name):
        return "an absolute path"
    if ".." in path.parts:
        return "a '..' in its path"
    if not path.parts or str(path) == ".":
        return "an empty name"
    norm = str(path)
    for parent in path.parents:
        if kinds.get(str(parent)) == "link":
            return f"inside {str(parent)!r}, a link of the archive"
    if member.islnk():
        target = str(PurePosixPath(member.linkname))
        if kinds.get(target) != "file":
            return f"a hard link to {member.linkname!r}, which is not an earlier file of the archive"
    earlier = kinds.get(norm)
    if earlier is not None and not (earlier == "dir" and member.isdir()):
        return "a second member of the same name"
    try:
        tarfile.data_filter(member, dest)
    except tarfile.FilterError as exc:
        return next((why for kind, why in _FILTER_REASONS.items() if isinstance(exc, kind)), str(exc))
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        return "not a file, directory or link"
    return None


def describe_problems(problems: list[str]) -> str:
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return shown + more


def plan_extraction(archive: Path, dest: Path, *, force: bool) -> ExtractSummary:
    """Read every member header of the tar.gz (writing nothing) and refuse it as a whole if any member could escape
    `dest` or harm it: ValidationError for unsafe members (absolute names, '..', links leaving `dest`, paths through
    a link, hard links to anything but an earlier file, devices, duplicates), ConfigError for paths that exist
    (without `force`; a directory over a file or the reverse is refused even with it)."""
    dest_real = os.path.realpath(dest)
    kinds: dict[str, str] = {}
    unsafe: list[str] = []
    existing: list[str] = []
    blocked: list[str] = []
    top: dict[str, None] = {}
    files = directories = links = nbytes = replaced = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                problem = member_problem(member, dest_real, kinds)
                if problem:
                    unsafe.append(f"{member.name!r}: {problem}")
                    continue
                norm = str(PurePosixPath(member.name))
                kinds[norm] = "dir" if member.isdir() else "link" if member.issym() else "file"
                top.setdefault(PurePosixPath(norm).parts[0], None)
                if member.isdir():
                    directories += 1
                elif member.issym() or member.islnk():
                    links += 1
                else:
                    files += 1
                    nbytes += member.size
                target = os.path.join(dest, norm)
                if not os.path.lexists(target):
                    continue
                on_disk_dir = os.path.isdir(target) and not os.path.islink(target)
                if member.isdir() and on_disk_dir:
                    continue
                if member.isdir() or on_disk_dir:
                    blocked.append(repr(norm))
                elif force:
                    replaced += 1
                else:
                    existing.append(repr(norm))
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValidationError(f"{display(archive.name)} is not a readable tar.gz: {exc}", stage="extract") from exc
    except OSError as exc:
        raise EntryError(f"cannot read {display(archive)}: {exc.strerror or exc}", stage="extract") from exc
    if unsafe:
        raise ValidationError(
            f"refusing to extract: {counted(len(unsafe), 'unsafe member')}: {describe_problems(unsafe)}; "
            "nothing was extracted",
            stage="extract",
        )
    if blocked:
        raise ConfigError(
            f"refusing to extract: {counted(len(blocked), 'path')} in {display(dest)}: a directory where the archive "
            f"has a file, or the reverse: {describe_problems(blocked)}; nothing was extracted"
        )
    if existing:
        verb = "exists" if len(existing) == 1 else "exist"
        raise ConfigError(
            f"refusing to extract: {counted(len(existing), 'path')} already {verb} in {display(dest)}: "
            f"{describe_problems(existing)}; use --force to replace them; nothing was extracted"
        )
    return ExtractSummary(tuple(top), files, directories, links, nbytes, replaced)


def extract_archive(archive: Path, dest: Path, *, force: bool) -> ExtractSummary:
    """Extract a tar.gz into `dest` after `plan_extraction` accepted all of it. tarfile's "data" filter checks every
    member again as it is written (a path changed on disk meanwhile); with `force` an existing file or link is
    removed before its member is written, so nothing is ever written through a link that was already there."""
    summary = plan_extraction(archive, dest, force=force)

    def checked(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        member = tarfile.data_filter(member, path)
        target = os.path.join(path, member.name)
        if os.path.lexists(target) and not (os.path.isdir(target) and not os.path.islink(target)):
            if not force:
                raise ConfigError(f"{display(target)} appeared during the extraction; use --force to replace it")
            os.unlink(target)
        return member

    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.errorlevel = 2  # a refused member raises (at the default level 1, extractall skips it silently)
            tar.extractall(dest, filter=checked)
    except tarfile.FilterError as exc:
        raise ValidationError(f"refusing to extract: {exc}", stage="extract") from exc
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValidationError(f"{display(archive.name)} is not a readable tar.gz: {exc}", stage="extract") from exc
    except OSError as exc:
        raise EntryError(f"extraction into {display(dest)} failed: {exc.strerror or exc}", stage="extract") from exc
    return summary


def source_digest(archive: Path, *, is_directory: bool) -> str:
    """The source SHA-256 that `local.archive.compress_entry` recorded for the entry this tar.gz holds, recomputed
    from its members in archive order: a file entry's bytes, or a directory's manifest (`manifest_line` per member).
    Reads the archive as a stream; writes nothing."""
    from amgmt.local.archive import manifest_line  # the one definition of the manifest

    manifest = hashlib.sha256()
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                digest = hashlib.sha256()
                if member.isfile():
                    stream = tar.extractfile(member)
                    while stream is not None and (chunk := stream.read(HASH_CHUNK)):
                        digest.update(chunk)
                    if not is_directory:
                        return digest.hexdigest()
                    fields = (b"file", str(member.size).encode("ascii"), digest.hexdigest().encode("ascii"))
                elif member.isdir():
                    fields = (b"dir", b"0", b"")
                elif member.issym():
                    fields = (b"symlink", b"0", os.fsencode(member.linkname))
                else:
                    continue  # amgmt archives no other kind
                manifest.update(manifest_line(os.fsencode(member.name), *fields))
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValidationError(f"{display(archive.name)} is not a readable tar.gz: {exc}", stage="verify") from exc
    except OSError as exc:
        raise EntryError(f"cannot read {display(archive)}: {exc.strerror or exc}", stage="verify") from exc
    if not is_directory:
        raise ValidationError(f"{display(archive.name)} holds no file", stage="verify")
    return manifest.hexdigest()
