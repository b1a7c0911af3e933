"""The members of directory archives in the store: their rows, the search over them, and a member's subtree.

Plain sqlite3 on a connection it is given, inside the caller's transaction (MetadataStore._run); decides nothing
about what to record."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from amgmt.store.records import fold
from amgmt.text import iso_utc

INSERT_MEMBER = "INSERT OR REPLACE INTO archive_members (operation_id, path, kind, size, mtime) VALUES (?, ?, ?, ?, ?)"

# The upload that made the object at a key now: the newest verified one (as objects.resolve.current_upload).
_CURRENT_UPLOAD = """
    o.operation_id = (
        SELECT c.operation_id FROM operations AS c
        WHERE c.operation_type = 'upload' AND c.s3_bucket = o.s3_bucket AND c.s3_object_key = o.s3_object_key
          AND c.status IN ('success', 'partial')
        ORDER BY c.started_at DESC, c.rowid DESC LIMIT 1
    )
    AND NOT EXISTS (
        SELECT 1 FROM file_records AS f
        WHERE f.operation_id = o.operation_id AND f.role = 's3' AND f.status = 'deleted'
    )
"""


@dataclass(frozen=True)
class StoredMember:
    """One member of a directory archive, and the upload (and object) that holds it."""

    path: str  # the member name as record text; it starts with the entry's name
    kind: str  # "file" | "dir" | "symlink"
    size: int
    mtime: int  # whole seconds since the epoch
    operation_id: str
    target_name: str
    bucket: str
    key: str
    uploaded_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "size": self.size,
            "modified_at": iso_utc(datetime.fromtimestamp(self.mtime, tz=UTC)),
            "operation_id": self.operation_id,
            "entry": self.target_name,
            "bucket": self.bucket,
            "key": self.key,
            "uploaded_at": iso_utc(self.uploaded_at),
        }


_SELECT = (
    "SELECT m.path, m.kind, m.size, m.mtime, o.operation_id, o.target_name, o.s3_bucket, o.s3_object_key,"
    " o.started_at FROM archive_members AS m JOIN operations AS o ON o.operation_id = m.operation_id"
)


def _member(row: sqlite3.Row | Sequence[Any]) -> StoredMember:
    path, kind, size, mtime, op_id, name, bucket, key, started = tuple(row)
    return StoredMember(path, kind, size, mtime, op_id, name, bucket or "", key or "", datetime.fromisoformat(started))


def search_members(
    conn: sqlite3.Connection, keyword: str, *, bucket: str | None, key_prefix: str, limit: int | None
) -> list[StoredMember]:
    """Members whose path contains `keyword` (folded as `fold`), of the archives that are the current objects of
    their keys (under `key_prefix`, in `bucket` when given), by key then archive order."""
    clauses = ["instr(amgmt_fold(m.path), ?) > 0", "o.operation_type = 'upload'"]
    params: list[Any] = [fold(keyword)]
    if bucket is not None:
        clauses.append("o.s3_bucket = ?")
        params.append(bucket)
    if key_prefix:
        clauses.append("substr(o.s3_object_key, 1, ?) = ?")
        params += [len(key_prefix), key_prefix]
    clauses.append(_CURRENT_UPLOAD)
    sql = f"{_SELECT} WHERE {' AND '.join(clauses)} ORDER BY o.s3_object_key, m.path"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_member(row) for row in conn.execute(sql, params).fetchall()]


def subtree(conn: sqlite3.Connection, operation_id: str, path: str) -> list[StoredMember]:
    """The member at `path` of one upload's archive and, for a directory, every member below it (archive order)."""
    # 'DIR/' <= path < 'DIR0' ('0' follows '/'): a range of the primary key, not a scan of the archive's members.
    sql = f"{_SELECT} WHERE m.operation_id = ? AND (m.path = ? OR (m.path >= ? AND m.path < ?)) ORDER BY m.path"
    top = path.rstrip("/")
    rows = conn.execute(sql, [operation_id, top, top + "/", top + "0"]).fetchall()
    return [_member(row) for row in rows]


def paths_named(conn: sqlite3.Connection, operation_id: str, name: str, *, limit: int = 11) -> list[str]:
    """Paths of one upload's members whose last segment is `name` (what a bare file name given as a member means)."""
    sql = "SELECT path FROM archive_members WHERE operation_id = ? AND substr(path, -?) = ? ORDER BY path LIMIT ?"
    return [row[0] for row in conn.execute(sql, [operation_id, len(name) + 1, "/" + name, limit]).fetchall()]


def count_members(conn: sqlite3.Connection, operation_id: str) -> int:
    row = conn.execute("SELECT count(*) FROM archive_members WHERE operation_id = ?", [operation_id]).fetchone()
    return int(row[0])
