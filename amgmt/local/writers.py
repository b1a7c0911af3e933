"""Which processes hold handles that can still change given files or directories, seen through Linux /proc.

Pure and synchronous: reads /proc only. Used after a same-filesystem move, when a writer that still holds a moved
file open is the one thing an identity check cannot see coming: its next write would land in the completed dir.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

PROC = "/proc"
_WRITE_MODES = (os.O_WRONLY, os.O_RDWR)


@dataclass(frozen=True)
class Writer:
    pid: int
    command: str


def writers_of(
    inodes: Iterable[tuple[int, int]], *, directories: Iterable[tuple[int, int]] = (), proc: str = PROC
) -> list[Writer]:
    """The processes (other than this one) that can still change a moved entry through a handle they hold: a file
    descriptor open for writing on one of `inodes`, or a working directory, root or any descriptor on one of
    `directories` (from there a process creates files by relative names). Both are (st_dev, st_ino) pairs.
    Processes whose /proc entries this user may not read are not seen; without /proc the answer is empty."""
    files, dirs = set(inodes), set(directories)
    if not files and not dirs:
        return []
    try:
        pids = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return []
    own = os.getpid()
    found: list[Writer] = []
    for pid in pids:
        if int(pid) != own and _holds_a_handle(f"{proc}/{pid}", files, dirs):
            found.append(Writer(int(pid), _command(proc, pid)))
    return found


def _holds_a_handle(base: str, files: set[tuple[int, int]], dirs: set[tuple[int, int]]) -> bool:
    if dirs:
        for link in ("cwd", "root"):
            try:
                st = os.stat(f"{base}/{link}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in dirs:
                return True
    try:
        fds = os.listdir(f"{base}/fd")
    except OSError:
        return False  # gone, or not ours to read
    for fd in fds:
        try:
            st = os.stat(f"{base}/fd/{fd}")
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in dirs or (key in files and _open_for_writing(f"{base}/fdinfo/{fd}")):
            return True
    return False


def _open_for_writing(fdinfo: str) -> bool:
    try:
        with open(fdinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE in _WRITE_MODES
    except (OSError, ValueError, IndexError):
        pass
    return False


def _command(proc: str, pid: str) -> str:
    try:
        with open(f"{proc}/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"
