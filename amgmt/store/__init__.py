"""The metadata store: operations, their file records and the multipart journal, behind one interface (`Store`) with
two backends: SQLite (aiosqlite, the default) and PostgreSQL (asyncpg, `MGMT_DB_URL`).

The only package that imports aiosqlite, sqlite3 or asyncpg (asyncpg only when PostgreSQL is used); it never touches
S3 or an entry on disk."""

from amgmt.store.base import MIN_ID_PREFIX, Store
from amgmt.store.factory import StoreLocation, metadata_store, sqlite_store, store_exists, store_name
from amgmt.store.members import StoredMember
from amgmt.store.records import (
    Claimed,
    HostActivity,
    JournaledPart,
    JournaledUpload,
    RunLease,
    RunSeen,
    UploadSummary,
)
from amgmt.store.sqlite import MetadataStore

__all__ = [
    "MIN_ID_PREFIX",
    "Claimed",
    "HostActivity",
    "JournaledPart",
    "JournaledUpload",
    "MetadataStore",
    "RunLease",
    "RunSeen",
    "Store",
    "StoreLocation",
    "StoredMember",
    "UploadSummary",
    "metadata_store",
    "sqlite_store",
    "store_exists",
    "store_name",
]
