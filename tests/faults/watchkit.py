"""`amgmt watch` as a real process for the tests: started (optionally through killpoint.py), its output lines read
as they come, stopped with a signal; and the waits the tests need (no fixed sleeps where a condition can be waited
for)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

KILLPOINT = Path(__file__).with_name("killpoint.py")


def wait_for(condition: Callable[[], Any], *, timeout: float = 30.0, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class WatchProcess:
    """`amgmt watch ARGS` in a process of its own; stdout and stderr go to files under `where`."""

    def __init__(self, env: dict[str, str], where: Path, *args: str, kill_at: str | None = None) -> None:
        where.mkdir(parents=True, exist_ok=True)
        self.stdout_path = where / f"watch-{time.monotonic_ns()}.out"
        self.stderr_path = self.stdout_path.with_suffix(".err")
        env = dict(env)
        if kill_at:
            env["AMGMT_KILL_AT"] = kill_at
            command = [sys.executable, str(KILLPOINT), "watch", *args]
        else:
            command = [sys.executable, "-m", "amgmt", "watch", *args]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.args = args

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[str]:
        return self.stdout_path.read_text().splitlines()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_started(self, timeout: float = 30.0) -> None:
        wait_for(lambda: any(" watching " in line for line in self.lines()) or self.proc.poll() is not None,
                 timeout=timeout, what="the watch to start")
        assert self.proc.poll() is None, str(self)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def __str__(self) -> str:
        return (f"amgmt watch {' '.join(self.args)} (exit {self.proc.poll()})\n--- stdout\n"
                + "\n".join(self.lines()) + f"\n--- stderr\n{self.stderr()}")


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows from the run's database, read-only (a watch may be writing to it)."""
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return list(conn.execute(sql, params))
