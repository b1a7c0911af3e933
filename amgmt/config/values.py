"""The value of each setting: its parser (text or flag -> value), its default and its text form.

Pure functions and constants; must not read the environment, the config file or the disk."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from amgmt.parts import MAX_PART_SIZE, MIN_PART_SIZE, GiB, MiB
from amgmt.text import printable, redacted_url

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

CONFLICT_MODES = ("fail", "rename", "overwrite")
SSE_MODES = ("AES256", "aws:kms")
CANNED_ACLS = (
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
)
MAX_TAGS = 10  # S3's limit per object
MAX_METADATA_BYTES = 2048  # S3's limit on the user metadata of a PUT (amgmt's own names take about 200 of it)
# Names amgmt writes itself (s3/values.py METADATA_*): a user value must not shadow them.
RESERVED_METADATA_PREFIX = "amgmt-"

SIZE_FIELDS = frozenset({"part_size", "multipart_threshold", "small_entry_size"})
_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_SIZE = re.compile(r"^([0-9]+)\s*(?:([kmg])(?:i?b)?|b)?$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "k": 1024, "m": MiB, "g": GiB}
_RATE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([bkmgtp])?$", re.IGNORECASE)
_RATE_UNITS = {"b": 1, "k": 1024, "m": MiB, "g": GiB, "t": 1024 * GiB, "p": 1024 * 1024 * GiB}
_METADATA_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_TAG_TEXT = re.compile(r"^[\w .:/=+@-]*$")
_MAX_SHOWN = 200
SECRET_FIELDS = frozenset({"db_url"})  # shown with their password replaced (text.redacted_url), never whole


class Invalid(Exception):
    """A value was rejected; the reason is completed into a ConfigError naming the key and source."""


def show_value(value: object, name: str = "") -> str:
    """A value as one readable line (text.printable), very long values cut; a repeated flag's values joined by
    commas, as the MGMT_* variable would hold them; a secret setting's password hidden."""
    if isinstance(value, (tuple, list)):
        value = ",".join(map(str, value))
    text = printable(redacted_url(str(value)) if name in SECRET_FIELDS else value)
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
    return _url(value, ("http", "https"), "expected an http:// or https:// URL with a host")


def _url(value: object, schemes: tuple[str, ...], expectation: str) -> str:
    """A URL of one of `schemes` with a host (and a port that is a number, if any), kept as written."""
    text = _text(value)
    invalid = Invalid(expectation)
    if _has_control(text) or " " in text:
        raise invalid
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError on a port that is not a number
    except ValueError:
        raise invalid from None
    if parts.scheme.lower() not in schemes or not parts.hostname:
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


def _parse_db_url(value: object) -> str:
    return _url(value, ("postgresql", "postgres"), "expected a postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE URL")


def _parse_host_id(value: object) -> str:
    text = _parse_name(value).strip()
    if not text or len(text) > 255:
        raise Invalid("expected a name of 1 to 255 characters")
    return text


def _lease_seconds(value: object) -> float:
    number = _positive_seconds(value)
    if not 1 <= number <= 3600:
        raise Invalid("expected a number of seconds from 1 to 3600")
    return number


def parse_rate(value: object) -> int:
    """A bandwidth in bytes per second, as rclone's --bwlimit takes it: `10M` (10 MiB/s), `512K`, `1.5M`, `100B`;
    a plain number is KiB/s; `off` (or 0) is no limit."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise Invalid("a rate cannot be negative")
        return value
    text = value.strip() if isinstance(value, str) else ""
    if text.lower() == "off":
        return 0
    match = _RATE.match(text)
    if not match:
        raise Invalid("expected a rate such as 10M (10 MiB/s), 512K, 1.5M or off (a plain number is KiB/s)")
    unit = (match.group(2) or "k").lower()
    return int(float(match.group(1)) * _RATE_UNITS[unit])


def format_rate(rate: int) -> str:
    if rate == 0:
        return "off"
    for unit, factor in (("G", GiB), ("M", MiB), ("K", 1024)):
        if rate % factor == 0:
            return f"{rate // factor}{unit}"
    return f"{rate}B"


def _parse_sse(value: object) -> str:
    text = value.strip() if isinstance(value, str) else ""
    for mode in SSE_MODES:
        if text.lower() == mode.lower():
            return mode
    raise Invalid(f"expected one of {', '.join(SSE_MODES)}")


def _pairs(value: object) -> list[tuple[str, str]]:
    """KEY=VALUE items: a flag's tuple (one per --tag/--metadata), or comma-separated text (env, config file)."""
    if isinstance(value, (tuple, list)):
        items = [str(item) for item in value]
    else:
        items = _text(value).split(",")
    pairs = []
    for item in items:
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise Invalid(f"expected KEY=VALUE, got {show_value(item)!r}")
        pairs.append((key.strip(), val.strip()))
    return pairs


