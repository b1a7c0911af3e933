"""How entry names become S3 keys, staging file names and record text. Pure functions.

Key mapping (documented in docs/configuration.md): `[prefix/]NAME.tar.gz`, where NAME is the entry's own name.
Bytes that are not valid UTF-8, control characters (C0 0x00-0x1f, DEL, C1 U+0080-U+009F, as their UTF-8
bytes) and `%` itself are written as `%XX`, so the
key is valid UTF-8, printable, and two different names never share a key. A name is one path segment, so a key
never holds a `..` segment of its own making; the prefix is validated by the settings.
"""

from __future__ import annotations

import os
import re

ARCHIVE_SUFFIX = ".tar.gz"
PARTIAL_SUFFIX = ".partial"
# What `staging_name` makes (and the archiver's `.partial` of it): an operation id (a UUID), '-', the readable name.
_STAGING_NAME = re.compile(
    r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-[^/]*"
    + re.escape(ARCHIVE_SUFFIX)
    + "(?:"
    + re.escape(PARTIAL_SUFFIX)
    + ")?$",
    re.DOTALL,
)


def _escape_byte(b: int) -> str:
    return f"%{b:02X}"


def key_segment(name: str) -> str:
    """One entry name (possibly holding surrogate-escaped bytes) as a safe S3 key segment."""
    raw = os.fsencode(name)
    out: list[str] = []
    text = raw.decode("utf-8", errors="surrogateescape")
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
            out.append(_escape_byte(code - 0xDC00))
        elif code < 0x20 or 0x7F <= code <= 0x9F or ch == "%":  # C0 and C1 controls, DEL, the escape itself
            out.extend(_escape_byte(b) for b in ch.encode("utf-8"))
        else:
            out.append(ch)
    return "".join(out)


def object_key(prefix: str, *names: str) -> str:
    """The key of an entry: its name (or, to preserve structure, its path segments inside the local dir)."""
    path = "/".join(key_segment(name) for name in names) + ARCHIVE_SUFFIX
    return f"{prefix}/{path}" if prefix else path


def renamed_key(key: str, number: int) -> str:
    """The key `--on-conflict rename` tries as the `number`th (2, 3, ...): `-N` after the name's stem, before its
    first extension (`cards/GX010234.MP4.tar.gz` -> `cards/GX010234-2.MP4.tar.gz`, `card1.tar.gz` ->
    `card1-2.tar.gz`). The same key and number always give the same key, so a re-run finds its own earlier one."""
    head, slash, base = key.rpartition("/")
    stem_end = base.find(".", 1)
    if stem_end < 0:
        stem_end = len(base)
    return f"{head}{slash}{base[:stem_end]}-{number}{base[stem_end:]}"


def display(path: str | os.PathLike[str]) -> str:
    """Text safe to store, print and log: undecodable bytes shown as \\xNN, never raising."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def staging_name(operation_id: str, name: str) -> str:
    """A staging archive name: unique per operation, recognisable, and short enough for any filesystem."""
    # 80 bytes, not characters: NAME_MAX (255) counts bytes, and a CJK character is 3 of them.
    readable = key_segment(name).encode()[:80].decode(errors="ignore").replace("/", "_")
    return f"{operation_id}-{readable}{ARCHIVE_SUFFIX}"


def staging_operation_id(file_name: str) -> str | None:
    """The operation id in a name `staging_name` made (or in the `.partial` of one); None for any other name."""
    match = _STAGING_NAME.match(file_name)
    return match.group(1) if match else None
