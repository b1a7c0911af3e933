"""The move proves what it moves is what was packed: sources changed after packing, during the move, during a
cross-filesystem copy; special files and very deep trees across filesystems; recovery of an interrupted move."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from amgmt.local import completed, copying, move_recovery
from amgmt.local.archive import ArchiveResult, compress_entry
from amgmt.local.completed import CompletedDir, move_to_completed
from amgmt.local.move_recovery import recover_move
from amgmt.errors import MoveError, SourceChangedError
from amgmt.local.identity import identity_of, same_identity

NOW = datetime(2024, 1, 2, 3, 4, 5)
OP = "0123abcd-0000-4000-8000-000000000000"


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def snapshot(root: Path) -> dict[str, object]:
    if not root.is_dir():
        return {".": root.read_bytes()}
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        mode = path.lstat().st_mode
        out[rel] = (path.read_bytes() if stat.S_ISREG(mode) else os.readlink(path) if stat.S_ISLNK(mode)
                    else stat.S_IFMT(mode))
    return out


def leftovers(*directories: Path) -> list[str]:
    return [p.name for d in directories if d.exists() for p in d.iterdir()
            if p.name.startswith((".amgmt-moving-", ".amgmt-removing-"))]


class Setup:
    def __init__(self, local: Path, done: Path, staging: Path) -> None:
        self.local, self.completed, self.staging = local, done, staging

    def pack(self, entry: Path) -> ArchiveResult:
        return compress_entry(str(entry), str(self.staging / f"{entry.name}.tar.gz"), part_size=1 << 20)

    def move(self, entry: Path, packed: ArchiveResult) -> Path:
        return move_to_completed(entry, self.rules, now=NOW, expected_identity=packed.source_identity,
                                 expected_digest=packed.source_sha256, operation_id=OP)

    @property
    def rules(self) -> CompletedDir:
        return CompletedDir(local_dir=self.local, path=self.completed, preserve_structure=False,
                            duplicate_handling="timestamp")


def _shm_usable(tmp_path: Path) -> bool:
    return Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) and (
        os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev)


@pytest.fixture(params=["same-fs", "cross-fs"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    local = tmp_path / "local"
    local.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    if request.param == "same-fs":
        yield Setup(local, local / "completed", staging)
        return
    if not _shm_usable(tmp_path):
        pytest.skip("/dev/shm is not a separate writable filesystem here")
    other = Path(tempfile.mkdtemp(prefix="amgmt-test-", dir="/dev/shm"))
    try:
        yield Setup(local, other / "completed", staging)
    finally:
        shutil.rmtree(other, ignore_errors=True)


@pytest.fixture
def cross(tmp_path: Path) -> Iterator[Setup]:
    if not _shm_usable(tmp_path):
        pytest.skip("/dev/shm is not a separate writable filesystem here")
    local = tmp_path / "local"
    local.mkdir()
    (tmp_path / "staging").mkdir()
    other = Path(tempfile.mkdtemp(prefix="amgmt-test-", dir="/dev/shm"))
    try:
        yield Setup(local, other / "completed", tmp_path / "staging")
    finally:
        shutil.rmtree(other, ignore_errors=True)


def changed_error(action: Callable[[], object]) -> str:
    with pytest.raises(SourceChangedError) as info:
        action()
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the identity ------------------------------------------------------------------------------------------------


def test_the_packing_pass_computes_the_identity_a_walk_computes(tmp_path: Path) -> None:
    entry = make_tree(tmp_path / "shoot", {"a.mov": b"a" * 100, "raw/b": b"b", "raw/deep/c": b""})
    (entry / "link").symlink_to("a.mov")
    os.mkfifo(entry / "raw" / "pipe")
    packed = compress_entry(str(entry), str(tmp_path / "out.tar.gz"), part_size=1 << 20)
    assert packed.source_identity == identity_of(entry)
    assert packed.source_identity.members == 8 and packed.skipped == ("shoot/raw/pipe",)
    moved = tmp_path / "elsewhere"
    os.rename(entry, moved)
    assert same_identity(packed.source_identity, identity_of(moved), ignore_root_ctime=True)


# --- changed after packing: not moved ------------------------------------------------------------------------------


def _append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"more")


def _write_in_place(path: Path) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"X" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _write_in_place_keeping_mtime(path: Path) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"Y" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # only the ctime tells


def _replace_by_rename(path: Path) -> None:
    fresh = path.with_name(path.name + ".render")
    fresh.write_bytes(path.read_bytes())
    os.utime(fresh, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    os.rename(fresh, path)


@pytest.mark.parametrize("change", [_append, _write_in_place, _write_in_place_keeping_mtime, _replace_by_rename])
def test_a_file_changed_after_packing_is_not_moved(setup: Setup, change: Callable[[Path], None]) -> None:
    entry = setup.local / "clip.mp4"
    entry.write_bytes(b"v" * 5000)
    packed = setup.pack(entry)
    change(entry)
    after = entry.read_bytes()

    message = changed_error(lambda: setup.move(entry, packed))

    assert "changed after it was packed" in message and "not moved" in message
    assert entry.read_bytes() == after
    assert not setup.completed.exists() or list(setup.completed.iterdir()) == []


@pytest.mark.parametrize("change", ["add", "remove", "modify", "rename"])
def test_a_directory_changed_after_packing_is_not_moved(setup: Setup, change: str) -> None:
    entry = make_tree(setup.local / "shoot", {"a.mov": b"a" * 100, "sub/b.mov": b"b" * 100})
    packed = setup.pack(entry)
    if change == "add":
        (entry / "sub" / "new.mov").write_bytes(b"new")
    elif change == "remove":
        (entry / "sub" / "b.mov").unlink()
    elif change == "modify":
        _write_in_place(entry / "sub" / "b.mov")
    else:
        os.rename(entry / "a.mov", entry / "sub" / "a.mov")
    before = snapshot(entry)

    message = changed_error(lambda: setup.move(entry, packed))

    assert "changed after it was packed" in message
    assert snapshot(entry) == before
    assert not setup.completed.exists() or list(setup.completed.iterdir()) == []


def test_a_source_deleted_after_packing_says_so(setup: Setup) -> None:
    entry = setup.local / "clip.mp4"
    entry.write_bytes(b"v" * 100)
    packed = setup.pack(entry)
    entry.unlink()
    message = changed_error(lambda: setup.move(entry, packed))
    assert "deleted from the local dir after it was packed" in message


# --- changed during the move: moved back ---------------------------------------------------------------------------


def test_a_file_written_between_the_move_and_its_check_is_moved_back(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    setup = Setup(tmp_path / "local", tmp_path / "local" / "completed", tmp_path)
    setup.local.mkdir()
    entry = setup.local / "clip.mp4"
    entry.write_bytes(b"v" * 5000)
    packed = setup.pack(entry)
    real_unlink = os.unlink

    def unlink(path: object, **kwargs: object) -> None:
        real_unlink(path, **kwargs)  # type: ignore[arg-type]
        if Path(os.fsdecode(path)) == entry:
            # A writer holding the file open writes right after the rename (the inode moved with its name).
            _append(setup.completed / "clip.mp4")

    monkeypatch.setattr(completed.os, "unlink", unlink)
    message = changed_error(lambda: setup.move(entry, packed))

    assert "changed while it was moved" in message and "moved back" in message
    assert entry.read_bytes() == b"v" * 5000 + b"more"
    assert list(setup.completed.iterdir()) == []


def test_a_directory_changed_right_after_its_rename_goes_back_under_a_free_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup = Setup(tmp_path / "local", tmp_path / "local" / "completed", tmp_path)
    entry = make_tree(setup.local / "shoot", {"a.mov": b"a" * 100})
    packed = setup.pack(entry)
    real_rename = os.rename

    def rename(src: object, dst: object, **kwargs: object) -> None:
        real_rename(src, dst, **kwargs)  # type: ignore[arg-type]
        if Path(os.fsdecode(src)) == entry:
            (Path(os.fsdecode(dst)) / "late.mov").write_bytes(b"late")
            entry.mkdir()  # and the original name is taken meanwhile
            (entry / "other").write_bytes(b"someone else's")

    monkeypatch.setattr(completed.os, "rename", rename)
    message = changed_error(lambda: setup.move(entry, packed))

    back = setup.local / f"shoot.amgmt-changed-{OP[:8]}"
    assert back.name in message
    assert snapshot(back) == {"a.mov": b"a" * 100, "late.mov": b"late"}
    assert snapshot(entry) == {"other": b"someone else's"}
    assert list(setup.completed.iterdir()) == []


# --- across filesystems --------------------------------------------------------------------------------------------


def test_cross_fs_a_file_appended_during_the_copy_is_not_removed(cross: Setup,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    entry = cross.local / "clip.mp4"
    entry.write_bytes(b"v" * 300_000)
    packed = cross.pack(entry)
    real_copy = copying._copy_file

    def copy_file(src: str, dst: str | None) -> object:
        result = real_copy(src, dst)
        _append(Path(src))
        return result

    monkeypatch.setattr(copying, "_copy_file", copy_file)
    message = changed_error(lambda: cross.move(entry, packed))

    assert "nothing moved or removed" in message or "moved back" in message
    assert entry.read_bytes() == b"v" * 300_000 + b"more"
    assert list(cross.completed.iterdir()) == []
    assert leftovers(cross.local, cross.completed) == []


def test_cross_fs_a_file_created_during_the_copy_is_not_removed(cross: Setup,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    entry = make_tree(cross.local / "shoot", {"a.mov": b"a" * 1000, "sub/b.mov": b"b" * 1000})
    packed = cross.pack(entry)
    real_copy = copying._copy_file

    def copy_file(src: str, dst: str | None) -> object:
        result = real_copy(src, dst)
        (entry / "sub" / "written-during-the-copy.mov").write_bytes(b"new")  # in a dir already listed
        (entry / "written-during-the-copy.mov").write_bytes(b"new")
        return result

    monkeypatch.setattr(copying, "_copy_file", copy_file)
    changed_error(lambda: cross.move(entry, packed))

    assert snapshot(entry)["written-during-the-copy.mov"] == b"new"
    assert snapshot(entry)["sub/written-during-the-copy.mov"] == b"new"
    assert snapshot(entry)["a.mov"] == b"a" * 1000
    assert list(cross.completed.iterdir()) == []
    assert leftovers(cross.local, cross.completed) == []


def test_cross_fs_a_file_written_after_the_copy_is_caught_once_the_original_is_renamed_away(
        cross: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = make_tree(cross.local / "shoot", {"a.mov": b"a" * 1000})
    packed = cross.pack(entry)
    real_rename = os.rename

    def rename(src: object, dst: object, **kwargs: object) -> None:
        if Path(os.fsdecode(src)) == entry and ".amgmt-removing-" in os.fsdecode(dst):
            (entry / "last-second.mov").write_bytes(b"!")
        real_rename(src, dst, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(completed.os, "rename", rename)
    assert "moved back" in changed_error(lambda: cross.move(entry, packed))
    assert snapshot(entry) == {"a.mov": b"a" * 1000, "last-second.mov": b"!"}
    assert list(cross.completed.iterdir()) == []
    assert leftovers(cross.local, cross.completed) == []


def test_cross_fs_special_files_are_recreated_never_read(cross: Setup) -> None:
    entry = make_tree(cross.local / "shoot", {"a.mov": b"a" * 1000})
    os.mkfifo(entry / "pipe")
    has_device = True
    try:
        os.mknod(entry / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero: endless if read
    except PermissionError:
        has_device = False
    packed = cross.pack(entry)

    final = cross.move(entry, packed)

    assert final == cross.completed / "shoot"
    assert stat.S_ISFIFO((final / "pipe").lstat().st_mode)
    if has_device:
        st = (final / "zero").lstat()
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 5)
    assert (final / "a.mov").read_bytes() == b"a" * 1000
    assert not entry.exists()
    assert leftovers(cross.local, cross.completed) == []


# --- very deep trees -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def deep_tree(root: Path, depth: int) -> Iterator[Path]:
    """root/d/d/.../d/leaf (depth directories), built and removed relative to the cwd (paths may be too long)."""
    cwd = os.getcwd()
    root.mkdir()
    try:
        os.chdir(root)
        for _ in range(depth):
            os.mkdir("d")
            os.chdir("d")
        Path("leaf").write_bytes(b"deep")
        os.chdir(cwd)
        yield root
    finally:
        os.chdir(cwd)
        _remove_deep(root)


def _remove_deep(root: Path) -> None:
    if not root.exists():
        return
    cwd = os.getcwd()
    try:
        os.chdir(root)
        depth = 0
        while os.path.isdir("d"):
            os.chdir("d")
            depth += 1
        for name in os.listdir("."):
            os.unlink(name)
        for _ in range(depth):
            os.chdir("..")
            os.rmdir("d")
    finally:
        os.chdir(cwd)
    shutil.rmtree(root)


def _remove_deep_anywhere(directory: Path) -> None:
    for path in list(directory.iterdir()) if directory.exists() else []:
        if path.is_dir() and not path.is_symlink():
            _remove_deep(path)


def test_a_tree_1500_deep_moves_across_filesystems(cross: Setup) -> None:
    with deep_tree(cross.local / "deep", 1500) as entry:
        packed = cross.pack(entry)
        try:
            final = cross.move(entry, packed)
            assert final == cross.completed / "deep"
            assert not entry.exists()
            assert leftovers(cross.local, cross.completed) == []
            assert identity_of(final).members == 1502
        finally:
            _remove_deep_anywhere(cross.completed)


@pytest.mark.parametrize("where", ["same-fs", "cross-fs"])
def test_a_tree_3000_deep_fails_with_one_line_and_stays(tmp_path: Path, where: str) -> None:
    if where == "cross-fs" and not _shm_usable(tmp_path):
        pytest.skip("/dev/shm is not a separate writable filesystem here")
    local = tmp_path / "local"
    local.mkdir()
    other = Path(tempfile.mkdtemp(prefix="amgmt-test-", dir="/dev/shm")) if where == "cross-fs" else local
    try:
        with deep_tree(local / "deep", 3000) as entry:
            inode = entry.stat().st_ino
            try:
                final: Path | None = move_to_completed(
                    entry, CompletedDir(local_dir=local, path=other / "completed", preserve_structure=False,
                                        duplicate_handling="timestamp"), now=NOW, operation_id=OP)
            except MoveError as exc:
                assert "\n" not in str(exc) and "File name too long" in str(exc), str(exc)
                final = None
            if final is None:
                assert entry.stat().st_ino == inode
            else:
                assert not entry.exists() and final.exists()
                _remove_deep(final)
            assert leftovers(local, other / "completed") == []
    finally:
        if other != local:
            _remove_deep_anywhere(other / "completed")
            shutil.rmtree(other, ignore_errors=True)


# --- recovery of a move killed midway ------------------------------------------------------------------------------


def _recover(setup: Setup, entry: Path, packed: ArchiveResult, *, dry_run: bool = False) -> move_recovery.MoveRecovery:
    return recover_move(entry, setup.rules, started=NOW, operation_id=OP,
                        expected_identity=packed.source_identity, expected_digest=packed.source_sha256,
                        original_size=packed.source_size, dry_run=dry_run)


def test_recovery_finishes_a_move_killed_between_link_and_unlink(tmp_path: Path) -> None:
    setup = Setup(tmp_path / "local", tmp_path / "local" / "completed", tmp_path)
    setup.local.mkdir()
    entry = setup.local / "clip.mp4"
    entry.write_bytes(b"v" * 100)
    packed = setup.pack(entry)
    setup.completed.mkdir()
    os.link(entry, setup.completed / "clip.mp4")

    assert _recover(setup, entry, packed, dry_run=True).outcome == "moved"
    assert entry.exists()
    found = _recover(setup, entry, packed)

    assert found.outcome == "moved" and found.final == setup.completed / "clip.mp4"
    assert not entry.exists() and (setup.completed / "clip.mp4").read_bytes() == b"v" * 100


def test_recovery_of_a_cross_fs_move_killed_after_the_original_was_renamed_away(cross: Setup) -> None:
    entry = make_tree(cross.local / "shoot", {"a.mov": b"a" * 100})
    packed = cross.pack(entry)
    removing = cross.local / f".amgmt-removing-{OP[:8]}-shoot-12345678"
    os.rename(entry, removing)
    cross.completed.mkdir()
    moving = cross.completed / f".amgmt-moving-{OP[:8]}-shoot-12345678"
    copying.copy_entry(removing, moving)  # complete, but not installed yet

    found = _recover(cross, entry, packed)

    assert found.outcome == ""  # undone: the next run moves it again
    assert snapshot(entry) == {"a.mov": b"a" * 100}
    assert leftovers(cross.local, cross.completed) == []

    # Killed a step later: the copy installed, the original not removed yet.
    os.rename(entry, removing)
    copying.copy_entry(removing, cross.completed / "shoot")
    found = _recover(cross, entry, packed)
    assert found.outcome == "moved" and found.final == cross.completed / "shoot"
    assert not entry.exists() and leftovers(cross.local, cross.completed) == []
    assert snapshot(cross.completed / "shoot") == {"a.mov": b"a" * 100}


def test_a_removed_away_original_is_deleted_only_once_our_copy_was_installed(cross: Setup) -> None:
    """Killed before our copy was installed (its temporary still there) while an older identical copy already
    holds the destination name: the renamed-away original, written to meanwhile, is put back, never deleted."""
    entry = make_tree(cross.local / "shoot", {"a.mov": b"a" * 100})
    packed = cross.pack(entry)
    cross.completed.mkdir()
    copying.copy_entry(entry, cross.completed / "shoot")  # an earlier move of the same content
    removing = cross.local / f".amgmt-removing-{OP[:8]}-shoot-12345678"
    os.rename(entry, removing)
    copying.copy_entry(removing, cross.completed / f".amgmt-moving-{OP[:8]}-shoot-12345678")
    (removing / "late.mov").write_bytes(b"written after the copy")

    found = _recover(cross, entry, packed)

    assert found.outcome == "changed"
    assert snapshot(entry) == {"a.mov": b"a" * 100, "late.mov": b"written after the copy"}