def _parse_tags(value: object) -> tuple[str, ...]:
    pairs = _pairs(value)
    if len(pairs) > MAX_TAGS:
        raise Invalid(f"S3 keeps at most {MAX_TAGS} tags on an object")
    if len({key for key, _ in pairs}) != len(pairs):
        raise Invalid("a tag key is given twice")
    for key, val in pairs:
        if len(key) > 128 or len(val) > 256 or not _TAG_TEXT.match(key) or not _TAG_TEXT.match(val):
            raise Invalid(
                f"tag {show_value(key)!r}: keys up to 128 and values up to 256 characters of letters, digits,"
                " spaces and + - = . _ : / @"
            )
        if key.lower().startswith("aws:"):
            raise Invalid(f"tag {show_value(key)!r}: the aws: prefix is reserved for AWS")
    return tuple(f"{key}={val}" for key, val in pairs)


def _parse_metadata(value: object) -> tuple[str, ...]:
    pairs = [(key.lower(), val) for key, val in _pairs(value)]
    if len({key for key, _ in pairs}) != len(pairs):
        raise Invalid("a metadata key is given twice")
    for key, val in pairs:
        if not _METADATA_KEY.match(key):
            raise Invalid(f"metadata key {show_value(key)!r}: letters, digits, '-' and '_' only")
        if key.startswith(RESERVED_METADATA_PREFIX):
            raise Invalid(f"metadata key {show_value(key)!r}: the {RESERVED_METADATA_PREFIX} prefix is amgmt's own")
        if not val.isascii() or not val.isprintable():
            raise Invalid(f"metadata {show_value(key)!r}: the value must be printable ASCII (it travels in a header)")
    if sum(len(key) + len(val) for key, val in pairs) > MAX_METADATA_BYTES - 256:
        raise Invalid(f"user metadata is limited to {MAX_METADATA_BYTES - 256} bytes (S3 allows 2 KiB with amgmt's)")
    return tuple(f"{key}={val}" for key, val in pairs)


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
    "db_url": _parse_db_url,
    "host_id": _parse_host_id,
    "lease_seconds": _lease_seconds,
    "on_conflict": _choice(CONFLICT_MODES),
    "sse": _parse_sse,
    "sse_kms_key_id": _parse_name,
    "tags": _parse_tags,
    "metadata": _parse_metadata,
    "acl": _choice(CANNED_ACLS),
    "bwlimit": parse_rate,
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
    "db_url": None,
    "host_id": None,  # resolved to the host name by load_settings
    "lease_seconds": 60.0,
    "on_conflict": "fail",
    "sse": None,
    "sse_kms_key_id": None,
    "tags": (),
    "metadata": (),
    "acl": None,
    "bwlimit": 0,
    "small_entry_size": 1 * MiB,
}


def format_value(name: str, value: object) -> str:
    """A setting's value as `amgmt config` prints it and the config file holds it (valid as an env value)."""
    if value is None:
        return ""
    if name in SECRET_FIELDS:
        return redacted_url(str(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if name in SIZE_FIELDS and isinstance(value, int):
        return format_size(value)
    if name == "bwlimit" and isinstance(value, int):
        return format_rate(value)
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
