"""The members of directory archives in the store: their rows, the search over them, and a member's subtree.

The SQL, written once for both backends (Store runs it through its primitives), and rows -> StoredMember. Pure;
decides nothing about what to record."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from amgmt.store.records import fold
from amgmt.text import iso_utc

INSERT_MEMBER = (
    "INSERT INTO archive_members (operation_id, path, kind, size, mtime) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (operation_id, path) DO UPDATE SET kind = excluded.kind, size = excluded.size,"
    " mtime = excluded.mtime"
)

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


def member(row: dict[str, Any]) -> StoredMember:
    """A row of the queries below as a StoredMember."""
    return StoredMember(
        row["path"],
        row["kind"],
        int(row["size"]),
        int(row["mtime"]),
        row["operation_id"],
        row["target_name"],
        row["s3_bucket"] or "",
        row["s3_object_key"] or "",
        datetime.fromisoformat(row["started_at"]),
    )


def search_sql(keyword: str, *, bucket: str | None, key_prefix: str, limit: int | None) -> tuple[str, list[Any]]:
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
    return sql, params


def subtree_sql(operation_id: str, path: str) -> tuple[str, list[Any]]:
    """The member at `path` of one upload's archive and, for a directory, every member below it (archive order)."""
    # 'DIR/' <= path < 'DIR0' ('0' follows '/'): a range of the primary key, not a scan of the archive's members.
    sql = f"{_SELECT} WHERE m.operation_id = ? AND (m.path = ? OR (m.path >= ? AND m.path < ?)) ORDER BY m.path"
    top = path.rstrip("/")
    return sql, [operation_id, top, top + "/", top + "0"]


def named_sql(operation_id: str, name: str, *, limit: int = 11) -> tuple[str, list[Any]]:
    """Paths of one upload's members whose last segment is `name` (what a bare file name given as a member means)."""
    tail = "/" + name
    sql = (
        "SELECT path FROM archive_members WHERE operation_id = ? AND length(path) > ?"
        " AND substr(path, length(path) - ?) = ? ORDER BY path LIMIT ?"
    )
    return sql, [operation_id, len(tail), len(tail) - 1, tail, limit]


COUNT_SQL = "SELECT count(*) AS n FROM archive_members WHERE operation_id = ?"
