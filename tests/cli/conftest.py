"""Fixtures of tests/cli: `amgmt` run as a user runs it (a subprocess of `python -m amgmt`) against this test's
bucket and local dir, with a recognisable AWS secret in its environment that no output may ever show."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clikit import SECRET


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"amgmt {' '.join(self.args)} -> {self.code}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


Amgmt = Callable[..., Run]


@pytest.fixture
def amgmt(cli_env: dict[str, str], tmp_path: Path) -> Amgmt:
    """amgmt(*args, env={...}, drop=(...)) -> Run; cwd is tmp_path, the config home is tmp_path/xdg, the state
    home (amgmt.log) tmp_path-state beside it, so snapshots of tmp_path see no log."""
    base = dict(cli_env, AWS_SECRET_ACCESS_KEY=SECRET, XDG_CONFIG_HOME=str(tmp_path / "xdg"),
                XDG_STATE_HOME=str(tmp_path.with_name(tmp_path.name + "-state")))

    def run(*args: str, env: dict[str, str] | None = None, drop: tuple[str, ...] = (), timeout: float = 60) -> Run:
        full = {**base, **(env or {})}
        for key in drop:
            full.pop(key, None)
        done = subprocess.run(
            [sys.executable, "-m", "amgmt", *args],
            env=full,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        result = Run(tuple(args), done.returncode, done.stdout, done.stderr)
        assert SECRET not in done.stdout + done.stderr, str(result)
        return result

    return run


@pytest.fixture
def keys(s3_client: Any, bucket: str) -> Callable[[], list[str]]:
    """The keys now in this test's bucket."""
    return lambda: sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))
