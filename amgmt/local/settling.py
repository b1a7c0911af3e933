"""Whether an entry has finished arriving: what it looks like now (members, sizes, times), who still holds it open
for writing, and the rules that call it settled, by watching it over time or by the age of its last change.

Pure and synchronous: lstat, scandir and /proc (through writers.py); the times are given, never read from a clock
here except where a function says so. It never opens a file's contents.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from amgmt.local.identity import Identity, members_of
from amgmt.local.writers import Writer, holders, writers_of
from amgmt.naming import display
from amgmt.text import human_duration, printable


@dataclass(frozen=True)
class Look:
    """An entry as seen at one moment. `fingerprint` changes whenever a member is added, removed, renamed, written
    or has its attributes changed (it holds every file's size, mtime and ctime, every directory's ctime); None when
    the entry is gone or is not a regular file or directory; the reason, for one that cannot be walked."""

    path: Path
    fingerprint: str | None
    newest_change: float = 0.0  # the latest ctime (seconds since the epoch) of any member, directories included
    files: tuple[tuple[bytes, int, int], ...] = ()  # (path, st_dev, st_ino) of its regular files
    dirs: tuple[tuple[int, int], ...] = ()  # and of its directories
    problem: str | None = None  # why it could not be looked at (permission denied, ...)

    @property
    def gone(self) -> bool:
        return self.fingerprint is None


def look_at(path: Path) -> Look:
    """The entry at `path` now, walked without following symlinks (one lstat per member, one more per directory)."""
    try:
        members = members_of(path)
    except FileNotFoundError:
        return Look(path, None) if not os.path.lexists(path) else _changing(path)  # a member went while walked
    except OSError as exc:
        # Not gone: it settles like any entry (while the reason stays the same), and its pipeline says why it fails.
        problem = f"{display(path)}: {exc.strerror or exc}"
        return Look(path, f"unreadable: {problem}", problem=problem)
    root = members[0]
    if root.kind not in ("file", "dir"):
        return Look(path, None)
    identity = Identity.of_members(members)
    newest = max((m.ctime_ns for m in members), default=0)
    digest = hashlib.sha256(f"{identity.digest}:{identity.root_ctime_ns}".encode())
    dirs = [m for m in members if m.kind == "dir"]
    for member in dirs:
        # A member added to or removed from a directory changes only that directory's times (the identity leaves
        # them out): a file created and deleted again between two looks still shows.
        try:
            ctime_ns = os.lstat(os.path.join(path, os.fsdecode(member.relpath))).st_ctime_ns
        except OSError:
            return _changing(path)
        newest = max(newest, ctime_ns)
        digest.update(member.relpath + b"\0" + str(ctime_ns).encode() + b"\n")
    return Look(
        path,
        fingerprint=digest.hexdigest(),
        newest_change=newest / 1e9,
        files=tuple((_member_path(path, m.relpath), m.dev, m.ino) for m in members if m.kind == "file"),
        dirs=tuple((m.dev, m.ino) for m in dirs),
    )


def look_at_all(paths: Sequence[Path]) -> list[Look]:
    return [look_at(path) for path in paths]


def _changing(path: Path) -> Look:
    """An entry whose members come and go while it is walked: a fingerprint no other look can have."""
    return Look(path, f"changing:{time.monotonic_ns()}", newest_change=time.time())


def _member_path(root: Path, relpath: bytes) -> bytes:
    return os.fsencode(root) + (b"/" + relpath if relpath else b"")


def held_open(looks: Sequence[Look]) -> dict[Path, list[Writer]]:
    """The entries of `looks` that a process holds open for writing (or works inside, for a directory), with those
    processes: the rule the move after the upload applies (writers.holders: the kernel's read lease for each file,
    /proc for directories and what the kernel cannot answer). One round for all of them, and one more per entry
    only when something is held."""
    present = [look for look in looks if not look.gone]
    every_file = [f for look in present for f in look.files]
    if not present or not holders(every_file, [d for look in present for d in look.dirs], writers_of):
        return {}
    held: dict[Path, list[Writer]] = {}
    for look in present:
        writers = holders(look.files, look.dirs, writers_of)
        if writers:
            held[look.path] = writers
    return held


def describe_writers(writers: Sequence[Writer]) -> str:
    """`pid N (command)`, as the move says it; a holder the kernel reports and /proc does not show has no pid."""
    return ", ".join(f"pid {w.pid} ({printable(w.command)})" if w.pid else "a process" for w in writers[:3])


def too_young(looks: Sequence[Look], *, min_age: float, now: float | None = None) -> dict[Path, str]:
    """`upload all --min-age` and `watch --once`: the entries changed less than `min_age` seconds ago, or held open
    for writing, each with the reason it is left for later. This trusts the file system's clock (ctime): on a
    network file system whose server clock runs behind, an entry looks older than it is."""
    now = time.time() if now is None else now
    young: dict[Path, str] = {}
    for look in looks:
        if look.gone:
            continue
        age = now - look.newest_change
        if age < min_age:
            young[look.path] = f"changed {human_duration(max(age, 0.0))} ago (younger than {min_age:g} s)"
    for path, writers in held_open([look for look in looks if look.path not in young]).items():
        young[path] = f"open for writing by {describe_writers(writers)}"
    return young


@dataclass
class Settling:
    """One entry watched over time: the fingerprint it has had since `since` (a monotonic time)."""

    fingerprint: str | None = None
    since: float = 0.0
    held_by: str | None = None  # who held it open at the last check

    def settles_at(self, settle: float) -> float:
        return self.since + settle


@dataclass
class SettleClock:
    """The rule of `amgmt watch`: an entry is settled when two looks at least `settle` seconds apart saw the same
    fingerprint (every write or attribute change moves a ctime, which nobody can set back, so nothing changed in
    between) and no process holds it open for writing. It does not trust the file system's clock."""

    settle: float
    entries: dict[Path, Settling] = field(default_factory=dict)

    def observe(self, look: Look, now: float) -> bool:
        """Record `look` (taken at monotonic time `now`); True when the entry has kept its fingerprint for
        `settle` seconds (the writers are checked apart, see held_open)."""
        state = self.entries.setdefault(look.path, Settling(look.fingerprint, now))
        if look.fingerprint != state.fingerprint:
            state.fingerprint, state.since, state.held_by = look.fingerprint, now, None
            return False
        return look.fingerprint is not None and now - state.since >= self.settle

    def forget(self, path: Path) -> None:
        self.entries.pop(path, None)
