"""Settings: CLI flags > MGMT_* environment > config file > defaults, validated once into a frozen value.

Owns the config file format (reading it, and writing it with `write_config_values`) and every validation rule. It
never reads, keeps or writes AWS credentials and does no I/O at import; `load_settings` reads only the config file
and checks that the configured directories make sense.

An empty value (``MGMT_ENDPOINT_URL=``, ``--endpoint-url ''``) resets a key to its default, overriding lower layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from amgmt.text import printable
from amgmt.errors import ConfigError
from amgmt.parts import MAX_PART_SIZE, MIN_PART_SIZE, GiB, MiB

ENV_PREFIX = "MGMT_"

DUPLICATE_MODES = ("timestamp", "subdirectory", "error")
CHECKSUM_MODES = ("auto", "when_supported", "when_required")
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

_SIZE_FIELDS = frozenset({"part_size", "multipart_threshold"})
_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_SIZE = re.compile(r"^([0-9]+)\s*(?:([kmg])(?:i?b)?|b)?$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "k": 1024, "m": MiB, "g": GiB}
_CONFIG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A KEY=VALUE line as the writer sees it: (indentation and `export ` prefix, KEY).
_CONFIG_LINE = re.compile(r"^(\s*(?:export\s+)?)([A-Za-z_][A-Za-z0-9_]*)\s*=")
_MAX_SHOWN = 200


@dataclass(frozen=True)
class Settings:
    """Validated settings of one amgmt run. Paths are absolute; `sources` says where each value came from."""

    bucket: str | None
    object_prefix: str  # no leading/trailing '/', '' when unset
    local_dir: Path
    completed_dir: Path
    preserve_structure: bool
    duplicate_handling: str  # "timestamp" | "subdirectory" | "error"
    endpoint_url: str | None
    storage_class: str | None
    concurrency: int
    completed_enabled: bool
    db_path: Path
    staging_dir: Path
    part_size: int
    multipart_threshold: int
    parts_in_flight: int
    checksum_mode: str  # resolved: "when_supported" | "when_required"
    payload_signing: bool  # SigV4 SHA-256 of every request body; off: UNSIGNED-PAYLOAD (Content-MD5 still checks data)
    compression_level: int
    profile: str | None
    region: str | None
    addressing_style: str  # resolved: "path" | "virtual" | "auto"
    read_timeout: float  # seconds without a byte from the server before a request is given up (and retried)
    connect_timeout: float  # seconds to open a connection to the endpoint
    sources: Mapping[str, str] = field(hash=False)  # field name -> "flag" | "env MGMT_X" | "config <path>" | "default"
    config_file: Path | None

    def describe(self) -> list[tuple[str, str, str]]:
        """(ENV KEY, value as text, source) for every setting, in field order; the text is valid as an env value."""
        return [
            (env_key(name), _format_value(name, getattr(self, name)), self.sources[name]) for name in SETTING_NAMES
        ]


SETTING_NAMES: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Settings) if f.name not in ("sources", "config_file")
)
_CONFIG_KEYS = frozenset(ENV_PREFIX + name.upper() for name in SETTING_NAMES)


def env_key(name: str) -> str:
    """The environment / config file key of a setting: `concurrency` -> `MGMT_CONCURRENCY`."""
    return ENV_PREFIX + name.upper()


class _Invalid(Exception):
    """A value was rejected; the reason is completed into a ConfigError naming the key and source."""


@dataclass(frozen=True)
class _Raw:
    value: object
    kind: str  # "flag" | "env" | "config" | "default"
    where: str = ""  # the env key or the config file path

    @property
    def source(self) -> str:
        return f"{self.kind} {self.where}" if self.where else self.kind

    @property
    def origin(self) -> str:
        # The key is already named in the message, so an env source needs no repeat of it.
        return f"config {_show(self.where)}" if self.kind == "config" else self.kind


class _Layers:
    """The three given layers, asked key by key; the first one holding a key wins."""

    def __init__(self, flags: Mapping[str, object], environ: Mapping[str, str], file_values: Mapping[str, str],
                 config_file: Path | None) -> None:
        self.flags = flags
        self.environ = environ
        self.file_values = file_values
        self.config_file = config_file

    def pick(self, name: str) -> _Raw | None:
        key = env_key(name)
        if self.flags.get(name) is not None:
            return _Raw(self.flags[name], "flag")
        if key in self.environ:
            return _Raw(self.environ[key], "env", key)
        if key in self.file_values:
            return _Raw(self.file_values[key], "config", str(self.config_file))
        return None


def _show(value: object) -> str:
    """A value as one readable line (text.printable), very long values cut."""
    text = printable(value)
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + "..."
    return text


def _error(name: str, raw: _Raw, reason: str) -> ConfigError:
    return ConfigError(f"{env_key(name)}={_show(raw.value)} (from {raw.origin}): {reason}")


def _is_empty(value: object) -> bool:
    return isinstance(value, str) and not value.strip()


def _text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Invalid("expected text")
    return str(value).strip()


def _has_control(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def _parse_bucket(value: object) -> str:
    text = _text(value)
    if not _BUCKET.match(text) or ".." in text:
        raise _Invalid(
            "expected an S3 bucket name: 3 to 63 lowercase letters, digits, '.' or '-', "
            "starting and ending with a letter or digit"
        )
    return text


def _parse_prefix(value: object) -> str:
    text = _text(value)
    if _has_control(text):
        raise _Invalid("control characters are not allowed in an object prefix")
    segments = [part for part in text.split("/") if part]
    if any(part in (".", "..") for part in segments):
        raise _Invalid("'.' and '..' segments are not allowed in an object prefix")
    return "/".join(segments)


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
        return _BOOLEANS[value.strip().lower()]
    raise _Invalid("expected one of true/false, 1/0, yes/no, on/off")


def _choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = value.strip().lower() if isinstance(value, str) else ""
        if text not in choices:
            raise _Invalid(f"expected one of {', '.join(choices)}")
        return text

    return parse


def _parse_storage_class(value: object) -> str:
    text = value.strip().upper() if isinstance(value, str) else ""
    if text not in STORAGE_CLASSES:
        raise _Invalid(f"expected one of {', '.join(STORAGE_CLASSES)}")
    return text


def _integer(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _INTEGER.match(value.strip()):
            number = int(value.strip())
        if number is None or not low <= number <= high:
            raise _Invalid(f"expected an integer from {low} to {high}")
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
        raise _Invalid("expected a number of seconds greater than 0 (such as 30 or 2.5)")
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
            raise _Invalid(expectation) from None
        if size < low or (high is not None and size > high):
            raise _Invalid(expectation)
        return size

    return parse


def _parse_endpoint(value: object) -> str:
    text = _text(value)
    invalid = _Invalid("expected an http:// or https:// URL with a host")
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


def _parse_name(value: object) -> str:
    text = _text(value)
    if _has_control(text):
        raise _Invalid("control characters are not allowed")
    return text


_PARSERS: dict[str, Callable[[object], Any]] = {
    "bucket": _parse_bucket,
    "object_prefix": _parse_prefix,
    "preserve_structure": _parse_bool,
    "duplicate_handling": _choice(DUPLICATE_MODES),
    "endpoint_url": _parse_endpoint,
    "storage_class": _parse_storage_class,
    "concurrency": _integer(1, 256),
    "completed_enabled": _parse_bool,
    "part_size": _size(MIN_PART_SIZE, MAX_PART_SIZE),
    "multipart_threshold": _size(0, None),
    "parts_in_flight": _integer(1, 1024),
    "checksum_mode": _choice(CHECKSUM_MODES),
    "payload_signing": _parse_bool,
    "compression_level": _integer(1, 3),
    "profile": _parse_name,
    "region": _parse_name,
    "addressing_style": _choice(ADDRESSING_STYLES),
    "read_timeout": _positive_seconds,
    "connect_timeout": _positive_seconds,
}
_DEFAULTS: dict[str, object] = {
    "bucket": None,
    "object_prefix": "",
    "preserve_structure": False,
    "duplicate_handling": "timestamp",
    "endpoint_url": None,
    "storage_class": None,
    "concurrency": 8,
    "completed_enabled": True,
    "part_size": 8 * MiB,
    "multipart_threshold": 8 * MiB,
    "parts_in_flight": 8,
    "checksum_mode": "auto",
    "payload_signing": False,
    "compression_level": 1,
    "profile": None,
    "region": None,
    "addressing_style": "auto",
    "read_timeout": 60.0,
    "connect_timeout": 10.0,
}
def _to_path(value: object, *, environ: Mapping[str, str], cwd: Path) -> Path:
    """An absolute, resolved path from a flag or text: `~` expanded (with environ's HOME), relative to cwd."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise _Invalid("expected a path")
    text = value.strip()
    if "\x00" in text:
        raise _Invalid("expected a path")
    if text == "~" or text.startswith("~/"):
        text = (environ.get("HOME") or os.path.expanduser("~")) + text[1:]
    elif text.startswith("~"):
        expanded = os.path.expanduser(text)
        if expanded == text:
            raise _Invalid(f"cannot expand {_show(text.split('/', 1)[0])}")
        text = expanded
    path = Path(text)
    if not path.is_absolute():
        path = cwd / path
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:
        raise _Invalid(f"cannot resolve the path: {exc}") from None


@dataclass(frozen=True)
class Layout:
    """Where amgmt reads and writes on disk: resolved, absolute paths. The metadata dir is the database's parent."""

    local_dir: Path
    completed_dir: Path
    db_path: Path
    staging_dir: Path

    @property
    def metadata_dir(self) -> Path:
        return self.db_path.parent

    @property
    def reserved(self) -> frozenset[Path]:
        """Dirs that `upload all` and `upload NAME` never take as entries (batch._reserved)."""
        return frozenset({self.completed_dir, self.metadata_dir, self.staging_dir})

    def in_entry(self, path: Path) -> bool:
        """True when `path` lies inside the local dir under an entry that amgmt would upload and move: its first
        component below the local dir is not one of the reserved dirs."""
        if self.local_dir not in path.parents:
            return False
        top = self.local_dir / path.relative_to(self.local_dir).parts[0]
        return top not in self.reserved


def _within(path: Path, outer: Path) -> bool:
    """`path` is `outer` or lies inside it."""
    return path == outer or outer in path.parents


_LOCAL = env_key("local_dir")
_COMPLETED = env_key("completed_dir")

# How the four locations may overlap. Each rule: (the setting blamed, why it is refused, the test). The first that
# holds wins. What stays allowed, and why it is safe:
# - the completed dir and the staging dir directly in the local dir, or inside one of amgmt's dirs there (the
#   defaults: LOCAL/completed, COMPLETED/.metadata/staging): entries are listed one level deep and amgmt's dirs
#   are never entries; the database inside the local dir only in the completed dir (default COMPLETED/.metadata),
#   where no other settings make it an entry;
# - any of them outside the local dir, side by side or nested in each other in the ways not listed here (the
#   database in the staging dir, say): staging cleanup removes only amgmt's own archives, by name and record;
# - a database in a dir that holds the local dir (`--db ~/amgmt.db` for ~/media): amgmt never lists, moves or
#   removes anything in the metadata dir, and the run lock is on the local dir itself.
LAYOUT_RULES: tuple[tuple[str, str, Callable[[Layout], bool]], ...] = (
    # the completed dir: originals are moved into it, so it must be apart from the entries
    ("completed_dir", f"must not be the local dir or hold it ({_LOCAL}): originals would be moved onto entries",
     lambda l: _within(l.local_dir, l.completed_dir)),
    ("completed_dir", f"must not be inside an entry of the local dir ({_LOCAL}): that entry would be uploaded "
                      "and moved with everything moved into it",
     lambda l: l.in_entry(l.completed_dir)),
    # the database: in an entry (or as one) it would be uploaded and moved away, and its records lost
    ("db_path", f"must not be directly in the local dir ({_LOCAL}): it would be uploaded and moved as an entry",
     lambda l: l.metadata_dir == l.local_dir),
    ("db_path", f"must not be in the local dir ({_LOCAL}) except inside the completed dir ({_COMPLETED}): "
                "elsewhere its dir takes the place of an entry or is uploaded and moved with one",
     lambda l: l.local_dir in l.metadata_dir.parents and not _within(l.metadata_dir, l.completed_dir)),
    # the staging dir: its archives must never sit among entries or originals
    ("staging_dir", f"must not be the local dir or hold it ({_LOCAL}): archives would sit among the entries",
     lambda l: _within(l.local_dir, l.staging_dir)),
    ("staging_dir", f"must not be inside an entry of the local dir ({_LOCAL}): archives would be uploaded and "
                    "moved with it",
     lambda l: l.in_entry(l.staging_dir)),
    ("staging_dir", f"must not be the completed dir or hold it ({_COMPLETED}): archives would sit among the "
                    "moved originals",
     lambda l: _within(l.completed_dir, l.staging_dir)),
)


def layout_problem(layout: Layout) -> tuple[str, str] | None:
    """The first rule of LAYOUT_RULES that `layout` breaks, as (setting name, reason); None when it is safe."""
    for name, reason, breaks in LAYOUT_RULES:
        if breaks(layout):
            return name, reason
    return None


def _kind(path: Path) -> str | None:
    """'dir', 'other' or None (missing); a path that cannot be examined is an _Invalid."""
    try:
        if not path.exists():
            return None
        return "dir" if path.is_dir() else "other"
    except OSError as exc:
        raise _Invalid(f"cannot examine the path: {exc.strerror or exc}") from None


def config_home(environ: Mapping[str, str]) -> Path | None:
    """$XDG_CONFIG_HOME when absolute (the XDG spec ignores a relative one), else $HOME/.config; None without HOME."""
    xdg = environ.get("XDG_CONFIG_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg)
    if environ.get("HOME"):
        return Path(environ["HOME"]) / ".config"
    return None


def own_config_path(environ: Mapping[str, str]) -> Path:
    """The file amgmt writes its settings to: $XDG_CONFIG_HOME (or $HOME/.config)/amgmt/config, never the origin's
    .../mgmt/config. ConfigError when neither variable says where that is."""
    base = config_home(environ)
    if base is None:
        raise ConfigError("neither XDG_CONFIG_HOME nor HOME is set: give the config file with --config")
    return base / "amgmt" / "config"


def default_config_path(environ: Mapping[str, str]) -> Path | None:
    """$XDG_CONFIG_HOME (or $HOME/.config)/amgmt/config if it exists, else the origin's .../mgmt/config, else None.

    Only `environ` is consulted (a relative XDG_CONFIG_HOME is ignored, as the XDG spec says); without HOME there is
    no default config file.
    """
    base = config_home(environ)
    if base is None:
        return None
    for app in ("amgmt", "mgmt"):
        candidate = base / app / "config"
        if candidate.exists():
            return candidate
    return None


def _unquote(rest: str) -> str | None:
    """The value part of a line: quotes stripped, a trailing ` # comment` dropped; None when malformed."""
    rest = rest.strip()
    if rest[:1] in ("'", '"'):
        end = rest.find(rest[0], 1)
        if end < 0:
            return None
        tail = rest[end + 1 :].strip()
        if tail and not tail.startswith("#"):
            return None
        return rest[1:end]
    comment = re.search(r"\s#", rest)
    return rest[: comment.start()].rstrip() if comment else rest


def parse_config_file(path: Path) -> dict[str, str]:
    """The MGMT_* settings of a config file in the origin's `KEY=VALUE` format.

    Blank lines and `#` comments are skipped, an `export ` prefix and surrounding quotes are stripped, and spaces
    around `=` are tolerated. Keys amgmt does not know (the origin's other keys, AWS credentials) are dropped here,
    so they never travel further. The last of repeated keys wins.
    """
    return _parse_config_text(_read_config_text(path), _show(path))


def _read_config_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {_show(path)}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"config file {_show(path)}: cannot read it: {exc.strerror or exc}") from exc


def _parse_config_text(content: str, shown: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(content.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export") :].lstrip()
        key, sep, rest = line.partition("=")
        key = key.strip()
        value = _unquote(rest) if sep else None
        if value is None or not _CONFIG_KEY.match(key):
            # Never echo the line: it may hold a secret.
            raise ConfigError(f"config file {shown} line {number}: expected KEY=VALUE")
        if key in _CONFIG_KEYS:
            values[key] = value
    return values


def _quote_value(value: str) -> str:
    """`value` as the config file writes it: bare when `_unquote` reads it back unchanged, else in quotes."""
    if not value.isprintable():
        raise ConfigError("the value holds control characters")
    if value == value.strip() and not re.search(r"\s#", value) and value[:1] not in ("'", '"'):
        return value
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise ConfigError("the value holds both kinds of quotes")


def _updated_config_text(text: str, quoted: Mapping[str, str], comment: str | None) -> str:
    out: list[str] = []
    written: set[str] = set()
    for line in text.splitlines():
        match = _CONFIG_LINE.match(line)
        if match and match.group(2) in quoted:
            prefix, key = match.groups()
            out.append(f"{prefix}{key}={quoted[key]}")
            written.add(key)
        else:
            out.append(line)
    missing = [key for key in quoted if key not in written]
    if missing and comment is not None:
        if out and out[-1].strip():
            out.append("")
        out.append(f"# {comment}")
    out += [f"{key}={quoted[key]}" for key in missing]
    return "\n".join(out) + "\n"


def _replace_file(path: Path, text: str, mode: int) -> None:
    """Write `text` to a temp file beside `path`, fsync it, give it `mode`, and rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_config_values(path: Path, values: Mapping[str, str], *, comment: str | None = None,
                        seed_from: Path | None = None) -> Path | None:
    """Set `values` (MGMT_* keys) in the config file at `path`; return the file it was seeded from, else None.

    - The file is parsed first: a malformed one raises ConfigError and is never rewritten.
    - Every line of a key gets the new value where it stands, keeping its indentation and `export ` prefix; every
      other line (comments, blank lines, other keys) is kept as it is. Keys not in the file are appended, under
      `# comment` when given. Values are quoted only where `parse_config_file` needs it to read them back.
    - When `path` does not exist yet and `seed_from` (another config file) is given, the new file starts as a copy of
      it, checked the same way; `seed_from` itself is never changed.
    - The file is replaced atomically through a temp file in its directory and keeps its permission bits; a new
      file is 0600, in a 0700 directory when that is created. A symlink is followed: the file it points to is
      replaced and the link stays. An OSError becomes a one-line ConfigError.

    A key that is not an MGMT_* setting is a programming error (ValueError): credentials are never written.
    """
    unknown = sorted(key for key in values if key not in _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"not amgmt config keys: {unknown}")
    if comment is not None and not comment.isprintable():
        raise ValueError("the comment must be one line of printable text")
    quoted = {key: _quote_value(value) for key, value in values.items()}
    try:
        if path.is_symlink():  # a config kept elsewhere (a dotfiles repo): change the file, keep the link
            path = Path(os.path.realpath(path))
        exists = path.exists()
        source = path if exists else (seed_from if seed_from is not None and seed_from != path else None)
        text = ""
        if source is not None:
            text = _read_config_text(source)
            _parse_config_text(text, _show(source))  # a malformed file is reported, never rewritten
        if exists:
            mode = path.stat().st_mode & 0o777
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            mode = 0o600
        _replace_file(path, _updated_config_text(text, quoted, comment), mode)
    except OSError as exc:
        raise ConfigError(f"cannot write the config file {_show(path)}: {exc.strerror or exc}") from exc
    return None if exists else source


def load_settings(
    *,
    flags: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    require_bucket: bool = True,
    cwd: Path | None = None,
) -> Settings:
    """Settings from flags (by field name; None = not given) > environ (MGMT_*) > config file > defaults.

    `config_path` is read if given (and must exist), else `default_config_path(environ)` if any. `environ` defaults
    to os.environ, `cwd` to the process's. Every invalid value raises a one-line ConfigError naming its key.
    """
    flags = dict(flags or {})
    unknown = sorted(set(flags) - set(SETTING_NAMES))
    if unknown:
        raise TypeError(f"unknown settings flags: {', '.join(unknown)}")
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else Path(cwd).absolute()

    if config_path is not None:
        config_file: Path | None = Path(os.path.expanduser(config_path))
        if not config_file.is_absolute():
            config_file = cwd / config_file
        if not config_file.exists():
            raise ConfigError(f"config file {_show(config_file)} does not exist")
    else:
        config_file = default_config_path(environ)
    file_values = parse_config_file(config_file) if config_file is not None else {}

    layers = _Layers(flags, environ, file_values, config_file)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    for name, parse in _PARSERS.items():
        raw = layers.pick(name)
        sources[name] = raw.source if raw else "default"
        if raw is None or _is_empty(raw.value):
            values[name] = _DEFAULTS[name]
            continue
        try:
            values[name] = parse(raw.value)
        except _Invalid as exc:
            raise _error(name, raw, str(exc)) from None

    if require_bucket and values["bucket"] is None:
        raise ConfigError(
            f"{env_key('bucket')} is not set: give --bucket, set {env_key('bucket')} or add it to the config file"
        )

    def resolve_path(name: str, default: Path, check: Callable[[Path], str | None]) -> Path:
        raw = layers.pick(name)
        sources[name] = raw.source if raw else "default"
        if raw is None or _is_empty(raw.value):
            raw = _Raw(default, "default")
        try:
            path = _to_path(raw.value, environ=environ, cwd=cwd)
            problem = check(path)
        except _Invalid as exc:
            raise _error(name, raw, str(exc)) from None
        if problem:
            raise _error(name, raw, problem)
        return path

    def local_dir_problem(path: Path) -> str | None:
        kind = _kind(path)
        return "no such directory" if kind is None else "not a directory" if kind != "dir" else None

    def dir_problem(path: Path) -> str | None:
        return "exists and is not a directory" if _kind(path) == "other" else None

    def file_problem(path: Path) -> str | None:
        return "is a directory" if _kind(path) == "dir" else None

    local_dir = resolve_path("local_dir", cwd, local_dir_problem)
    completed_dir = resolve_path("completed_dir", local_dir / "completed", dir_problem)
    metadata = completed_dir / ".metadata"
    db_path = resolve_path("db_path", metadata / "operations.db", file_problem)
    staging_dir = resolve_path("staging_dir", metadata / "staging", dir_problem)
    layout = Layout(local_dir=local_dir, completed_dir=completed_dir, db_path=db_path, staging_dir=staging_dir)
    problem = layout_problem(layout)
    if problem is not None:
        name, reason = problem
        raw = layers.pick(name)
        if raw is None or _is_empty(raw.value):
            raw = _Raw(getattr(layout, name), "default")
        raise _error(name, raw, reason)
    values.update(local_dir=local_dir, completed_dir=completed_dir, db_path=db_path, staging_dir=staging_dir)

    # S3-compatible stores reject botocore's default CRC checksums and often virtual-hosted addressing.
    custom_endpoint = values["endpoint_url"] is not None
    if values["checksum_mode"] == "auto":
        values["checksum_mode"] = "when_required" if custom_endpoint else "when_supported"
    if values["addressing_style"] == "auto" and custom_endpoint:
        values["addressing_style"] = "path"

    ordered_sources = {name: sources[name] for name in SETTING_NAMES}
    return Settings(
        **{name: values[name] for name in SETTING_NAMES},
        sources=MappingProxyType(ordered_sources),
        config_file=config_file,
    )


def _format_value(name: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if name in _SIZE_FIELDS and isinstance(value, int):
        return format_size(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
