"""The identity of an entry on disk (which inodes, sizes and times it is made of) and whether it changed since.

Pure and synchronous: lstat and scandir only, never a file's contents, no anyio. Used by archive.py (computed in the
packing pass), completed.py (before and after a move) and move_recovery.py (recovery of an interrupted move).

A member is the entry's root or anything below it, directories not followed through symlinks. Its line is

    relpath NUL kind NUL dev NUL ino NUL size NUL mtime_ns NUL ctime_ns LF

where relpath is the path below the root as file-system bytes (empty for the root itself, so a renamed entry keeps
its identity), kind is file, dir, symlink, fifo, socket, chardev or blockdev. Only regular files and symlinks carry
size and times; a directory's times change whenever a member is added or removed, which the member list shows
anyway, and a special file is never read. The fingerprint is the hex SHA-256 of the lines sorted by relpath, with
the root's ctime left out (a same-filesystem move changes it, not the content) and kept beside it instead.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
}


def kind_of(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), "other")


@dataclass(frozen=True)
class Member:
    relpath: bytes  # below the root; b"" for the root
    kind: str
    dev: int
    ino: int
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0

    @classmethod
    def of(cls, relpath: bytes, st: os.stat_result) -> Member:
        kind = kind_of(st.st_mode)
        if kind in ("file", "symlink"):
            return cls(relpath, kind, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return cls(relpath, kind, st.st_dev, st.st_ino)

    def line(self, *, with_ctime: bool = True) -> bytes:
        if self.kind in ("file", "symlink"):
            times = (str(self.size), str(self.mtime_ns), str(self.ctime_ns) if with_ctime else "")
        else:
            times = ("", "", "")
        fields = (self.kind, str(self.dev), str(self.ino), *times)
        return self.relpath + b"\0" + b"\0".join(f.encode("ascii") for f in fields) + b"\n"


@dataclass(frozen=True)
class Identity:
    """What an entry was made of at one moment: its fingerprint, plus a summary to say what differs."""

    digest: str  # hex SHA-256 of the sorted member lines, the root's ctime left out
    root_ctime_ns: int
    kind: str  # of the root
    dev: int
    ino: int
    size: int  # bytes of regular files
    members: int  # the root included

    @classmethod
    def of_members(cls, members: Iterable[Member]) -> Identity:
        ordered = sorted(members, key=lambda m: m.relpath)
        if not ordered or ordered[0].relpath != b"":
            raise ValueError("an identity needs its root member")
        root = ordered[0]
        digest = hashlib.sha256()
        for member in ordered:
            digest.update(member.line(with_ctime=member is not root))
        return cls(
            digest=digest.hexdigest(),
            root_ctime_ns=root.ctime_ns,
            kind=root.kind,
            dev=root.dev,
            ino=root.ino,
            size=sum(m.size for m in ordered if m.kind == "file"),
            members=len(ordered),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "root_ctime_ns": self.root_ctime_ns,
            "kind": self.kind,
            "dev": self.dev,
            "ino": self.ino,
            "size": self.size,
            "members": self.members,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Identity:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def identity_of(path: str | os.PathLike[str]) -> Identity:
    """The identity of the entry at `path` now, walked iteratively (any depth) without following symlinks.

    Raises OSError (FileNotFoundError if it is gone, ENAMETOOLONG, EACCES...) with the path that failed."""
    return Identity.of_members(members_of(path))


def members_of(path: str | os.PathLike[str]) -> list[Member]:
    """The members of the entry at `path` now (see identity_of), the root first."""
    root = os.fspath(path)
    members = [Member.of(b"", os.lstat(root))]
    if members[0].kind == "dir":
        pending: list[tuple[str, bytes]] = [(root, b"")]
        while pending:
            directory, prefix = pending.pop()
            with os.scandir(directory) as it:
                found = [(e.path, prefix + os.fsencode(e.name), e.stat(follow_symlinks=False)) for e in it]
            for child, relpath, st in found:
                member = Member.of(relpath, st)
                members.append(member)
                if member.kind == "dir":
                    pending.append((child, relpath + b"/"))
    return members


def same_identity(expected: Identity, actual: Identity, *, ignore_root_ctime: bool = False) -> bool:
    """Whether `actual` is `expected` unchanged; `ignore_root_ctime` after a same-filesystem move of the root."""
    if expected.digest != actual.digest:
        return False
    return ignore_root_ctime or expected.root_ctime_ns == actual.root_ctime_ns


def describe_change(expected: Identity, actual: Identity | None) -> str:
    """What differs, in a few words, for the record's message."""
    if actual is None:
        return "it was deleted"
    if (actual.kind, actual.dev, actual.ino) != (expected.kind, expected.dev, expected.ino):
        what = "directory" if actual.kind == "dir" else "file" if actual.kind == "file" else actual.kind
        return f"it was replaced by another {what}"
    changes = []
    if actual.members != expected.members:
        changes.append(f"{expected.members} -> {actual.members} members")
    if actual.size != expected.size:
        changes.append(f"{expected.size} -> {actual.size} bytes")
    if changes:
        return ", ".join(changes)
    if expected.kind == "dir":
        return "a member was modified, replaced or renamed"
    if actual.digest != expected.digest:
        return "it was written (same size, new modification time)"
    return "it was written or its inode changed (new ctime)"
