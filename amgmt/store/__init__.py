"""The metadata store: operations, their file records and the multipart journal, in SQLite (aiosqlite).

The only package that imports aiosqlite or sqlite3; it never touches S3 or an entry on disk."""

from amgmt.store.members import StoredMember
from amgmt.store.records import JournaledPart, JournaledUpload, UploadSummary
from amgmt.store.sqlite import MIN_ID_PREFIX, MetadataStore

__all__ = ["MIN_ID_PREFIX", "JournaledPart", "JournaledUpload", "MetadataStore", "StoredMember", "UploadSummary"]
