"""The completed dir rules with real files: destinations, duplicates, never overwriting, cross-filesystem moves."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from amgmt.local import completed, copying
from amgmt.local.completed import CompletedDir, completed_destination, find_completed, move_to_completed
from amgmt.errors import MoveError

NOW = datetime(2024, 1, 2, 3, 4, 5)
STAMP = "20240102-030405"


def make_media(root: Path, files: dict[str, bytes | str]) -> Path:
    """Files under root; a `str` value makes a symlink to that target instead."""
    root.mkdir(parents=True, exist_ok=True)
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.symlink_to(content)
        else:
            path.write_bytes(content)
    return root


def snapshot(root: Path) -> dict[str, object]:
    """Everything under root (or root itself if it is a file): bytes of files, targets of symlinks, dirs."""
    if not root.is_dir() or root.is_symlink():
        return {".": root.read_bytes()}
    state: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            state[relative] = ("link", os.readlink(path))
        elif path.is_dir():
            state[relative] = "dir"
        else:
            state[relative] = path.read_bytes()
    return state


def leftovers(directory: Path) -> list[str]:
    if not directory.exists():
        return []
    return [p.name for p in directory.rglob("*") if p.name.startswith((".amgmt-moving-", ".amgmt-removing-"))]


class Dirs:
    def __init__(self, tmp_path: Path) -> None:
        self.local = tmp_path / "local"
        self.local.mkdir()
        self.completed = self.local / "completed"

    def rules(self, *, preserve_structure: bool = False, duplicate_handling: str = "timestamp") -> CompletedDir:
        return CompletedDir(local_dir=self.local, path=self.completed, preserve_structure=preserve_structure,
                            duplicate_handling=duplicate_handling)

    def move(self, entry: Path, *, preserve_structure: bool = False, duplicate_handling: str = "timestamp") -> Path:
        return move_to_completed(entry, self.rules(preserve_structure=preserve_structure,
                                                   duplicate_handling=duplicate_handling), now=NOW)

    def destination(self, entry: Path, *, preserve_structure: bool = False,
                    duplicate_handling: str = "timestamp") -> Path:
        return completed_destination(entry, self.rules(preserve_structure=preserve_structure,
                                                       duplicate_handling=duplicate_handling), now=NOW)

    def find(self, entry: Path, *, preserve_structure: bool = False) -> Path | None:
        return find_completed(entry, self.rules(preserve_structure=preserve_structure))


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    return Dirs(tmp_path)


def move_error(action: Callable[[], object]) -> str:
    with pytest.raises(MoveError) as info:
        action()
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def cross_device(monkeypatch: pytest.MonkeyPatch, dirs: Dirs) -> Iterator[None]:
    """link() and rename() of anything from the local dir fail with EXDEV, as if completed were another filesystem."""
    real_link, real_rename = os.link, os.rename

    def from_local(src: object) -> bool:
        return Path(os.fsdecode(src)).is_relative_to(dirs.local) and not Path(os.fsdecode(src)).is_relative_to(
            dirs.completed
        )

    def link(src: object, dst: object, **kwargs: object) -> None:
        if from_local(src):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), src, dst)
        real_link(src, dst, **kwargs)  # type: ignore[arg-type]

    def rename(src: object, dst: object, **kwargs: object) -> None:
        if from_local(src) and not from_local(dst):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), src, dst)
        real_rename(src, dst, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(completed.os, "link", link)
    monkeypatch.setattr(completed.os, "rename", rename)
    yield


# --- plain moves -----------------------------------------------------------------------------------------------------


def test_move_a_file(dirs: Dirs) -> None:
    entry = dirs.local / "clip.mp4"
    entry.write_bytes(b"video" * 1000)
    os.utime(entry, (1_600_000_000, 1_600_000_000))

    final = dirs.move(entry)

    assert final == dirs.completed / "clip.mp4"
    assert final.read_bytes() == b"video" * 1000
    assert final.stat().st_mtime == 1_600_000_000
    assert not entry.exists()


def test_move_a_directory_with_a_symlink_inside(dirs: Dirs) -> None:
    entry = make_media(dirs.local / "shoot", {"a.mov": b"a" * 10, "raw/b.dng": b"b" * 20, "latest": "a.mov"})
    before = snapshot(entry)

    final = dirs.move(entry)

    assert final == dirs.completed / "shoot"
    assert snapshot(final) == before
    assert (final / "latest").is_symlink()
    assert not entry.exists()


def test_preserve_structure_with_a_nested_entry(dirs: Dirs) -> None:
    nested = make_media(dirs.local / "2024" / "june", {"clip.mp4": b"x"}) / "clip.mp4"
    assert dirs.destination(nested, preserve_structure=True) == dirs.completed / "2024" / "june" / "clip.mp4"
    assert dirs.destination(nested) == dirs.completed / "clip.mp4"

    final = dirs.move(nested, preserve_structure=True)

    assert final == dirs.completed / "2024" / "june" / "clip.mp4"
    assert final.read_bytes() == b"x"
    assert not nested.exists()


def test_preserve_structure_refuses_an_entry_outside_the_local_dir(dirs: Dirs, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.mp4"
    outside.write_bytes(b"x")
    assert "not inside the local dir" in move_error(lambda: dirs.move(outside, preserve_structure=True))
    assert outside.read_bytes() == b"x"
    with pytest.raises(ValueError):
        dirs.find(outside, preserve_structure=True)


def test_missing_entry(dirs: Dirs) -> None:
    message = move_error(lambda: dirs.move(dirs.local / "ghost.mp4"))
    assert "ghost.mp4" in message


def test_a_directory_holding_the_completed_dir_is_refused(dirs: Dirs) -> None:
    entry = make_media(dirs.local / "shoot", {"a": b"a"})
    before = snapshot(entry)
    message = move_error(lambda: move_to_completed(
        entry, CompletedDir(local_dir=dirs.local, path=entry / "completed", preserve_structure=False,
                            duplicate_handling="timestamp"), now=NOW))
    assert "inside it" in message
    assert snapshot(entry) == before


# --- duplicates ------------------------------------------------------------------------------------------------------


def test_timestamp_mode_with_repeated_collisions(dirs: Dirs) -> None:
    names = []
    for round_ in range(4):
        entry = dirs.local / "clip.mp4"
        entry.write_bytes(f"take {round_}".encode())
        names.append(dirs.move(entry).name)
    assert names == ["clip.mp4", f"{STAMP}_clip.mp4", f"{STAMP}-1_clip.mp4", f"{STAMP}-2_clip.mp4"]
    assert [(dirs.completed / name).read_text() for name in names] == [f"take {i}" for i in range(4)]


def test_timestamp_mode_for_a_directory_with_preserve_structure(dirs: Dirs) -> None:
    make_media(dirs.completed / "a" / "shoot", {"old": b"old"})
    entry = make_media(dirs.local / "a" / "shoot", {"new": b"new"})
    expected = dirs.completed / "a" / f"{STAMP}_shoot"
    assert dirs.destination(entry, preserve_structure=True) == expected
    assert dirs.move(entry, preserve_structure=True) == expected
    assert snapshot(expected) == {"new": b"new"}
    assert snapshot(dirs.completed / "a" / "shoot") == {"old": b"old"}


def test_subdirectory_mode_with_repeated_collisions(dirs: Dirs) -> None:
    finals = []
    for round_ in range(3):
        entry = make_media(dirs.local / "2024", {"clip.mp4": f"take {round_}".encode()}) / "clip.mp4"
        finals.append(dirs.move(entry, preserve_structure=True, duplicate_handling="subdirectory"))
    assert finals == [
        dirs.completed / "2024" / "clip.mp4",
        dirs.completed / STAMP / "2024" / "clip.mp4",
        dirs.completed / f"{STAMP}-1" / "2024" / "clip.mp4",
    ]
    assert [path.read_text() for path in finals] == ["take 0", "take 1", "take 2"]


def test_error_mode(dirs: Dirs) -> None:
    make_media(dirs.completed, {"clip.mp4": b"old"})
    entry = make_media(dirs.local, {"clip.mp4": b"new"}) / "clip.mp4"
    for action in (lambda: dirs.destination(entry, duplicate_handling="error"),
                   lambda: dirs.move(entry, duplicate_handling="error")):
        message = move_error(action)
        assert "already exists in the completed dir" in message and "clip.mp4" in message
    assert entry.read_bytes() == b"new"
    assert (dirs.completed / "clip.mp4").read_bytes() == b"old"
    assert dirs.destination(dirs.local / "other.mp4", duplicate_handling="error") == dirs.completed / "other.mp4"


def test_a_dangling_symlink_occupies_its_name(dirs: Dirs) -> None:
    dirs.completed.mkdir()
    (dirs.completed / "clip.mp4").symlink_to("nowhere")
    entry = make_media(dirs.local, {"clip.mp4": b"x"}) / "clip.mp4"
    assert dirs.move(entry) == dirs.completed / f"{STAMP}_clip.mp4"
    assert (dirs.completed / "clip.mp4").is_symlink()


def test_unknown_duplicate_mode(dirs: Dirs) -> None:
    with pytest.raises(ValueError):
        dirs.destination(dirs.local / "x", duplicate_handling="overwrite")


# --- never overwrite, even when the name is taken after the check ---------------------------------------------------


@pytest.fixture(params=["hard links", "no hard links"])
def racing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Existence checks see nothing, as if every name were taken between the check and the move."""
    monkeypatch.setattr(completed, "taken", lambda path: False)
    if request.param == "no hard links":
        def no_link(src: object, dst: object, **kwargs: object) -> None:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), src, dst)

        monkeypatch.setattr(completed.os, "link", no_link)


