"""The value of each setting: its parser (text or flag -> value), its default and its text form.

Pure functions and constants; must not read the environment, the config file or the disk."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from amgmt.parts import MAX_PART_SIZE, MIN_PART_SIZE, GiB, MiB
from amgmt.text import printable

DUPLICATE_MODES = ("timestamp", "subdirectory", "error")
# auto: the fastest flexible checksum the endpoint proves to keep (probed once per run), else md5. See amgmt.checksums.
CHECKSUM_ALGORITHMS = ("auto", "crc64nvme", "crc32c", "sha256", "md5")
ADDRESSING_STYLES = ("auto", "path", "virtual")
STORAGE_CLASSES = (
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "GLACIER_IR",
    "OUTPOSTS",
    "EXPRESS_ONEZONE",
    "SNOW",
)

SIZE_FIELDS = frozenset({"part_size", "multipart_threshold", "small_entry_size"})
_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_SIZE = re.compile(r"^([0-9]+)\s*(?:([kmg])(?:i?b)?|b)?$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "k": 1024, "m": MiB, "g": GiB}
_MAX_SHOWN = 200


class Invalid(Exception):
    """A value was rejected; the reason is completed into a ConfigError naming the key and source."""


def show_value(value: object) -> str:
    """A value as one readable line (text.printable), very long values cut."""
    text = printable(value)
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + "..."
    return text


def is_empty(value: object) -> bool:
    return isinstance(value, str) and not value.strip()


def _text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Invalid("expected text")
    return str(value).strip()


def _has_control(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def _parse_bucket(value: object) -> str:
    text = _text(value)
    if not _BUCKET.match(text) or ".." in text:
        raise Invalid(
            "expected an S3 bucket name: 3 to 63 lowercase letters, digits, '.' or '-', "
            "starting and ending with a letter or digit"
        )
    return text


def _parse_prefix(value: object) -> str:
    text = _text(value)
    if _has_control(text):
        raise Invalid("control characters are not allowed in an object prefix")
    segments = [part for part in text.split("/") if part]
    if any(part in (".", "..") for part in segments):
        raise Invalid("'.' and '..' segments are not allowed in an object prefix")
    return "/".join(segments)


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
        return _BOOLEANS[value.strip().lower()]
    raise Invalid("expected one of true/false, 1/0, yes/no, on/off")


def _choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = value.strip().lower() if isinstance(value, str) else ""
        if text not in choices:
            raise Invalid(f"expected one of {', '.join(choices)}")
        return text

    return parse


def _parse_storage_class(value: object) -> str:
    text = value.strip().upper() if isinstance(value, str) else ""
    if text not in STORAGE_CLASSES:
        raise Invalid(f"expected one of {', '.join(STORAGE_CLASSES)}")
    return text


def _integer(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _INTEGER.match(value.strip()):
            number = int(value.strip())
        if number is None or not low <= number <= high:
            raise Invalid(f"expected an integer from {low} to {high}")
        return number

    return parse


def _positive_seconds(value: object) -> float:
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise Invalid("expected a number of seconds greater than 0 (such as 30 or 2.5)")
    return number


def format_size(size: int) -> str:
    """A byte count as amgmt writes it: `8MiB`, `1GiB`, `4KiB`, or plain bytes."""
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def parse_size(value: object) -> int:
    """A size in bytes from `8388608`, `8MiB`, `8M` or `8MB` (K, M and G are always powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE.match(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError("expected a size such as 8388608, 8MiB, 8M or 8MB")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _SIZE_UNITS[unit]


def _size(low: int, high: int | None) -> Callable[[object], int]:
    if high is None:
        expectation = "expected a size such as 8388608, 8MiB, 8M or 8MB"
    else:
        expectation = f"expected a size from {format_size(low)} to {format_size(high)} (such as 8MiB)"

    def parse(value: object) -> int:
        try:
            size = parse_size(value)
        except ValueError:
            raise Invalid(expectation) from None
        if size < low or (high is not None and size > high):
            raise Invalid(expectation)
        return size

    return parse


def _parse_endpoint(value: object) -> str:
    text = _text(value)
    invalid = Invalid("expected an http:// or https:// URL with a host")
    if _has_control(text) or " " in text:
        raise invalid
    try:
        parts = urlsplit(text)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a port that is not a number
    except ValueError:
        raise invalid from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise invalid
    return text


def _parse_patterns(value: object) -> tuple[str, ...]:
    if isinstance(value, (tuple, list)):
        items = [str(item) for item in value]
    else:
        items = _text(value).split(",")
    patterns = tuple(item.strip() for item in items if item.strip())
    if any(not pattern.isprintable() for pattern in patterns):
        raise Invalid("control characters are not allowed in a pattern")
    return patterns


def _parse_name(value: object) -> str:
    text = _text(value)
    if _has_control(text):
        raise Invalid("control characters are not allowed")
    return text


PARSERS: dict[str, Callable[[object], Any]] = {
    "bucket": _parse_bucket,
    "object_prefix": _parse_prefix,
    "preserve_structure": _parse_bool,
    "duplicate_handling": _choice(DUPLICATE_MODES),
    "exclude": _parse_patterns,
    "endpoint_url": _parse_endpoint,
    "storage_class": _parse_storage_class,
    "concurrency": _integer(1, 256),
    "completed_enabled": _parse_bool,
    "part_size": _size(MIN_PART_SIZE, MAX_PART_SIZE),
    "multipart_threshold": _size(0, None),
    "parts_in_flight": _integer(1, 1024),
    "checksum_algorithm": _choice(CHECKSUM_ALGORITHMS),
    "payload_signing": _parse_bool,
    "compression_level": _integer(1, 3),
    "profile": _parse_name,
    "region": _parse_name,
    "addressing_style": _choice(ADDRESSING_STYLES),
    "read_timeout": _positive_seconds,
    "connect_timeout": _positive_seconds,
    "settle_seconds": _positive_seconds,
    "hook": _parse_name,
    "hook_timeout": _positive_seconds,
    "small_entry_size": _size(0, 64 * MiB),
}
DEFAULTS: dict[str, object] = {
    "bucket": None,
    "object_prefix": "",
    "preserve_structure": False,
    "duplicate_handling": "timestamp",
    "exclude": (),
    "endpoint_url": None,
    "storage_class": None,
    "concurrency": 8,
    "completed_enabled": True,
    "part_size": 8 * MiB,
    "multipart_threshold": 8 * MiB,
    "parts_in_flight": 8,
    "checksum_algorithm": "auto",
    "payload_signing": False,
    "compression_level": 1,
    "profile": None,
    "region": None,
    "addressing_style": "auto",
    "read_timeout": 60.0,
    "connect_timeout": 10.0,
    "settle_seconds": 30.0,
    "hook": None,
    "hook_timeout": 30.0,
    "small_entry_size": 1 * MiB,
}


def format_value(name: str, value: object) -> str:
    """A setting's value as `amgmt config` prints it and the config file holds it (valid as an env value)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if name in SIZE_FIELDS and isinstance(value, int):
        return format_size(value)
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
