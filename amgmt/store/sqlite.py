"""MetadataStore: the Store backend on a SQLite file (aiosqlite): its connection, its transactions, the liveness of
the file. With connection.py (its setup), the only module importing aiosqlite; the queries themselves are the Store
base's (base.py); it never decides what to record, and no database error leaves it raw."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import anyio

from amgmt.errors import StoreError
from amgmt.models import OperationRecord
from amgmt.store import schema
from amgmt.store.base import Store
from amgmt.store.connection import configure, create_private_file, in_connection_thread
from amgmt.store.errors import translate_errors
from amgmt.store.records import UPSERT_FILE_RECORD, UPSERT_OPERATION, select_operations

_T = TypeVar("_T")


def write_rows(conn: sqlite3.Connection, operation_rows: list[list[Any]], file_rows: list[list[Any]]) -> None:
    """One save's statements, inside its transaction (the operations, then their file records)."""
    conn.executemany(UPSERT_OPERATION, operation_rows)
    if file_rows:
        conn.executemany(UPSERT_FILE_RECORD, file_rows)


class MetadataStore(Store):
    """The operations database at `path`: one aiosqlite connection, opened with `async with` or `open()`.

    One store object is shared by every task of a run. Every transaction runs whole, as one function, in the
    connection's thread (`_run`), so transactions of concurrent tasks never interleave; the lock only gathers
    concurrent saves into one transaction (group commit).
    """

    def __init__(self, path: Path, *, busy_timeout: float = 5.0, host_id: str | None = None) -> None:
        super().__init__(host_id=host_id)
        self.path = Path(path)
        self.where = str(self.path)
        self.busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the database file opened

    async def open(self) -> None:
        """Create the database if needed (parent dir 0700, file 0600), configure the connection and migrate."""
        if self._db is not None:
            return
        try:
            create_private_file(self.path)
        except OSError as exc:
            raise StoreError(f"cannot create metadata database at {self.path}: {exc.strerror or exc}") from exc
        with self._translate_errors("open"):
            db = await aiosqlite.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            with self._translate_errors("open"):
                db.row_factory = sqlite3.Row
                await configure(db, self.path)
                await self._migrate(db)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await db.close()
            raise
        try:
            st = os.stat(self.path)
        except OSError as exc:
            with anyio.CancelScope(shield=True):
                await db.close()
            raise StoreError(f"metadata database {self.path}: cannot examine it: {exc.strerror or exc}") from exc
        self._identity = (st.st_dev, st.st_ino)
        self._db = db

    def check_alive(self) -> None:
        """Raise StoreError (exit 4) when the database file opened is no longer at its path (deleted, or replaced
        by another file): SQLite would go on writing into the unlinked file, and every record would be lost.

        Every write checks it; a stage about to do something irreversible (the move) calls it first too."""
        if self._identity is None:
            return
        try:
            st = os.stat(self.path)
            alive = (st.st_dev, st.st_ino) == self._identity
        except FileNotFoundError:
            alive = False
        except OSError as exc:
            raise StoreError(f"metadata database {self.path}: cannot examine it: {exc.strerror or exc}") from exc
        if not alive:
            raise StoreError(f"the metadata database {self.path} was deleted or replaced during the run")

    async def close(self) -> None:
        self._identity = None
        db, self._db = self._db, None
        if db is None:
            return
        # Shielded: a cancelled run must still stop the connection's thread.
        with anyio.CancelScope(shield=True), self._translate_errors("close"):
            await db.close()

    # -- connection -------------------------------------------------------------------------------------------

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        known = len(schema.MIGRATIONS)
        version = await self._run("read the schema version", schema.user_version, db=db)
        while True:
            if version > known:
                raise StoreError(
                    f"metadata database {self.path} has schema version {version}, newer than this amgmt "
                    f"supports ({known}); upgrade amgmt"
                )
            if version == known:
                return
            version = await self._run(
                f"migrate to schema version {version + 1}", schema.migrate_one, immediate=True, db=db
            )

    def _require_open(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(f"metadata database {self.path} is not open")
        return self._db

    async def _write_rows(self, doing: str, operation_rows: list[list[Any]], file_rows: list[list[Any]]) -> None:
        await self._run(doing, lambda conn: write_rows(conn, operation_rows, file_rows), immediate=True)

    async def _execute(self, doing: str, sql: str, params: Sequence[Any]) -> None:
        await self._run(doing, lambda conn: conn.execute(sql, params), immediate=True)

    async def _execute_many(self, doing: str, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._run(doing, lambda conn: conn.executemany(sql, rows), immediate=True)

    async def _write_returning(self, doing: str, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        return await self._run(
            doing, lambda conn: [dict(r) for r in conn.execute(sql, params).fetchall()], immediate=True
        )

    async def _fetch(self, doing: str, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        return await self._run(doing, lambda conn: [dict(r) for r in conn.execute(sql, params).fetchall()])

    async def _fetch_pair(
        self, doing: str, first: tuple[str, Sequence[Any]], second: tuple[str, Sequence[Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        def read(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            one, two = ([dict(r) for r in conn.execute(sql, params).fetchall()] for sql, params in (first, second))
            return one, two

        return await self._run(doing, read)

    async def _select(self, doing: str, tail: str, params: Sequence[Any]) -> list[OperationRecord]:
        return await self._run(doing, lambda conn: select_operations(conn, tail, params, path=self.path))

    async def _run(
        self,
        doing: str,
        work: Callable[[sqlite3.Connection], _T],
        *,
        immediate: bool = False,
        db: aiosqlite.Connection | None = None,
    ) -> _T:
        """`work(connection)` as one transaction, run whole in the connection's thread (`in_connection_thread`): one
        hand-over between the event loop and that thread instead of one per statement (BEGIN, each statement,
        COMMIT). Under load each hand-over waits for a turn of the busy event loop: aiosqlite's public per-statement
        calls made a save 1.4-1.9x slower alone, 2.6-5.4x beside a busy loop (benchmarks/store_saves.py). The
        thread runs one function at a time, so transactions never interleave. A cancelled caller does not stop the
        transaction: it commits or rolls back whole. `db` is for `open`, before the store counts as open."""
        db = db or self._require_open()
        if immediate:
            self.check_alive()  # a write into a deleted database would be lost without a word

        def transaction(conn: sqlite3.Connection) -> _T:
            conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                result = work(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            conn.execute("COMMIT")
            return result

        with self._translate_errors(doing):
            return await in_connection_thread(db, transaction)

    def _translate_errors(self, doing: str) -> AbstractContextManager[None]:
        return translate_errors(self.path, self.busy_timeout, doing)
