"""Which backend holds the records: PostgreSQL when a database URL is set (`MGMT_DB_URL`), else the SQLite file at
`MGMT_DB_PATH`. Imports asyncpg (through postgres.py) only when PostgreSQL is asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from amgmt.store.base import Store
from amgmt.store.sqlite import MetadataStore


class StoreLocation(Protocol):
    """What choosing a store needs from the settings (amgmt.config.Settings has it)."""

    @property
    def db_path(self) -> Path: ...

    @property
    def db_url(self) -> str | None: ...

    @property
    def host_id(self) -> str: ...


def metadata_store(settings: StoreLocation) -> Store:
    """The store the settings name, not opened yet (`async with metadata_store(settings) as store`)."""
    if settings.db_url:
        from amgmt.store.postgres import PostgresStore

        return PostgresStore(settings.db_url, host_id=settings.host_id)
    return MetadataStore(settings.db_path, host_id=settings.host_id)


def store_exists(settings: StoreLocation) -> bool:
    """Whether there may be records to read: a PostgreSQL database is assumed to exist (opening it says otherwise);
    a SQLite file must be there (reading commands do not create one)."""
    return bool(settings.db_url) or settings.db_path.exists()


def store_name(settings: StoreLocation) -> str:
    """The store in messages: the SQLite path, or the database URL without its password."""
    if settings.db_url:
        from amgmt.text import redacted_url

        return redacted_url(settings.db_url)
    return str(settings.db_path)


def sqlite_store(settings: StoreLocation) -> Store:
    """The SQLite file at `db_path`, whatever `db_url` says (`amgmt db migrate` copies it elsewhere)."""
    return MetadataStore(settings.db_path, host_id=settings.host_id)
