"""PostgresStore: the Store backend on a PostgreSQL database (asyncpg): its connection pool, its transactions, its
migrations, and the translation of its errors. The only module importing asyncpg; the queries are the Store base's
(base.py), turned into PostgreSQL's by dialect.py. The database URL's password never leaves this module: messages
name the database by `where` (text.redacted_url)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import asyncpg

from amgmt.errors import ConfigError, StoreError
from amgmt.models import OperationRecord
from amgmt.store import records, schema
from amgmt.store.base import Store
from amgmt.store.dialect import postgres_migration, postgres_save_sql, postgres_select_sql, postgres_sql
from amgmt.store.records import operations_sql, records_from_rows
from amgmt.text import redacted_url

_MIGRATION_LOCK = 0x616D676D74  # pg_advisory_xact_lock key: "amgmt"; concurrent openers migrate one at a time
# The server unreachable or gone: the network's errors, asyncpg's for a closed connection, and its protocol's own
# confusion when the server goes away in the middle of a statement (InternalClientError "another operation is in
# progress", seen with the server stopped mid-run).
_CONNECTION_LOST = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.InternalClientError,
)


class PostgresStore(Store):
    """The operations database at a `postgresql://` URL: a small pool of connections, opened with `async with` or
    `open()`. Writes are shielded from cancellation (a transaction commits or rolls back whole, as SQLite's do),
    bounded by `command_timeout`; `connect_timeout` bounds each connection attempt."""

    def __init__(
        self,
        url: str,
        *,
        host_id: str | None = None,
        connect_timeout: float = 10.0,
        command_timeout: float = 60.0,
        max_connections: int = 8,
    ) -> None:
        super().__init__(host_id=host_id)
        self._url = url
        self.where = redacted_url(url)
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.max_connections = max_connections
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Connect (a pool of up to `max_connections`), create the schema or migrate it."""
        if self._pool is not None:
            return
        with self._translate_errors("connect"):
            pool = await asyncpg.create_pool(
                self._url,
                # No floor of idle connections: asyncpg would keep reconnecting to a server gone away, logging a
                # traceback each time; connections are made when a query needs one.
                min_size=0,
                max_size=self.max_connections,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
            )
        try:
            with self._translate_errors("connect"):
                conn = await pool.acquire()  # the first connection: the pool makes them when needed
            try:
                with self._translate_errors("migrate the schema"):
                    await self._migrate(conn)
            finally:
                await pool.release(conn)
        except BaseException:
            with anyio.CancelScope(shield=True):
                pool.terminate()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(self.connect_timeout):
                    await pool.close()
            except (TimeoutError, *_CONNECTION_LOST, asyncpg.PostgresError):
                pool.terminate()  # a server gone away must not hold up the end of the run

    shared = True

    def _require_open(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"metadata database {self.where} is not open")
        return self._pool

    # -- the primitives of Store ------------------------------------------------------------------------------

    async def _write_rows(self, doing: str, operation_rows: list[list[Any]], file_rows: list[list[Any]]) -> None:
        operation_columns, file_columns = records.OPERATION_COLUMNS, records.FILE_COLUMNS
        operations = json.dumps([dict(zip(operation_columns, row, strict=True)) for row in operation_rows])
        files = json.dumps([dict(zip(file_columns, row, strict=True)) for row in file_rows])
        async with self._writing(doing) as conn:
            await conn.execute(postgres_save_sql(operation_columns, file_columns), operations, files)

    async def _execute(self, doing: str, sql: str, params: Sequence[Any]) -> None:
        async with self._writing(doing) as conn:
            await conn.execute(postgres_sql(sql), *params)

    async def _write_returning(self, doing: str, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        async with self._writing(doing) as conn:
            return [dict(r) for r in await conn.fetch(postgres_sql(sql), *params)]

    async def _execute_many(self, doing: str, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self._writing(doing) as conn, conn.transaction():
            await conn.executemany(postgres_sql(sql), rows)

    async def _fetch(self, doing: str, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        async with self._reading(doing) as conn:
            return [dict(r) for r in await conn.fetch(postgres_sql(sql), *params)]

    async def _fetch_pair(
        self, doing: str, first: tuple[str, Sequence[Any]], second: tuple[str, Sequence[Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with self._reading(doing) as conn:
            one = [dict(r) for r in await conn.fetch(postgres_sql(first[0]), *first[1])]
            two = [dict(r) for r in await conn.fetch(postgres_sql(second[0]), *second[1])]
            return one, two

    async def _select(self, doing: str, tail: str, params: Sequence[Any]) -> list[OperationRecord]:
        async with self._reading(doing) as conn:
            found = await conn.fetch(postgres_select_sql(operations_sql(tail)), *params)
        rows = [dict(r) for r in found]
        file_rows = [f for row in rows for f in json.loads(row.pop("amgmt_files"))]
        return records_from_rows(rows, file_rows, self.where)

    # -- connections and transactions -------------------------------------------------------------------------

    @asynccontextmanager
    async def _reading(self, doing: str) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the pool, each query its own statement (no BEGIN/COMMIT round trips): a record's row and
        its file records are written in one transaction, so a reader never sees an operation without them; it may
        see them newer than the row it read first, which is as good."""
        pool = self._require_open()
        with self._translate_errors(doing):
            async with pool.acquire() as conn, _dropped_when_lost(conn):
                yield conn

    @asynccontextmanager
    async def _writing(self, doing: str) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the pool for one write statement (atomic by itself, so no BEGIN/COMMIT round trips),
        which a cancelled caller does not interrupt: it commits or fails whole (bounded by the command timeout)."""
        pool = self._require_open()
        with anyio.CancelScope(shield=True), self._translate_errors(doing):
            async with pool.acquire() as conn, _dropped_when_lost(conn):
                yield conn

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        """Every missing migration, in one transaction, under an advisory lock (two runs opening a new database at
        once migrate it once). The version is a row of `amgmt_schema` (SQLite keeps it in `PRAGMA user_version`)."""
        known = len(schema.MIGRATIONS)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS amgmt_schema (version INTEGER NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM amgmt_schema")
            if version is None:
                await conn.execute("INSERT INTO amgmt_schema (version) VALUES (0)")
                version = 0
            if version > known:
                raise StoreError(
                    f"metadata database {self.where} has schema version {version}, newer than this amgmt "
                    f"supports ({known}); upgrade amgmt"
                )
            for number in range(version + 1, known + 1):
                await conn.execute(postgres_migration(schema.MIGRATIONS[number - 1], number))
            if version < known:
                await conn.execute("UPDATE amgmt_schema SET version = $1", known)

    @contextmanager
    def _translate_errors(self, doing: str) -> Iterator[None]:
        """asyncpg's and the network's errors as one-line StoreErrors (exit 4), naming the database without its
        password."""
        try:
            yield
        except asyncpg.ClientConfigurationError as exc:  # a parameter of the URL asyncpg refuses, before any work
            raise ConfigError(f"MGMT_DB_URL={self.where}: {_one_line(exc)}") from exc
        except asyncpg.PostgresError as exc:
            if isinstance(exc, asyncpg.PostgresConnectionError):
                raise StoreError(f"metadata database {self.where} is unreachable (cannot {doing}): {exc}") from exc
            raise StoreError(f"metadata database {self.where}: cannot {doing}: {_one_line(exc)}") from exc
        except _CONNECTION_LOST as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise StoreError(f"metadata database {self.where} is unreachable (cannot {doing}): {reason}") from exc


@asynccontextmanager
async def _dropped_when_lost(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """A connection whose server went away mid-statement is closed at once, not handed to the next query in an
    unknown protocol state; the pool makes a new one when one is needed."""
    try:
        yield
    except (*_CONNECTION_LOST, asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError):
        conn.terminate()
        raise


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
