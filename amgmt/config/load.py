"""`load_settings`: the layers (flags > MGMT_* environment > config file > defaults) asked key by key, every value
validated, the four locations resolved and checked; one frozen Settings or a one-line ConfigError naming the key.

Reads only the config file and what exists at the configured paths; must not create anything."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from amgmt.config.file import default_config_path, read_config_file
from amgmt.config.locations import Layout, layout_problem, path_kind, to_path
from amgmt.config.settings import SETTING_NAMES, Settings, env_key
from amgmt.config.values import DEFAULTS, PARSERS, Invalid, is_empty, show_value
from amgmt.errors import ConfigError


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
        return f"config {show_value(self.where)}" if self.kind == "config" else self.kind


class _Layers:
    """The three given layers, asked key by key; the first one holding a key wins."""

    def __init__(
        self,
        flags: Mapping[str, object],
        environ: Mapping[str, str],
        file_values: Mapping[str, str],
        config_file: Path | None,
    ) -> None:
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


def _error(name: str, raw: _Raw, reason: str) -> ConfigError:
    return ConfigError(f"{env_key(name)}={show_value(raw.value, name)} (from {raw.origin}): {reason}")


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

    config_file = _config_file(config_path, environ, cwd)
    file_values, warnings = read_config_file(config_file) if config_file is not None else ({}, [])
    layers = _Layers(flags, environ, file_values, config_file)
    sources: dict[str, str] = {}

    values = _parsed_values(layers, sources)
    if require_bucket and values["bucket"] is None:
        raise ConfigError(
            f"{env_key('bucket')} is not set: give --bucket, set {env_key('bucket')} or add it to the config file"
        )
    layout = _checked_layout(layers, sources, environ=environ, cwd=cwd)
    values.update(
        local_dir=layout.local_dir,
        completed_dir=layout.completed_dir,
        db_path=layout.db_path,
        staging_dir=layout.staging_dir,
    )
    _resolve_auto(values)
    _check_combinations(values, layers)

    ordered_sources = {name: sources[name] for name in SETTING_NAMES}
    return Settings(
        **{name: values[name] for name in SETTING_NAMES},
        sources=MappingProxyType(ordered_sources),
        config_file=config_file,
        warnings=tuple(warnings),
    )


def _config_file(config_path: Path | None, environ: Mapping[str, str], cwd: Path) -> Path | None:
    """The config file to read: `config_path` (relative to cwd, which must exist), else the default one if any."""
    if config_path is None:
        return default_config_path(environ)
    config_file = Path(os.path.expanduser(config_path))
    if not config_file.is_absolute():
        config_file = cwd / config_file
    if not config_file.exists():
        raise ConfigError(f"config file {show_value(config_file)} does not exist")
    return config_file


def _parsed_values(layers: _Layers, sources: dict[str, str]) -> dict[str, Any]:
    """Every setting but the four locations, parsed from the layer that holds it (its source into `sources`)."""
    values: dict[str, Any] = {}
    for name, parse in PARSERS.items():
        raw = layers.pick(name)
        sources[name] = raw.source if raw else "default"
        if raw is None or is_empty(raw.value):
            values[name] = DEFAULTS[name]
            continue
        try:
            values[name] = parse(raw.value)
        except Invalid as exc:
            raise _error(name, raw, str(exc)) from None
    return values


def _checked_layout(layers: _Layers, sources: dict[str, str], *, environ: Mapping[str, str], cwd: Path) -> Layout:
    """The four locations, each resolved and checked for what exists there, then checked against LAYOUT_RULES."""

    def resolve_path(name: str, default: Path, check: Callable[[Path], str | None]) -> Path:
        raw = layers.pick(name)
        sources[name] = raw.source if raw else "default"
        if raw is None or is_empty(raw.value):
            raw = _Raw(default, "default")
        try:
            path = to_path(raw.value, environ=environ, cwd=cwd)
            problem = check(path)
        except Invalid as exc:
            raise _error(name, raw, str(exc)) from None
        if problem:
            raise _error(name, raw, problem)
        return path

    local_dir = resolve_path("local_dir", cwd, _local_dir_problem)
    completed_dir = resolve_path("completed_dir", local_dir / "completed", _dir_problem)
    metadata = completed_dir / ".metadata"
    db_path = resolve_path("db_path", metadata / "operations.db", _file_problem)
    staging_dir = resolve_path("staging_dir", metadata / "staging", _dir_problem)
    layout = Layout(local_dir=local_dir, completed_dir=completed_dir, db_path=db_path, staging_dir=staging_dir)
    problem = layout_problem(layout)
    if problem is not None:
        name, reason = problem
        raw = layers.pick(name)
        if raw is None or is_empty(raw.value):
            raw = _Raw(getattr(layout, name), "default")
        raise _error(name, raw, reason)
    return layout


def _local_dir_problem(path: Path) -> str | None:
    kind = path_kind(path)
    return "no such directory" if kind is None else "not a directory" if kind != "dir" else None


def _dir_problem(path: Path) -> str | None:
    return "exists and is not a directory" if path_kind(path) == "other" else None


def _file_problem(path: Path) -> str | None:
    return "is a directory" if path_kind(path) == "dir" else None


def _resolve_auto(values: dict[str, Any]) -> None:
    """`auto` addressing style made concrete for the endpoint (`auto` checksums are probed on the endpoint itself:
    amgmt.s3.probe); the host id, when not set, is the host name."""
    # S3-compatible stores often lack virtual-hosted addressing (DNS for bucket.host).
    if values["host_id"] is None:
        values["host_id"] = socket.gethostname() or "localhost"
    custom_endpoint = values["endpoint_url"] is not None
    if values["addressing_style"] == "auto" and custom_endpoint:
        values["addressing_style"] = "path"


def _check_combinations(values: dict[str, Any], layers: _Layers) -> None:
    """Settings that are valid alone but not together."""
    if values["sse_kms_key_id"] is not None and values["sse"] != "aws:kms":
        raw = layers.pick("sse_kms_key_id")
        assert raw is not None
        raise _error("sse_kms_key_id", raw, f"a KMS key needs {env_key('sse')}=aws:kms (--sse aws:kms)")
