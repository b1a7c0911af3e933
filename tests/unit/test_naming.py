"""Key naming, staging names and printable text: pure functions, the mapping docs/configuration.md promises."""

from __future__ import annotations

import os

import pytest

from amgmt.naming import ARCHIVE_SUFFIX, display, key_segment, object_key, staging_name, staging_operation_id
from amgmt.text import human_duration, human_size, printable

OP = "0f8e2d6c-1b2a-4c3d-9e8f-7a6b5c4d3e2f"


@pytest.mark.parametrize(
    ("name", "segment"),
    [
        ("clip.mp4", "clip.mp4"),
        ("holiday 2026.mp4", "holiday 2026.mp4"),
        ("100%.mov", "100%25.mov"),  # the escape character itself is escaped
        ("a\nb", "a%0Ab"),  # C0 control
        ("a\x7fb", "a%7Fb"),  # DEL
        ("a\u0085b", "a%C2%85b"),  # C1 control, as its UTF-8 bytes
        ("café", "café"),  # printable non-ASCII stays
        (os.fsdecode(b"bad\xffname"), "bad%FFname"),  # an undecodable byte
    ],
)
def test_key_segment_escapes_exactly_what_would_be_unsafe(name: str, segment: str) -> None:
    assert key_segment(name) == segment


def test_object_key_joins_prefix_segments_and_suffix() -> None:
    assert object_key("", "clip.mp4") == "clip.mp4" + ARCHIVE_SUFFIX
    assert object_key("media/2026", "clip.mp4") == "media/2026/clip.mp4.tar.gz"
    assert object_key("p", "s1", "ep1.mkv") == "p/s1/ep1.mkv.tar.gz"


def test_two_different_names_never_share_a_key() -> None:
    names = ["a%0Ab", "a\nb", "a%250Ab", os.fsdecode(b"a\x0ab"), "a%", "a%25"]
    keys = {object_key("", n) for n in names}
    assert len(keys) == len(set(names))


def test_a_key_never_gets_a_dotdot_segment_from_a_name() -> None:
    # An entry name is one path segment: even `..` or `.` become part of a segment that ends in .tar.gz.
    for name in ("..", ".", "..."):
        assert ".." not in object_key("media", name).split("/")
        assert object_key("media", name).split("/")[-1] == name + ARCHIVE_SUFFIX


def test_staging_names_are_recognised_and_bounded() -> None:
    long_name = "é" * 200 + ".mov"
    name = staging_name(OP, long_name)
    assert len(os.fsencode(name)) <= 255
    assert staging_operation_id(name) == OP
    assert staging_operation_id(name + ".partial") == OP
    for other in ("clip.mp4", f"{OP}.txt", f"{OP}-x.tar.gz.bak", f"x{OP}-x.tar.gz", "notes-x.tar.gz"):
        assert staging_operation_id(other) is None


def test_display_and_printable_never_raise_and_stay_one_line() -> None:
    raw = b"bad\xff\nname\x1b[31m"
    assert display(os.fsdecode(raw)) == "bad\\xff\nname\x1b[31m"
    shown = printable(raw)
    assert "\n" not in shown and "\x1b" not in shown
    assert shown == "bad\\xff\\nname\\x1b[31m"
    assert printable("plain name.mp4") == "plain name.mp4"
    assert printable("a\u0085b") == "a\\x85b"


@pytest.mark.parametrize(("n", "text"), [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                         (5 * 1024**3, "5.0 GiB")])
def test_human_size(n: int | None, text: str) -> None:
    assert human_size(n) == text


@pytest.mark.parametrize(("s", "text"), [(None, "-"), (4.24, "4.2s"), (185, "3m05s"), (7620, "2h07m")])
def test_human_duration(s: float | None, text: str) -> None:
    assert human_duration(s) == text


def test_renamed_key_puts_the_number_before_the_first_extension() -> None:
    from amgmt.naming import renamed_key

    assert renamed_key("GX010234.MP4.tar.gz", 2) == "GX010234-2.MP4.tar.gz"
    assert renamed_key("cards/2026/GX010234.MP4.tar.gz", 3) == "cards/2026/GX010234-3.MP4.tar.gz"
    assert renamed_key("card1.tar.gz", 2) == "card1-2.tar.gz"
    assert renamed_key("a.b/.hidden.tar.gz", 2) == "a.b/.hidden-2.tar.gz"  # a leading dot is no extension
    assert renamed_key("x.tar.gz", 2) == renamed_key("x.tar.gz", 2) != renamed_key("x.tar.gz", 3)
