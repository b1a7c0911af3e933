"""Which processes hold handles that can still change given files or directories, seen through Linux /proc.

Pure and synchronous: reads /proc only. Used after a same-filesystem move, when a writer that still holds a moved
file open is the one thing an identity check cannot see coming: its next write would land in the completed dir.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

PROC = "/proc"
_WRITE_MODES = (os.O_WRONLY, os.O_RDWR)


@dataclass(frozen=True)
class Writer:
    pid: int  # 0: a process the kernel says exists and /proc does not show (another user's, when not root)
    command: str


def held_for_writing(path: bytes | str, expected: tuple[int, int]) -> bool | None:
    """Whether any process holds the regular file at `path` open for writing or mapped writable, asked of the
    kernel in one call (~45 us, where a /proc scan costs milliseconds): Linux refuses a read lease (fcntl
    F_SETLEASE) exactly then, whoever the holder is. None when the kernel cannot say here: not a regular file, not
    the expected (st_dev, st_ino), no leases (NFS and other filesystems, a file this user neither owns nor has
    CAP_LEASE for, leases disabled): scan /proc instead."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != expected:
            return None
        # Held for microseconds; an opener breaking it meanwhile signals us: SIGURG (ignored by default), not SIGIO
        # (whose default action ends the process).
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as exc:
            return True if exc.errno == errno.EAGAIN else None
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    except OSError:
        return None
    finally:
        os.close(fd)


def holders(
    files: Iterable[tuple[bytes, int, int]], directories: Iterable[tuple[int, int]], scan: WritersOf
) -> list[Writer]:
    """Who can still change a moved entry: `files` are (path, st_dev, st_ino) of its regular files, `directories`
    (st_dev, st_ino) of its directories. Files are asked of the kernel first (held_for_writing, which also sees
    writable memory maps that /proc's descriptors do not show); /proc is scanned (`scan`) only for directories,
    for files the kernel cannot answer for, and to name the holder of a file the kernel says is held."""
    dirs = list(directories)
    held, unknown = [], []
    for path, dev, ino in files:
        answer = held_for_writing(path, (dev, ino))
        if answer is None:
            unknown.append((dev, ino))
        elif answer:
            held.append((dev, ino))
    if not held and not unknown and not dirs:
        return []
    found = scan(held + unknown, directories=dirs)
    if held and not found:
        return [Writer(0, "")]
    return found


class WritersOf(Protocol):
    def __call__(
        self, inodes: Iterable[tuple[int, int]], *, directories: Iterable[tuple[int, int]] = ()
    ) -> list[Writer]: ...


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
    return [writer for writer, _held in _scan(files, dirs, proc)]


@dataclass
class _Request:
    files: set[tuple[int, int]]
    dirs: set[tuple[int, int]]
    answer: list[Writer] | None = None


@dataclass
class SharedScan:
    """`writers_of` for many concurrent moves, one /proc scan serving every request made before it started (as a
    group commit serves saves): a scan costs milliseconds (it stats every descriptor of every process), a run moves
    many entries at once. Each caller blocks its own thread until a scan that started after its call has ended, so
    the answer is as fresh as a scan of its own would be. Thread-safe; callers are worker threads."""

    proc: str = PROC
    scans: int = 0  # how many scans ran (for tests and figures)
    _lock: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _waiting: list[_Request] = field(default_factory=list, repr=False)
    _scanning: bool = False

    def __call__(
        self, inodes: Iterable[tuple[int, int]], *, directories: Iterable[tuple[int, int]] = ()
    ) -> list[Writer]:
        request = _Request(set(inodes), set(directories))
        if not request.files and not request.dirs:
            return []
        with self._lock:
            self._waiting.append(request)
            while request.answer is None:
                if self._scanning:
                    self._lock.wait()  # a scan that started before this call: its answer would be stale
                    continue
                batch, self._waiting = self._waiting, []
                self._scanning = True
                self._lock.release()
                try:
                    self._answer(batch)
                finally:
                    self._lock.acquire()
                    # A scan that failed answered nobody: the others wait for the next one (raised here only).
                    self._waiting[:0] = [r for r in batch if r.answer is None and r is not request]
                    self._scanning = False
                    self.scans += 1
                    self._lock.notify_all()
            return request.answer

    def _answer(self, batch: list[_Request]) -> None:
        files = set().union(*(r.files for r in batch))
        dirs = set().union(*(r.dirs for r in batch))
        found = _scan(files, dirs, self.proc)
        for request in batch:
            request.answer = [w for w, held in found if held & request.files or held & request.dirs]


def _scan(
    files: set[tuple[int, int]], dirs: set[tuple[int, int]], proc: str
) -> list[tuple[Writer, set[tuple[int, int]]]]:
    """Each process (other than this one) holding a handle that can change one of `files` or `dirs`, with the
    (dev, ino) pairs it holds so."""
    try:
        pids = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return []
    own = os.getpid()
    found: list[tuple[Writer, set[tuple[int, int]]]] = []
    for pid in pids:
        if int(pid) == own:
            continue
        held = _handles(f"{proc}/{pid}", files, dirs)
        if held:
            found.append((Writer(int(pid), _command(proc, pid)), held))
    return found


def _handles(base: str, files: set[tuple[int, int]], dirs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    held: set[tuple[int, int]] = set()
    if dirs:
        for link in ("cwd", "root"):
            try:
                st = os.stat(f"{base}/{link}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in dirs:
                held.add((st.st_dev, st.st_ino))
    try:
        fds = os.listdir(f"{base}/fd")
    except OSError:
        return held  # gone, or not ours to read
    for fd in fds:
        try:
            st = os.stat(f"{base}/fd/{fd}")
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in dirs or (key in files and _open_for_writing(f"{base}/fdinfo/{fd}")):
            held.add(key)
    return held


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
