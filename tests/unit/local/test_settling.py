"""When an entry counts as settled (local/settling.py): what a look sees, the settle clock, the age rule, writers.
Real files and real processes; times given."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amgmt.local import settling
from amgmt.local.settling import SettleClock, held_open, look_at, too_young

HOLD_OPEN = "import sys; f = open(sys.argv[1], sys.argv[2]); print('open', flush=True); sys.stdin.read()"


def test_the_fingerprint_changes_with_every_kind_of_change(tmp_path: Path) -> None:
    shoot = tmp_path / "shoot"
    (shoot / "sub").mkdir(parents=True)
    (shoot / "sub" / "a.txt").write_text("a")
    seen = {look_at(shoot).fingerprint}
    changes = [
        lambda: (shoot / "sub" / "a.txt").write_text("b"),  # same size, written
        lambda: (shoot / "sub" / "b.txt").write_text(""),  # a member added deep inside
        lambda: (shoot / "sub" / "b.txt").unlink(),  # and removed again
        lambda: os.chmod(shoot / "sub" / "a.txt", 0o600),  # attributes only
        lambda: (shoot / "sub" / "a.txt").rename(shoot / "sub" / "c.txt"),
    ]
    for change in changes:
        time.sleep(0.01)
        change()
        fingerprint = look_at(shoot).fingerprint
        assert fingerprint not in seen
        seen.add(fingerprint)
    assert look_at(shoot).fingerprint in seen  # and nothing else changes it
    assert look_at(tmp_path / "missing").gone
    os.symlink(shoot, tmp_path / "link")
    assert look_at(tmp_path / "link").gone  # not an entry


def test_settled_only_after_two_equal_looks_settle_seconds_apart(tmp_path: Path) -> None:
    path = tmp_path / "clip.mov"
    path.write_bytes(b"1")
    clock = SettleClock(settle=2.0)
    assert not clock.observe(look_at(path), 100.0)
    assert not clock.observe(look_at(path), 101.9)
    path.write_bytes(b"12")
    assert not clock.observe(look_at(path), 102.0)  # changed: the two seconds start again
    assert not clock.observe(look_at(path), 103.9)
    assert clock.observe(look_at(path), 104.0)


def test_too_young_by_the_last_change_anywhere_inside(tmp_path: Path) -> None:
    shoot = tmp_path / "shoot"
    (shoot / "sub").mkdir(parents=True)
    (shoot / "sub" / "a.txt").write_text("a")
    now = time.time()
    looks = [look_at(shoot)]
    assert too_young(looks, min_age=5, now=now + 6) == {}
    assert "younger than 5 s" in too_young(looks, min_age=5, now=now + 1)[shoot]
    (shoot / "sub" / "a.txt").unlink()  # a removal shows only in the directory's own times
    assert shoot in too_young([look_at(shoot)], min_age=5, now=now + 4.9)


def test_held_open_names_the_writer_and_not_a_reader(tmp_path: Path) -> None:
    written, read = tmp_path / "w.bin", tmp_path / "r.bin"
    written.write_bytes(b"w")
    read.write_bytes(b"r")
    procs = []
    for path, mode in ((written, "ab"), (read, "rb")):
        proc = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(path), mode], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        procs.append(proc)
    try:
        held = held_open([look_at(written), look_at(read)])
        assert list(held) == [written] and [w.pid for w in held[written]] == [procs[0].pid]
    finally:
        for proc in procs:
            proc.communicate("", timeout=10)
    assert held_open([look_at(written)]) == {}


def test_an_entry_that_cannot_be_walked_is_not_gone_and_settles_on_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its upload then fails with a recorded reason, instead of the watch forgetting it without a word."""
    shoot = tmp_path / "shoot"
    shoot.mkdir()

    def refuse(path: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(settling, "members_of", refuse)
    first, second = look_at(shoot), look_at(shoot)
    assert not first.gone and first.fingerprint == second.fingerprint
    assert first.problem is not None and "Permission denied" in first.problem
    assert too_young([first], min_age=5) == {}  # --once and --min-age hand it on: its pipeline says why it fails
