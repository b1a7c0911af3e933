"""The config file: where it is found, reading its MGMT_* keys, and changing them in place (atomically).

The origin's `KEY=VALUE` format; keys amgmt does not know (AWS credentials among them) are dropped on reading and
refused on writing. Must not validate values (that is `load.py`) nor read the environment beyond the given mapping."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from amgmt.config.settings import CONFIG_KEYS
from amgmt.config.values import show_value
from amgmt.errors import ConfigError

_CONFIG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A KEY=VALUE line as the writer sees it: (indentation and `export ` prefix, KEY).
_CONFIG_LINE = re.compile(r"^(\s*(?:export\s+)?)([A-Za-z_][A-Za-z0-9_]*)\s*=")


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
    return read_config_file(path)[0]


def read_config_file(path: Path) -> tuple[dict[str, str], list[str]]:
    """`parse_config_file`, and a warning for each key that looks meant for amgmt but is not one of its settings (an
    `MGMT_*` key, or one close to a setting's key), naming the nearest setting. AWS_* keys are dropped silently."""
    values: dict[str, str] = {}
    unknown: list[tuple[int, str]] = []
    _parse_config_text(_read_config_text(path), show_value(path), values=values, unknown=unknown)
    warnings = []
    for number, key in unknown:
        nearest = nearest_key(key)
        hint = f" (did you mean {nearest}?)" if nearest else ""
        warnings.append(f"config file {show_value(path)} line {number}: {key} is not an amgmt setting{hint}; ignored")
    return values, warnings


def nearest_key(key: str) -> str | None:
    """The setting key closest to a mistyped one (`MGMT_BUKET` -> `MGMT_BUCKET`, `bucket` -> `MGMT_BUCKET`)."""
    upper = key.upper()
    for candidate in (upper, upper if upper.startswith("MGMT_") else "MGMT_" + upper):
        found = difflib.get_close_matches(candidate, sorted(CONFIG_KEYS), n=1, cutoff=0.75)
        if found:
            return found[0]
    return None


def _meant_for_amgmt(key: str) -> bool:
    upper = key.upper()
    if upper.startswith("AWS_"):
        return False  # credentials and the AWS chain's own settings: never amgmt's, never echoed
    return upper.startswith(("MGMT_", "AMGMT_")) or nearest_key(key) is not None


def _read_config_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {show_value(path)}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"config file {show_value(path)}: cannot read it: {exc.strerror or exc}") from exc


def _parse_config_text(
    content: str,
    shown: str,
    *,
    values: dict[str, str] | None = None,
    unknown: list[tuple[int, str]] | None = None,
) -> dict[str, str]:
    values = {} if values is None else values
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
        if key in CONFIG_KEYS:
            values[key] = value
        elif unknown is not None and _meant_for_amgmt(key):
            unknown.append((number, key))
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


def write_config_values(
    path: Path, values: Mapping[str, str], *, comment: str | None = None, seed_from: Path | None = None
) -> Path | None:
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
    unknown = sorted(key for key in values if key not in CONFIG_KEYS)
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
            _parse_config_text(text, show_value(source))  # a malformed file is reported, never rewritten
        if exists:
            mode = path.stat().st_mode & 0o777
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            mode = 0o600
        _replace_file(path, _updated_config_text(text, quoted, comment), mode)
    except OSError as exc:
        raise ConfigError(f"cannot write the config file {show_value(path)}: {exc.strerror or exc}") from exc
    return None if exists else source
