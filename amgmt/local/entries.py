"""Choosing entries: what `upload all` lists, what `upload NAME...` names, their keys and sizes for a plan.

Synchronous and read-only: lstat, scandir and the settings; never opens a file's contents, never touches S3."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amgmt.config import Settings
from amgmt.errors import ConfigError, NotFoundError, ValidationError
from amgmt.local.copying import tree_size
from amgmt.naming import PARTIAL_SUFFIX, display, object_key


def _reserved(settings: Settings) -> set[Path]:
    return {settings.completed_dir, settings.db_path.parent, settings.staging_dir}


def list_entries(settings: Settings) -> tuple[list[Path], list[str]]:
    """`upload all`: regular files and directories directly in the local dir, sorted; plus what was ignored and why.

    Left out: the completed, metadata and staging dirs, hidden entries, partial archives, and anything that is not
    a regular file or directory (symlinks, FIFOs, devices), which are reported as ignored.

    The directory is read as a stream: each item is judged as it comes (by its type from the directory, no stat
    where the file system gives one) and only its name is kept, so that a folder of 100,000 photos costs a name
    each, not a scandir item with its stat (measured: 88 MB at 100,000 items, most of which the process kept).
    """
    reserved = {os.fspath(path) for path in _reserved(settings)}
    kept: list[str] = []
    ignored: list[tuple[str, str]] = []
    try:
        with os.scandir(settings.local_dir) as items:
            for item in items:
                name = item.name
                if item.path in reserved or _hidden_or_partial(name):
                    continue
                try:
                    if item.is_file(follow_symlinks=False) or item.is_dir(follow_symlinks=False):
                        kept.append(name)
                    elif item.is_symlink():
                        ignored.append((name, "symbolic link (upload its target instead)"))
                    else:
                        ignored.append((name, "not a regular file or directory"))
                except OSError:
                    continue  # vanished while listing
    except OSError as exc:
        raise ConfigError(f"cannot list the local dir {display(settings.local_dir)}: {exc.strerror}") from exc
    kept.sort(key=os.fsencode)
    ignored.sort(key=lambda note: os.fsencode(note[0]))
    local = settings.local_dir
    return [local / name for name in kept], [f"{display(name)}: {why}" for name, why in ignored]


def _hidden_or_partial(name: str) -> bool:
    return name.startswith(".") or name.endswith(PARTIAL_SUFFIX)


def _left_out(path: Path, reserved: set[Path]) -> bool:
    return path in reserved or _hidden_or_partial(path.name)


def top_level_entry(settings: Settings, path: Path) -> Path | None:
    """The entry of the local dir that `path` lies in (or is), if `upload all` would list one by that name: None for
    amgmt's own dirs, hidden names, partial archives and paths outside the local dir. Judged by the name alone."""
    try:
        relative = path.relative_to(settings.local_dir)
    except ValueError:
        return None
    if not relative.parts:
        return None
    top = settings.local_dir / relative.parts[0]
    return None if _left_out(top, _reserved(settings)) else top


def resolve_names(settings: Settings, names: list[str]) -> list[Path]:
    """`upload NAME...`: each NAME must be a regular file or directory inside the local dir (not in reserved dirs)."""
    local = settings.local_dir
    reserved = _reserved(settings)
    found: list[Path] = []
    for name in names:
        if not name or "\x00" in name:
            raise ConfigError(f"invalid entry name {name!r}")
        raw = Path(name)  # the shell expands ~; an entry may be named `~`
        path = raw if raw.is_absolute() else local / raw
        try:
            parent = path.parent.resolve(strict=True)
        except (OSError, RuntimeError):
            raise NotFoundError(f"{display(name)}: no such file or directory in {display(local)}") from None
        path = parent / path.name
        if path.name in ("", ".", "..") or path == local:
            raise ConfigError(f"{display(name)}: name an entry inside {display(local)}, not the directory itself")
        try:
            path.relative_to(local)
        except ValueError:
            raise ConfigError(f"{display(name)}: outside the local dir {display(local)}") from None
        if any(path == r or r in path.parents for r in reserved):
            raise ConfigError(f"{display(name)}: inside amgmt's completed/metadata/staging dirs")
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            raise NotFoundError(f"{display(name)}: no such file or directory in {display(local)}") from None
        except OSError as exc:
            raise ConfigError(f"{display(name)}: {exc.strerror}") from None
        if stat.S_ISLNK(mode):
            raise ConfigError(f"{display(name)}: is a symbolic link; amgmt uploads files and directories only")
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ConfigError(f"{display(name)}: not a regular file or directory")
        if path not in found:
            found.append(path)
    return found


@dataclass(frozen=True)
class FilterRule:
    """One `--exclude PATTERN` or `--include PATTERN`: a shell glob (`*`, `?`, `[...]`) on an entry's name."""

    include: bool
    pattern: str
    origin: str = ""  # where the rule came from when not the command line: "MGMT_EXCLUDE"

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)

    def __str__(self) -> str:
        return f"{self.origin or ('--include' if self.include else '--exclude')} {self.pattern!r}"


def check_pattern(pattern: str, *, option: str) -> str:
    """A filter pattern as given, or a one-line ConfigError (empty, or holding control characters)."""
    if not pattern.strip() or not pattern.isprintable():
        raise ConfigError(f"{option} {display(pattern)!r}: expected a shell pattern such as '*.tmp'")
    return pattern


