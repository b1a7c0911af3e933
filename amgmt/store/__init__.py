"""The metadata store: operations, their file records and the multipart journal, in SQLite (aiosqlite).

The only package that imports aiosqlite or sqlite3; it never touches S3 or an entry on disk."""
