"""Rendering for the CLI: human sizes and durations, plain tables, JSON. No library logic."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from amgmt.text import iso_utc, printable


def local_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, max_width: int = 48) -> str:
    """A left-aligned text table; long cells are shortened with an ellipsis in the middle."""

    def cell(value: Any) -> str:
        text = printable("" if value is None else value)
        if len(text) > max_width:
            keep = max_width - 1
            text = text[: keep // 2] + "…" + text[-(keep - keep // 2) :]
        return text

    grid = [[cell(h) for h in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in grid) for i in range(len(headers))]
    lines = ["  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip() for r in grid]
    return "\n".join(lines)


def _json_value(value: Any) -> Any:
    return iso_utc(value) if isinstance(value, datetime) else str(value)


def to_json(data: Any) -> str:
    """JSON as every --json prints it; a time in the one format (text.iso_utc: `2026-11-25T11:34:13.123456Z`)."""
    return json.dumps(data, indent=2, ensure_ascii=False, default=_json_value)
