"""--exclude/--include and MGMT_EXCLUDE (amgmt.local.entries.EntryFilter): aws s3's order (the last matching rule
decides), rclone's implied "nothing else" after a leading --include, and one-line errors for bad patterns."""

from __future__ import annotations

from pathlib import Path

import pytest

from amgmt.config import load_settings
from amgmt.errors import ConfigError
from amgmt.local.entries import EntryFilter, FilterRule, list_entries

NAMES = ["IMG_1001.jpg", "b.tmp", "clip.mp4", "notes.txt", "wedding"]


def ex(pattern: str) -> FilterRule:
    return FilterRule(False, pattern)


def inc(pattern: str) -> FilterRule:
    return FilterRule(True, pattern)


def taken(entry_filter: EntryFilter) -> list[str]:
    return [name for name in NAMES if entry_filter.decide(name) is None]


@pytest.mark.parametrize(
    ("configured", "given", "expected"),
    [
        ((), (), NAMES),
        ((), (ex("*.tmp"),), ["IMG_1001.jpg", "clip.mp4", "notes.txt", "wedding"]),
        ((), (ex("*.tmp"), ex("IMG_*")), ["clip.mp4", "notes.txt", "wedding"]),
        # aws s3: later rules take precedence
        ((), (ex("*"), inc("*.mp4")), ["clip.mp4"]),
        ((), (inc("*.mp4"), ex("*")), []),
        ((), (ex("*"), inc("*.mp4"), inc("w*"), ex("wedding")), ["clip.mp4"]),
        # rclone: a leading --include leaves out what no rule matches
        ((), (inc("*.mp4"),), ["clip.mp4"]),
        ((), (inc("*.mp4"), inc("*.jpg")), ["IMG_1001.jpg", "clip.mp4"]),
        ((), (inc("*"), ex("*.tmp")), ["IMG_1001.jpg", "clip.mp4", "notes.txt", "wedding"]),
        # MGMT_EXCLUDE comes first: the command line takes entries back
        (("*.tmp", "*.txt"), (), ["IMG_1001.jpg", "clip.mp4", "wedding"]),
        (("*.tmp", "*.txt"), (inc("notes.txt"),), ["notes.txt"]),
        (("*.tmp",), (ex("*.jpg"), inc("b.tmp")), ["b.tmp", "clip.mp4", "notes.txt", "wedding"]),
        # shell globs, case-sensitive as in aws and rclone
        ((), (ex("img_*"),), NAMES),
        ((), (ex("[a-c]*"),), ["IMG_1001.jpg", "notes.txt", "wedding"]),
        ((), (ex("?.tmp"),), ["IMG_1001.jpg", "clip.mp4", "notes.txt", "wedding"]),
    ],
)
def test_the_last_matching_rule_decides(
    configured: tuple[str, ...], given: tuple[FilterRule, ...], expected: list[str]
) -> None:
    assert taken(EntryFilter.build(configured, given)) == expected


def test_the_note_names_the_rule_that_left_an_entry_out(tmp_path: Path) -> None:
    media = tmp_path / "media"
    (media / "wedding").mkdir(parents=True)
    for name in NAMES[:-1]:
        (media / name).write_bytes(b"x")
    settings = load_settings(flags={"local_dir": str(media)}, environ={"HOME": str(tmp_path)}, require_bucket=False)
    entries, _ = list_entries(settings)

    kept, excluded = EntryFilter.build(["*.txt"], [inc("*.mp4"), inc("*.txt"), ex("b.*")]).select(settings, entries)

    assert [p.name for p in kept] == ["clip.mp4", "notes.txt"]
    assert excluded == [
        "IMG_1001.jpg (no --include matches it)",
        "b.tmp (--exclude 'b.*')",
        "wedding (no --include matches it)",
    ]
    kept, excluded = EntryFilter.build(["*.txt"], []).select(settings, entries)
    assert excluded == ["notes.txt (MGMT_EXCLUDE '*.txt')"]


@pytest.mark.parametrize("pattern", ["", "  ", "a\nb", "\x1b[31m"])
def test_a_bad_pattern_is_one_line_error(pattern: str) -> None:
    with pytest.raises(ConfigError, match="--exclude"):
        EntryFilter.build([], [ex(pattern)])


def test_mgmt_exclude_is_a_comma_separated_list(tmp_path: Path) -> None:
    settings = load_settings(
        environ={"HOME": str(tmp_path), "MGMT_EXCLUDE": " *.tmp, .DS_Store ,,Thumbs.db"}, cwd=tmp_path,
        require_bucket=False,
    )
    assert settings.exclude == ("*.tmp", ".DS_Store", "Thumbs.db")
    assert dict((k, v) for k, v, _ in settings.describe())["MGMT_EXCLUDE"] == "*.tmp,.DS_Store,Thumbs.db"
    with pytest.raises(ConfigError, match="MGMT_EXCLUDE"):
        load_settings(environ={"HOME": str(tmp_path), "MGMT_EXCLUDE": "a\x07b"}, cwd=tmp_path, require_bucket=False)
