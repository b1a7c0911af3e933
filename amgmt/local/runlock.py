"""One amgmt run per local dir at a time: an exclusive advisory lock (flock) on the local dir itself.

The lock belongs to the directory, not to a file beside the database, so two runs on one local dir exclude each
other whatever their --db, --completed-dir or staging dir. The kernel drops it when its process dies, so a run
killed with -9 never leaves a stale lock behind, and nothing is ever written into the local dir for it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from amgmt.errors import BusyError, ConfigError
from amgmt.naming import display

PROC_LOCKS = Path("/proc/locks")


def lock_holder(st: os.stat_result, *, locks: Path = PROC_LOCKS) -> int | None:
    """The pid holding a flock on the file of `st`, from /proc/locks (`1: FLOCK ADVISORY WRITE PID MAJ:MIN:INO ...`,
    the device numbers in hex); None when it cannot be told (no /proc, another pid namespace's holder)."""
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = locks.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted and fields[4].isdigit():
            return int(fields[4])
    return None


class RunLock:
    """`with RunLock(local_dir):` holds the local dir's lock, or raises BusyError (exit 5) naming the holder."""

    def __init__(self, local_dir: Path) -> None:
        self.local_dir = local_dir
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.local_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the local dir {display(self.local_dir)} to lock it: {exc.strerror}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(os.fstat(fd))
            os.close(fd)
            who = f"another amgmt run (pid {holder})" if holder is not None else "another amgmt run"
            raise BusyError(
                f"{who} is uploading from {display(self.local_dir)}; wait for it to finish, or stop it (Ctrl-C) first"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"cannot lock the local dir {display(self.local_dir)}: {exc.strerror}") from exc
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
