"""One amgmt run per local dir at a time: an exclusive advisory lock (flock) on the local dir itself.

The lock belongs to the directory, not to a file beside the database, so two runs on one local dir exclude each
other whatever their --db, --completed-dir or staging dir. The kernel drops it when its process dies, so a run
killed with -9 never leaves a stale lock behind, and nothing is ever written into the local dir for it.

With a catalog shared by several hosts (PostgreSQL), flock does not reach across NFS/SMB: the run also takes the
catalog's lock of the local dir, named by `dir_identity` (a file in the metadata dir), in the database
(amgmt.store.Store.run_lock).
"""

from __future__ import annotations

import fcntl
import os
import uuid
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


DIR_ID = "dir-id"


def dir_identity(metadata_dir: Path) -> str:
    """The local dir's id in a catalog shared by several hosts (the name of its run lock there): a random id kept in
    `metadata_dir/dir-id`, made by the first run that asks. A folder shared over NFS/SMB has one id whatever path
    each host mounts it at; the own /data/ingest of two hosts have two. Made whole and then linked into place, so
    that two hosts making it at once agree on the one that got there first."""
    path = metadata_dir / DIR_ID
    try:
        try:
            return _read_id(path)
        except FileNotFoundError:
            pass
        metadata_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        new = metadata_dir / f".{DIR_ID}.{uuid.uuid4().hex}"
        try:
            fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(uuid.uuid4().hex + "\n")
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(new, path)
            except FileExistsError:
                pass  # another run made it first: theirs holds
        finally:
            new.unlink(missing_ok=True)
        return _read_id(path)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read or make the local dir's id {display(path)}: {reason}") from exc


def _read_id(path: Path) -> str:
    text = path.read_text(encoding="ascii").strip()
    if len(text) != 32 or any(ch not in "0123456789abcdef" for ch in text):
        raise ValueError("not an id made by amgmt (32 hex digits): remove it to make a new one")
    return text
