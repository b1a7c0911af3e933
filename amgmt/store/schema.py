"""The metadata database's schema: its migrations, in order, and how one is applied.

Plain sqlite3 on a connection it is given, inside the caller's transaction; must not open or commit anything."""

from __future__ import annotations

import sqlite3

# Migration N (1-based) is MIGRATIONS[N - 1]; `PRAGMA user_version` counts those applied. Never edit a released
# entry: append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE operations (
        operation_id        TEXT PRIMARY KEY,
        operation_type      TEXT NOT NULL,
        target_path         TEXT NOT NULL,
        target_name         TEXT NOT NULL,
        started_at          TEXT NOT NULL,  -- ISO-8601 UTC, fixed width, so text order is time order
        completed_at        TEXT,
        duration_seconds    REAL,
        status              TEXT NOT NULL,
        result_path         TEXT,
        error_message       TEXT,
        metadata            TEXT NOT NULL DEFAULT '{}',  -- JSON
        user                TEXT,
        command_args        TEXT NOT NULL DEFAULT '{}',  -- JSON
        -- upload-only columns, NULL for other operation types
        compression_type    TEXT,
        original_size       INTEGER,
        compressed_size     INTEGER,
        compression_ratio   REAL,
        s3_bucket           TEXT,
        s3_object_key       TEXT,
        s3_storage_class    TEXT,
        checksum_original   TEXT,
        checksum_compressed TEXT,
        checksum_s3_etag    TEXT,
        completed_dir_path  TEXT,
        compressed_file_path TEXT,
        stage               TEXT,
        verification_method TEXT,
        part_size           INTEGER,
        part_count          INTEGER
    );
    CREATE INDEX ix_operations_status ON operations (status);
    CREATE INDEX ix_operations_type ON operations (operation_type);
    CREATE INDEX ix_operations_started_at ON operations (started_at);
    CREATE INDEX ix_operations_checksum_original ON operations (checksum_original);
    CREATE INDEX ix_operations_s3_key ON operations (s3_bucket, s3_object_key);
    CREATE INDEX ix_operations_target_name ON operations (target_name);

    CREATE TABLE file_records (
        operation_id  TEXT NOT NULL REFERENCES operations (operation_id) ON DELETE CASCADE,
        role          TEXT NOT NULL CHECK (role IN ('source', 'compressed', 's3', 'completed')),
        name          TEXT NOT NULL,
        path          TEXT NOT NULL,
        location      TEXT NOT NULL,
        size          INTEGER NOT NULL,
        is_directory  INTEGER NOT NULL,
        mime_type     TEXT,
        created_at    TEXT,
        modified_at   TEXT,
        accessed_at   TEXT,
        checksum      TEXT,
        tags          TEXT NOT NULL DEFAULT '{}',  -- JSON
        status        TEXT NOT NULL,
        error_message TEXT,
        PRIMARY KEY (operation_id, role)
    );
    CREATE INDEX ix_file_records_location ON file_records (location);
    """,
    # 2: the multipart journal, so an interrupted upload can be resumed by a later run.
    """
    CREATE TABLE multipart_uploads (
        upload_id      TEXT PRIMARY KEY,
        operation_id   TEXT NOT NULL,
        bucket         TEXT NOT NULL,
        object_key     TEXT NOT NULL,
        archive_sha256 TEXT NOT NULL,
        part_size      INTEGER NOT NULL,
        part_count     INTEGER NOT NULL,
        state          TEXT NOT NULL CHECK (state IN ('open', 'completed', 'aborted')),
        created_at     TEXT NOT NULL
    );
    CREATE INDEX ix_multipart_uploads_key ON multipart_uploads (bucket, object_key, state);

    CREATE TABLE upload_parts (
        upload_id   TEXT NOT NULL REFERENCES multipart_uploads (upload_id) ON DELETE CASCADE,
        part_number INTEGER NOT NULL,
        size        INTEGER NOT NULL,
        md5         TEXT NOT NULL,
        etag        TEXT NOT NULL,
        checksum    TEXT,
        PRIMARY KEY (upload_id, part_number)
    );
    """,
    # 3: history and lookups stay index searches on large databases (1,000,000 operations): a filter by status or
    # type is read newest first from one index instead of walking every row in time order, and operations on an
    # entry are found by its path (tests/unit/store/test_query_plans.py checks every query's plan).
    """
    CREATE INDEX ix_operations_status_started ON operations (status, started_at);
    CREATE INDEX ix_operations_type_started ON operations (operation_type, started_at);
    CREATE INDEX ix_operations_target_path ON operations (target_path);
    DROP INDEX ix_operations_status;
    DROP INDEX ix_operations_type;
    """,
    # 4: S3's flexible checksums: the one the object holds as HEAD reported it at verification (beside its ETag),
    # and the one a multipart upload was created with (a resume must complete it with the same one).
    """
    ALTER TABLE operations ADD COLUMN checksum_s3 TEXT;
    ALTER TABLE multipart_uploads ADD COLUMN checksum_algorithm TEXT;
    """,
    # 5: the host that made each operation (MGMT_HOST_ID), for `history --host`; NULL on rows saved before.
    """
    ALTER TABLE operations ADD COLUMN host_id TEXT;
    CREATE INDEX ix_operations_host_started ON operations (host_id, started_at);
    """,
    # 6: the members of each directory archive, recorded once its upload is verified, so that `search` finds a file
    # inside an archive and `download --member` knows what to take out (one row per member: 100,000 for a big tree).
    """
    CREATE TABLE archive_members (
        operation_id TEXT NOT NULL REFERENCES operations (operation_id) ON DELETE CASCADE,
        path         TEXT NOT NULL,  -- the member name (record text), starting with the entry's name
        kind         TEXT NOT NULL CHECK (kind IN ('file', 'dir', 'symlink')),
        size         INTEGER NOT NULL,
        mtime        INTEGER NOT NULL,  -- seconds since the epoch, as the tar header holds it
        PRIMARY KEY (operation_id, path)
    ) WITHOUT ROWID;
    """,
    # 7: runs and entry claims in a catalog several runs share (PostgreSQL; the tables exist on SQLite too, unused):
    # each run's lease (renewed while it runs), and the claim of each entry of a local dir by exactly one run
    # (upload/claims.py). Times are seconds since the epoch by the database's clock (`amgmt_now()`), so hosts whose
    # clocks disagree agree on when a lease ran out.
    """
    CREATE TABLE runs (
        run_id       TEXT PRIMARY KEY,
        dir_id       TEXT NOT NULL,  -- the local dir's id (local/runlock.py dir_identity)
        host_id      TEXT,
        pid          INTEGER NOT NULL,
        local_dir    TEXT NOT NULL,  -- as this host names it
        started_at   REAL NOT NULL,
        heartbeat_at REAL NOT NULL,
        expires_at   REAL NOT NULL,
        ended_at     REAL
    );
    CREATE INDEX ix_runs_heartbeat ON runs (heartbeat_at);

    CREATE TABLE entry_claims (
        dir_id             TEXT NOT NULL,
        entry              TEXT NOT NULL,  -- the entry's name in the local dir (record text)
        run_id             TEXT NOT NULL,  -- the run holding it, or the last one that did
        host_id            TEXT,
        operation_id       TEXT,  -- the holder's upload of the entry
        claimed_at         REAL NOT NULL,
        expires_at         REAL NOT NULL,  -- the holder's lease: renewed while the entry is in flight
        released_at        REAL,  -- set when the holder ended the entry (NULL while held, or abandoned)
        previous_run       TEXT,  -- the run whose lapsed claim this one took over, if any
        previous_operation TEXT,
        PRIMARY KEY (dir_id, entry)
    );
    CREATE INDEX ix_entry_claims_run ON entry_claims (run_id);
    CREATE INDEX ix_entry_claims_operation ON entry_claims (operation_id);
    """,
)


def user_version(conn: sqlite3.Connection) -> int:
    """The number of migrations applied to the database (`PRAGMA user_version`)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate_one(conn: sqlite3.Connection) -> int:
    """Apply the next migration, if any, in the caller's (IMMEDIATE) transaction; return the version now.

    The version is read again under the write lock: another process may have migrated meanwhile."""
    version = user_version(conn)
    if version < len(MIGRATIONS):
        for statement in split_statements(MIGRATIONS[version]):
            conn.execute(statement)
        version += 1
        conn.execute(f"PRAGMA user_version = {version:d}")
    return version


def split_statements(script: str) -> list[str]:
    """The statements of a migration script, to run inside one transaction (executescript would commit first)."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\n;"):
                statements.append(pending.strip())
            pending = ""
    return statements