IMPLIED_EXCLUDE = FilterRule(False, "*")  # what rclone adds after --include rules: leave out what none matches


@dataclass(frozen=True)
class EntryFilter:
    """Which entries a run takes, by `--exclude`/`--include` on the command line and MGMT_EXCLUDE.

    As `aws s3`: every entry is taken unless a rule says otherwise, and when several rules match an entry, the last
    one decides. MGMT_EXCLUDE comes first, so the command line can take back what it leaves out. One addition, from
    rclone: when the command line's first rule is an `--include`, what no rule matches is left out, so that
    `--include '*.mp4'` alone means "only the .mp4 entries" (in `aws s3` such a rule would change nothing).
    Filters choose whole entries: they never leave a file out of an entry's archive.
    """

    rules: tuple[FilterRule, ...] = ()
    default_include: bool = True

    @classmethod
    def build(cls, configured: Iterable[str] = (), given: Sequence[FilterRule] = ()) -> EntryFilter:
        rules = [FilterRule(False, check_pattern(p, option="MGMT_EXCLUDE"), "MGMT_EXCLUDE") for p in configured]
        for rule in given:
            check_pattern(rule.pattern, option=f"--{'include' if rule.include else 'exclude'}")
        return cls(tuple(rules) + tuple(given), default_include=not (given and given[0].include))

    def decide(self, name: str) -> FilterRule | None:
        """The rule that leaves `name` out, or None when the entry is taken."""
        taken, deciding = self.default_include, None
        for rule in self.rules:
            if rule.matches(name):
                taken, deciding = rule.include, rule
        if taken:
            return None
        return deciding or IMPLIED_EXCLUDE

    def select(self, settings: Settings, entries: list[Path]) -> tuple[list[Path], list[str]]:
        """(the entries taken, one note per entry left out and the rule that did it). An entry is matched by its
        name, or with MGMT_PRESERVE_STRUCTURE by its path inside the local dir (`*` also matches `/`)."""
        if not self.rules:
            return entries, []
        kept: list[Path] = []
        excluded: list[str] = []
        for entry in entries:
            name = _filter_name(settings, entry)
            rule = self.decide(name)
            if rule is None:
                kept.append(entry)
            elif rule is IMPLIED_EXCLUDE:
                excluded.append(f"{display(name)} (no --include matches it)")
            else:
                excluded.append(f"{display(name)} ({display(str(rule))})")
        return kept, excluded


def _filter_name(settings: Settings, entry: Path) -> str:
    if settings.preserve_structure:
        try:
            return entry.relative_to(settings.local_dir).as_posix()
        except ValueError:
            pass
    return entry.name


def entry_key(settings: Settings, entry: Path) -> str:
    """`[prefix/]NAME.tar.gz`; with MGMT_PRESERVE_STRUCTURE, NAME is the entry's path inside the local dir, so
    `s1/ep1.mkv` and `s2/ep1.mkv` get different keys."""
    if settings.preserve_structure:
        try:
            return object_key(settings.object_prefix, *entry.relative_to(settings.local_dir).parts)
        except ValueError:
            pass
    return object_key(settings.object_prefix, entry.name)


@dataclass(frozen=True, slots=True)
class PlannedEntry:
    """An entry as listed: walked once here, and handed down to the pipeline (its validate stage does not walk it
    again; the archive's byte count must equal `size`, or the entry changed between listing and compression)."""

    path: Path
    key: str
    size: int  # bytes of regular files
    is_directory: bool
    file_count: int = 0  # regular files

    def to_dict(self, bucket: str | None) -> dict[str, Any]:
        return {
            "target_name": display(self.path.name),
            "target_path": display(self.path),
            "is_directory": self.is_directory,
            "original_size": self.size,
            "s3_bucket": bucket,
            "s3_object_key": self.key,
        }


def plan(settings: Settings, entries: list[Path]) -> list[PlannedEntry]:
    """Each entry with its key, size, kind and file count: the one walk of each entry before it is packed (an entry
    that cannot be walked is planned empty; its validate stage reports why)."""
    return [plan_entry(settings, path) for path in entries]


def plan_entry(settings: Settings, path: Path) -> PlannedEntry:
    try:
        size, count, is_dir = tree_size(path)
    except OSError:
        size, count, is_dir = 0, 0, False
    return PlannedEntry(path, entry_key(settings, path), size, is_dir, count)


def validate_entry(entry: Path, local_dir: Path) -> os.stat_result:
    """Stage 1: the entry must exist, lie inside the local dir, and be a regular file or a directory (not a
    symlink); its lstat. ValidationError otherwise."""
    try:
        st = entry.lstat()
    except FileNotFoundError as exc:
        raise ValidationError(f"{display(entry)} does not exist (deleted since it was listed?)") from exc
    except OSError as exc:
        raise ValidationError(f"cannot access {display(entry)}: {exc.strerror}") from exc
    try:
        entry.parent.resolve(strict=True).relative_to(local_dir)
    except (OSError, ValueError) as exc:
        raise ValidationError(f"{display(entry)} is not inside the local dir {display(local_dir)}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise ValidationError(f"{display(entry)} is a symbolic link; amgmt uploads files and directories only")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise ValidationError(f"{display(entry)} is not a regular file or directory")
    return st
