"""The aiosqlite connection's setup and the one way into its thread: the database file created private, WAL,
foreign keys, the fold function, and `in_connection_thread` (the one use of aiosqlite's private API)."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import aiosqlite

from amgmt.errors import StoreError
from amgmt.store.records import fold

_T = TypeVar("_T")


def create_private_file(path: Path) -> None:
    """The database file, created here (mode 0600, in a 0700 dir), not by SQLite, which gives -wal/-shm the database
    file's mode. An existing file is left as it is."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


async def configure(db: aiosqlite.Connection, path: Path) -> None:
    rows = await db.execute_fetchall("PRAGMA journal_mode = WAL")
    mode = next(iter(rows))[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"metadata database {path} cannot use WAL journal mode (got {mode})")
    await db.execute("PRAGMA synchronous = NORMAL")
    await db.execute("PRAGMA foreign_keys = ON")
    await db.create_function("amgmt_fold", 1, fold, deterministic=True)
    await db.create_function("amgmt_now", 0, time.time)  # the clock of leases (PostgreSQL: its own function)


async def in_connection_thread(db: aiosqlite.Connection, work: Callable[[sqlite3.Connection], _T]) -> _T:
    """`work(the sqlite3 connection)`, run in the aiosqlite connection's own thread, as its own calls are.

    The one use of aiosqlite's private API (`Connection._execute`, `Connection._conn`): aiosqlite has no public way
    to run a function there, and one statement per hand-over is measurably slower (MetadataStore._run). The versions
    allowed in pyproject.toml all have both; test_aiosqlite_private_api_is_still_there fails loudly when they move."""
    result: _T = await db._execute(lambda: work(db._conn))
    return result
