"""The store's one error boundary: a sqlite3 or OS error becomes a one-line StoreError (exit 4), raised `from` it.

Says what was being done and why it failed (locked, corrupt, read-only, disk full); must not retry or decide."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from amgmt.errors import StoreError


@contextmanager
def translate_errors(path: Path, busy_timeout: float, doing: str) -> Iterator[None]:
    """Errors of the database at `path` while `doing` something, as StoreErrors."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(describe(path, busy_timeout, doing, exc)) from exc
    except OSError as exc:
        raise StoreError(f"metadata database {path}: cannot {doing}: {exc.strerror or exc}") from exc


def describe(path: Path, busy_timeout: float, doing: str, exc: sqlite3.Error) -> str:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc):
        return (
            f"metadata database {path} is locked by another process (cannot {doing}; gave up after {busy_timeout:g} s)"
        )
    if primary in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return f"metadata database {path} is not a valid SQLite database (corrupt?): {exc}"
    if primary == sqlite3.SQLITE_CANTOPEN:
        return f"cannot open metadata database {path}: {exc}"
    if primary == sqlite3.SQLITE_READONLY:
        return f"metadata database {path} is read-only: cannot {doing}"
    if primary == sqlite3.SQLITE_FULL:
        return f"metadata database {path}: cannot {doing}: disk full"
    return f"metadata database {path}: cannot {doing}: {exc}"
