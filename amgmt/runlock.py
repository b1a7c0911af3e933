"""One upload run per local dir at a time: an exclusive advisory lock (flock) on a file in the metadata dir,
named after the local dir (`run-<sha1 of its path>.lock`).

The kernel drops the lock when its process dies, so a run killed with -9 never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from types import TracebackType

from amgmt.errors import BusyError, ConfigError
from amgmt.naming import display

class RunLock:
    def __init__(self, local_dir: Path, lock_dir: Path) -> None:
        self.local_dir = local_dir
        digest = hashlib.sha1(os.fsencode(local_dir)).hexdigest()[:16]
        self.path = lock_dir / f"run-{digest}.lock"
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot create the run lock {display(self.path)}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise BusyError(
                f"another amgmt run (pid {holder}) is uploading from {display(self.local_dir)}; "
                "wait for it to finish, or stop it (Ctrl-C) first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing drops the flock; the file stays (removing it would race with a new holder)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
