"""Text for people: one printable line for any name or message, counts, human sizes and durations. Pure functions.

The one place that decides how a name with control characters or undecodable bytes is shown (records store
`naming.display`; terminals, logs and error messages show `printable`)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from amgmt.naming import display


def printable(value: object) -> str:
    """One terminal-safe line: a path (str, bytes or PathLike) as `naming.display` gives it, and every control
    character (C0 with newlines, DEL, C1 such as ESC's 8-bit twin) escaped, never sent raw."""
    if isinstance(value, (bytes, os.PathLike)):
        text = display(os.fsdecode(value))
    else:
        text = str(value)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F or not ch.isprintable():
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def iso_utc(value: datetime) -> str:
    """The one timestamp format of amgmt's JSON output and of the times it records in metadata: ISO 8601 in UTC with
    `Z`, to the microsecond (fixed width): `2026-11-25T11:34:13.123456Z`. A naive time is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """`1 entry`, `0 entries`, `3 files`: the number and the noun in agreement (`-y` -> `-ies`, else `-s`)."""
    if n == 1:
        return f"{n} {singular}"
    if plural is None:
        plural = singular[:-1] + "ies" if singular.endswith("y") and singular[-2:-1] not in "aeiou" else singular + "s"
    return f"{n} {plural}"


def human_size(n: float | None) -> str:
    """`512 B`, `1.5 KiB`, `3.2 GiB` (powers of 1024); `-` for None."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_duration(seconds: float | None) -> str:
    """`4.2s`, `3m05s`, `2h07m`; `-` for None."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def redacted_url(url: str) -> str:
    """A database URL fit to show: its password (`postgresql://user:SECRET@host/db`) replaced by `***`, and a
    `password=` query parameter too. Anything that does not parse as a URL is shown as `***` whole."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, colon, _ = userinfo.partition(":")
            netloc = f"{user}:***@{hostport}" if colon else f"{user}@{hostport}"
        query = parts.query
        if query:
            pairs = [(k, "***" if k.lower() in ("password", "passfile") else v) for k, v in parse_qsl(query, True)]
            query = urlencode(pairs, safe="*")
        if (netloc, query) == (parts.netloc, parts.query):
            return url  # nothing hidden: as given (urlunsplit would turn sqlite:///x into sqlite:/x)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "***"