@pytest.mark.parametrize("entry_kind", ["file", "dir"])
@pytest.mark.usefixtures("racing")
def test_an_existing_file_and_an_existing_empty_dir_survive(dirs: Dirs, entry_kind: str) -> None:
    make_media(dirs.completed, {"taken-by-file": b"precious"})
    (dirs.completed / f"{STAMP}_taken-by-file").mkdir()  # an EMPTY dir: rename() would silently replace it
    if entry_kind == "file":
        entry = make_media(dirs.local, {"taken-by-file": b"new"}) / "taken-by-file"
    else:
        entry = make_media(dirs.local / "taken-by-file", {"inner": b"new"})
    before = snapshot(entry)

    final = dirs.move(entry)

    assert final == dirs.completed / f"{STAMP}-1_taken-by-file"
    assert snapshot(final) == before
    assert (dirs.completed / "taken-by-file").read_bytes() == b"precious"
    assert list((dirs.completed / f"{STAMP}_taken-by-file").iterdir()) == []
    assert not entry.exists()


@pytest.mark.usefixtures("racing")
def test_error_mode_when_the_name_is_taken_after_the_check(dirs: Dirs) -> None:
    dirs.completed.mkdir()
    (dirs.completed / "clip.mp4").mkdir()
    entry = make_media(dirs.local, {"clip.mp4": b"new"}) / "clip.mp4"
    assert "already exists in the completed dir" in move_error(lambda: dirs.move(entry, duplicate_handling="error"))
    assert entry.read_bytes() == b"new"
    assert list((dirs.completed / "clip.mp4").iterdir()) == []


