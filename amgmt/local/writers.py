"""Which processes hold given files open for writing, seen through Linux /proc (nothing elsewhere).

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


def writers_of(inodes: Iterable[tuple[int, int]], *, proc: str = PROC) -> list[Writer]:
    """The processes (other than this one) with a file descriptor open for writing on one of `inodes`
    ((st_dev, st_ino) pairs). Processes whose descriptors this user may not read are not seen; without /proc the
    answer is empty."""
    wanted = set(inodes)
    if not wanted:
        return []
    try:
        pids = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return []
    own = os.getpid()
    found: list[Writer] = []
    for pid in pids:
        if int(pid) == own:
            continue
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in wanted and _open_for_writing(f"{proc}/{pid}/fdinfo/{fd}"):
                found.append(Writer(int(pid), _command(proc, pid)))
                break
    return found


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
