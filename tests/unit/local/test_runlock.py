"""The run lock: an flock on the local dir itself; its holder's pid from /proc/locks when it can be read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from amgmt.local import runlock
from amgmt.errors import BusyError
from amgmt.local.runlock import RunLock, lock_holder


def test_the_holder_is_named_from_proc_locks(tmp_path: Path) -> None:
    with RunLock(tmp_path), pytest.raises(BusyError) as busy:
        RunLock(tmp_path).acquire()
    assert str(busy.value).startswith(f"another amgmt run (pid {os.getpid()}) is uploading from {tmp_path}; ")


def test_without_proc_locks_the_message_names_no_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runlock, "lock_holder", lambda st: None)
    with RunLock(tmp_path), pytest.raises(BusyError) as busy:
        RunLock(tmp_path).acquire()
    assert str(busy.value).startswith(f"another amgmt run is uploading from {tmp_path}; ")


def test_lock_holder_matches_device_and_inode(tmp_path: Path) -> None:
    st = os.stat(tmp_path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    locks = tmp_path / "locks"
    locks.write_text(f"1: FLOCK  ADVISORY  WRITE 111 {dev}:{st.st_ino + 1} 0 EOF\n"
                     f"2: POSIX  ADVISORY  WRITE 222 {dev}:{st.st_ino} 0 EOF\n"
                     f"3: FLOCK  ADVISORY  WRITE 333 {dev}:{st.st_ino} 0 EOF\n")
    assert lock_holder(st, locks=locks) == 333
    assert lock_holder(st, locks=tmp_path / "missing") is None


def test_the_lock_is_released_with_the_run(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        pass
    with RunLock(tmp_path):
        pass
    assert os.listdir(tmp_path) == []  # nothing written into the local dir


# -- the local dir's id in a shared catalog (issue 14) ------------------------------------------------------------


def test_dir_identity_is_made_once_and_kept(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from amgmt.local.runlock import dir_identity

    metadata = tmp_path / "completed" / ".metadata"
    with ThreadPoolExecutor(8) as pool:  # eight runs asking at once agree on one id
        ids = set(pool.map(lambda _: dir_identity(metadata), range(32)))
    assert len(ids) == 1
    [made] = ids
    assert len(made) == 32 and int(made, 16) >= 0
    assert (metadata / "dir-id").read_text() == made + "\n"
    assert sorted(p.name for p in metadata.iterdir()) == ["dir-id"]  # no leftover of the losers
    assert oct(metadata.stat().st_mode & 0o777) == "0o700"
    assert dir_identity(metadata) == made
    assert dir_identity(tmp_path / "elsewhere") != made  # another folder, another id


def test_a_dir_id_amgmt_did_not_make_is_refused(tmp_path: Path) -> None:
    from amgmt.errors import ConfigError
    from amgmt.local.runlock import dir_identity

    (tmp_path / "dir-id").write_text("hello\n")
    with pytest.raises(ConfigError, match=r"^cannot read or make the local dir's id .*dir-id: not an id made by amgmt"):
        dir_identity(tmp_path)