def test_failing_to_unlink_the_original_after_linking_undoes_the_link(dirs: Dirs,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    entry = make_media(dirs.local, {"clip.mp4": b"x"}) / "clip.mp4"
    real_unlink = os.unlink

    def unlink(path: object, **kwargs: object) -> None:
        if Path(os.fsdecode(path)) == entry:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        real_unlink(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(completed.os, "unlink", unlink)
    move_error(lambda: dirs.move(entry))
    assert entry.read_bytes() == b"x"
    assert list(dirs.completed.iterdir()) == []


# --- across filesystems ------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("cross_device")
def test_cross_filesystem_file_move(dirs: Dirs) -> None:
    entry = make_media(dirs.local, {"clip.mp4": b"v" * 100_000}) / "clip.mp4"
    os.chmod(entry, 0o640)
    os.utime(entry, (1_600_000_000, 1_600_000_000))
    make_media(dirs.completed, {"clip.mp4": b"old"})
    inode = entry.stat().st_ino

    final = dirs.move(entry)

    assert final == dirs.completed / f"{STAMP}_clip.mp4"
    assert final.stat().st_ino != inode, "a copy, not a rename"
    assert final.read_bytes() == b"v" * 100_000
    assert final.stat().st_mtime == 1_600_000_000
    assert final.stat().st_mode & 0o777 == 0o640
    assert (dirs.completed / "clip.mp4").read_bytes() == b"old"
    assert not entry.exists()
    assert leftovers(dirs.completed) == [] and leftovers(dirs.local) == []


@pytest.mark.usefixtures("cross_device")
def test_cross_filesystem_directory_move_keeps_symlinks(dirs: Dirs) -> None:
    entry = make_media(dirs.local / "2024" / "shoot",
                       {"a.mov": b"a" * 5000, "raw/b.dng": b"b" * 7000, "raw/link": "../a.mov", "gone": "missing"})
    os.utime(entry / "a.mov", (1_600_000_000, 1_600_000_000))
    before = snapshot(entry)
    inode = entry.stat().st_ino

    final = dirs.move(entry, preserve_structure=True)

    assert final == dirs.completed / "2024" / "shoot"
    assert final.stat().st_ino != inode, "a copy, not a rename"
    assert snapshot(final) == before
    assert (final / "raw" / "link").is_symlink() and (final / "gone").is_symlink()
    assert (final / "a.mov").stat().st_mtime == 1_600_000_000
    assert not entry.exists()
    assert leftovers(dirs.completed) == [] and leftovers(dirs.local) == []


@pytest.mark.usefixtures("cross_device")
def test_cross_filesystem_copy_failure_midway_leaves_the_source_and_no_temp(dirs: Dirs,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    entry = make_media(dirs.local / "shoot", {"1.mov": b"1" * 1000, "2.mov": b"2" * 1000, "3.mov": b"3" * 1000})
    before = snapshot(entry)
    real_copy = copying._copy_file
    copied: list[str] = []

    def copy_file(src: str, dst: str) -> object:
        if copied:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)
        copied.append(src)
        return real_copy(src, dst)

    monkeypatch.setattr(copying, "_copy_file", copy_file)

    message = move_error(lambda: dirs.move(entry))

    assert "shoot" in message and "No space left on device" in message
    assert copied, "the copy started before it failed"
    assert snapshot(entry) == before
    assert not (dirs.completed / "shoot").exists()
    assert leftovers(dirs.completed) == []


@pytest.mark.usefixtures("cross_device")
def test_cross_filesystem_file_copy_failure(dirs: Dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = make_media(dirs.local, {"clip.mp4": b"x" * 1000}) / "clip.mp4"
    real_copy = copying._copy_file

    def copy_file(src: str, dst: str) -> object:
        real_copy(src, dst)
        raise OSError(errno.EIO, os.strerror(errno.EIO), dst)

    monkeypatch.setattr(copying, "_copy_file", copy_file)
    move_error(lambda: dirs.move(entry))
    assert entry.read_bytes() == b"x" * 1000
    assert list(dirs.completed.iterdir()) == []


@pytest.mark.usefixtures("cross_device")
def test_cross_filesystem_original_that_cannot_be_removed_rolls_back(dirs: Dirs,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    entry = make_media(dirs.local / "shoot", {"a": b"a"})
    before = snapshot(entry)

    def refuse(path: Path, *, is_dir: bool) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(completed, "_remove_original", refuse)
    move_error(lambda: dirs.move(entry))
    assert snapshot(entry) == before
    assert list(dirs.completed.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
@pytest.mark.usefixtures("cross_device")
def test_cross_filesystem_refuses_before_copying_when_the_original_cannot_be_removed(dirs: Dirs) -> None:
    entry = make_media(dirs.local / "shoot", {"locked/a": b"a"})
    (entry / "locked").chmod(0o500)
    try:
        assert "could not be removed" in move_error(lambda: dirs.move(entry))
        assert not (dirs.completed / "shoot").exists() and leftovers(dirs.completed) == []
    finally:
        (entry / "locked").chmod(0o700)
    assert snapshot(entry) == {"locked": "dir", "locked/a": b"a"}


@pytest.mark.usefixtures("cross_device")
def test_cross_filesystem_refusal_works_for_root_too(dirs: Dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = make_media(dirs.local / "shoot", {"locked/a": b"a"})
    real_access = os.access
    monkeypatch.setattr(completed.os, "access",
                        lambda path, mode: Path(path) != entry / "locked" and real_access(path, mode))
    assert "could not be removed" in move_error(lambda: dirs.move(entry))
    assert snapshot(entry) == {"locked": "dir", "locked/a": b"a"}
    assert not (dirs.completed / "shoot").exists() and leftovers(dirs.completed) == []


def _shm_is_another_filesystem(tmp_path: Path) -> bool:
    return Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) and (
        os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev)


def test_real_cross_filesystem_move(tmp_path: Path) -> None:
    if not _shm_is_another_filesystem(tmp_path):
        pytest.skip("/dev/shm is not a separate writable filesystem here")
    local = Path(tempfile.mkdtemp(prefix="amgmt-test-", dir="/dev/shm"))
    try:
        folder = make_media(local / "shoot", {"a.mov": b"a" * 3000, "sub/b": b"b", "link": "a.mov"})
        single = make_media(local, {"clip.mp4": b"c" * 2000}) / "clip.mp4"
        before = snapshot(folder)
        done = tmp_path / "completed"
        rules = CompletedDir(local_dir=local, path=done, preserve_structure=False, duplicate_handling="timestamp")

        assert move_to_completed(folder, rules, now=NOW) == done / "shoot"
        assert move_to_completed(single, rules, now=NOW) == done / "clip.mp4"

        assert snapshot(done / "shoot") == before
        assert (done / "clip.mp4").read_bytes() == b"c" * 2000
        assert list(local.iterdir()) == []
        assert leftovers(done) == []
    finally:
        shutil.rmtree(local, ignore_errors=True)


# --- an unusable completed dir ---------------------------------------------------------------------------------------


def test_completed_dir_that_is_a_regular_file(dirs: Dirs) -> None:
    dirs.completed.write_bytes(b"not a dir")
    entry = make_media(dirs.local, {"clip.mp4": b"x"}) / "clip.mp4"
    message = move_error(lambda: dirs.move(entry))
    assert "clip.mp4" in message
    assert entry.read_bytes() == b"x"
    assert dirs.completed.read_bytes() == b"not a dir"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
@pytest.mark.parametrize("entry_kind", ["file", "dir"])
def test_unwritable_completed_dir(dirs: Dirs, entry_kind: str) -> None:
    dirs.completed.mkdir()
    dirs.completed.chmod(0o500)
    entry = (make_media(dirs.local, {"clip.mp4": b"x"}) / "clip.mp4" if entry_kind == "file"
             else make_media(dirs.local / "shoot", {"a": b"a"}))
    before = snapshot(entry)
    try:
        message = move_error(lambda: dirs.move(entry))
    finally:
        dirs.completed.chmod(0o700)
    assert entry.name in message and "Permission denied" in message
    assert snapshot(entry) == before
    assert list(dirs.completed.iterdir()) == []


@pytest.mark.parametrize("entry_kind", ["file", "dir"])
def test_permission_denied_in_the_completed_dir(dirs: Dirs, entry_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same refusal as an unwritable dir, injected so that it also holds when the tests run as root."""
    dirs.completed.mkdir()
    entry = (make_media(dirs.local, {"clip.mp4": b"x"}) / "clip.mp4" if entry_kind == "file"
             else make_media(dirs.local / "shoot", {"a": b"a"}))
    before = snapshot(entry)

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), args[-1])

    monkeypatch.setattr(completed.os, "link", denied)
    monkeypatch.setattr(completed.os, "mkdir", denied)
    message = move_error(lambda: dirs.move(entry))
    assert entry.name in message and "Permission denied" in message
    assert snapshot(entry) == before
    assert list(dirs.completed.iterdir()) == []


# --- find_completed ------------------------------------------------------------------------------------------------


def test_find_completed_is_only_the_same_file_left_by_an_interrupted_move(dirs: Dirs) -> None:
    """Same name, size and mtime in the completed dir is another file (a re-render, another take): not "done".
    Only the very same inode (a move killed between link and unlink) is found."""
    entry = make_media(dirs.local, {"clip.mp4": b"12345"}) / "clip.mp4"
    assert dirs.find(entry) is None
    make_media(dirs.completed, {"clip.mp4": b"abcde"})
    os.utime(dirs.completed / "clip.mp4", ns=(entry.stat().st_atime_ns, entry.stat().st_mtime_ns))
    assert dirs.find(entry) is None
    (dirs.completed / "clip.mp4").unlink()
    os.link(entry, dirs.completed / "clip.mp4")
    assert dirs.find(entry) == dirs.completed / "clip.mp4"


def test_find_completed_directory_of_the_same_size_is_not_done(dirs: Dirs) -> None:
    entry = make_media(dirs.local / "shoot", {"a": b"a" * 10, "sub/b": b"b" * 5, "link": "a"})
    make_media(dirs.completed / "shoot", {"a": b"x" * 10, "sub/b": b"y" * 5, "other-link": "/etc/hostname"})
    assert dirs.find(entry) is None


def test_find_completed_kind_must_match(dirs: Dirs) -> None:
    file_entry = make_media(dirs.local, {"same-name": b""}) / "same-name"
    (dirs.completed / "same-name").mkdir(parents=True)
    assert dirs.find(file_entry) is None


def test_find_completed_with_preserve_structure(dirs: Dirs) -> None:
    entry = make_media(dirs.local / "2024", {"clip.mp4": b"xyz"}) / "clip.mp4"
    dirs.completed.mkdir()
    os.link(entry, dirs.completed / "clip.mp4")
    assert dirs.find(entry) == dirs.completed / "clip.mp4"
    assert dirs.find(entry, preserve_structure=True) is None
    (dirs.completed / "2024").mkdir()
    os.link(entry, dirs.completed / "2024" / "clip.mp4")
    assert dirs.find(entry, preserve_structure=True) == dirs.completed / "2024" / "clip.mp4"


def test_find_completed_only_looks_at_the_plain_destination(dirs: Dirs) -> None:
    entry = make_media(dirs.local, {"clip.mp4": b"xyz"}) / "clip.mp4"
    dirs.completed.mkdir()
    os.link(entry, dirs.completed / f"{STAMP}_clip.mp4")
    assert dirs.find(entry) is None
    assert dirs.find(dirs.local / "missing.mp4") is None
