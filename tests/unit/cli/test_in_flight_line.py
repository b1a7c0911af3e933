"""The in-flight line under the progress bar stays cheap with many entries in flight (issue 12: the lane has ~200,
and the line is drawn at each of their stage changes): it reads only the entries it can show."""

from __future__ import annotations

from collections.abc import Iterator

from amgmt.cli.progress_bar import in_flight_text


class Counted(list[tuple[str, str]]):
    """The entries in flight, counting how many of them are read."""

    read = 0

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for item in super().__iter__():
            self.read += 1
            yield item


def test_the_line_reads_only_what_it_shows() -> None:
    many = Counted((f"IMG_{n:06d}.jpg", "upload 0%") for n in range(10_000))
    line = in_flight_text(many, 100)
    assert line.startswith("IMG_000000.jpg upload 0% | IMG_000001.jpg upload 0% | ") and line.endswith(" more")
    assert len(line) <= 100 and f"+{10_000 - line.count(' | ')} more" in line
    assert many.read <= 20  # two passes over the few that fit (it read all 10,000, formatting each, before)


def test_the_line_is_what_it_was() -> None:
    assert (
        in_flight_text([("clip.mp4", "upload 42%"), ("trip", "compress")], 80) == "clip.mp4 upload 42% | trip compress"
    )
    many = [(f"GX0102{n:02d}.MP4", "upload 7%") for n in range(12)]
    line = in_flight_text(many, 80)
    assert (
        line == "GX010200.MP4 upload 7% | GX010201.MP4 upload 7% | +10 more"
    )  # as before (3,000 random cases checked)
    assert in_flight_text([("a-very-long-entry-name-" * 4, "verify")], 20) == "+1 more"
    assert in_flight_text([("a" * 40, "verify"), ("b", "move")], 60) == "a" * 40 + " verify | b move"
    assert in_flight_text([], 80) == ""
