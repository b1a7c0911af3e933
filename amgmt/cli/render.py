"""Rendering for the CLI: human sizes and durations, plain tables, JSON. No library logic."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any


def human_size(n: float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def local_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def printable(text: object) -> str:
    """Text safe for a terminal: control characters (C0, DEL, C1, e.g. ESC) shown as escapes, never sent raw."""
    out = []
    for ch in str(text):
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def one_line(text: object) -> str:
    """One terminal-safe line: control characters (newlines included) escaped."""
    return printable(text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, max_width: int = 48) -> str:
    """A left-aligned text table; long cells are shortened with an ellipsis in the middle."""

    def cell(value: Any) -> str:
        text = one_line("" if value is None else value)
        if len(text) > max_width:
            keep = max_width - 1
            text = text[: keep // 2] + "…" + text[-(keep - keep // 2) :]
        return text

    grid = [[cell(h) for h in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in grid) for i in range(len(headers))]
    lines = ["  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip() for r in grid]
    return "\n".join(lines)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)
