"""`amgmt history`  on a large metadata database (the lookups behind download, status and upload are
checked by plan, not time: tests/unit/store/test_query_plans.py).

    python benchmarks/history_scale.py [--operations 1000000] [--db PATH] [--rounds 3]

Builds (once; kept when --db names an existing file) a database of N operations as amgmt writes them: uploads with
their four file records, one in 50 failed, one in 20 a delete, spread over a year. Then times the CLI (a whole
process each, medians of --rounds) for the history queries a user runs.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio

from amgmt.models import FileRecord, FileRole, FileStatus, Location, OperationRecord, OperationStatus, UploadRecord
from amgmt.store import MetadataStore
from amgmt.store.records import UPSERT_FILE_RECORD, UPSERT_OPERATION, file_row, operation_row

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOSTS = ("ingest-1", "ingest-2", "ingest-3", "edit-1")  # MGMT_HOST_ID of each operation, in turn
BATCH = 20_000


def _records(count: int) -> Iterator[OperationRecord]:
    step = timedelta(days=365) / count
    for i in range(count):
        name = f"A{i // 1000:04d}_C{i % 1000:03d}.MP4"
        started = T0 + step * i
        if i % 20 == 19:
            yield OperationRecord(
                operation_id=str(uuid.uuid4()),
                operation_type="delete",
                target_path=f"s3://media/{name}.tar.gz",
                target_name=f"{name}.tar.gz",
                started_at=started,
                status=OperationStatus.SUCCESS,
                host_id=HOSTS[i % len(HOSTS)],
            )
            continue
        status = OperationStatus.FAILED if i % 50 == 7 else OperationStatus.SUCCESS
        record = UploadRecord(
            operation_id=str(uuid.uuid4()),
            target_path=f"/media/in/{name}",
            target_name=name,
            started_at=started,
            status=status,
            s3_bucket="media",
            s3_object_key=f"{name}.tar.gz",
            original_size=64 * 1024 * 1024,
            checksum_original=f"{i:064x}",
            user="editor",
            command_args={"command": "upload all", "concurrency": 8},
            host_id=HOSTS[i % len(HOSTS)],
        )
        for role, location in (
            (FileRole.SOURCE, Location.LOCAL),
            (FileRole.COMPRESSED, Location.LOCAL),
            (FileRole.S3, Location.S3),
            (FileRole.COMPLETED, Location.COMPLETED),
        ):
            record.set_file_record(
                role,
                FileRecord(
                    name=name,
                    path=f"/media/{role.value}/{name}",
                    location=location,
                    size=64 * 1024 * 1024,
                    is_directory=False,
                    created_at=started,
                    modified_at=started,
                    checksum=f"{i:064x}",
                    status=FileStatus.COMPLETED,
                ),
            )
        yield record


def build(db: Path, count: int) -> None:
    async def create() -> None:
        async with MetadataStore(db):
            pass  # the schema, by amgmt's own migrations

    anyio.run(create)
    started = time.perf_counter()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    ops: list[list[object]] = []
    files: list[list[object]] = []
    for n, record in enumerate(_records(count), 1):
        ops.append(operation_row(record))
        if isinstance(record, UploadRecord):
            files.extend(file_row(record.operation_id, role, f) for role, f in record.file_records().items())
        if len(ops) == BATCH or n == count:
            with conn:
                conn.executemany(UPSERT_OPERATION, ops)
                conn.executemany(UPSERT_FILE_RECORD, files)
            ops, files = [], []
            print(f"\r{n:,} operations", end="", file=sys.stderr, flush=True)
    conn.execute("ANALYZE")
    conn.close()
    print(f"\nbuilt in {time.perf_counter() - started:.0f} s, {db.stat().st_size / 2**20:.0f} MiB", file=sys.stderr)


COMMANDS: tuple[tuple[str, list[str]], ...] = (
    ("history (newest 20)", ["history"]),
    ("history -n 1000", ["history", "-n", "1000"]),
    ("history --status failed", ["history", "--status", "failed"]),
    ("history --type delete", ["history", "--type", "delete"]),
    ("history --status cancelled (a status no row has)", ["history", "--status", "cancelled"]),
    ("history --type restore (a type no row has)", ["history", "--type", "restore"]),
    ("history --since (last week)", ["history", "--since", "2026-12-24"]),
    ("history --host ingest-2", ["history", "--host", "ingest-2"]),
    ("history --host (a host no row has)", ["history", "--host", "no-such-host"]),
    (
        "history --host ingest-2 --status failed --since 2026-12-01",
        ["history", "--host", "ingest-2", "--status", "failed", "--since", "2026-12-01"],
    ),
    ("history --location completed (EXISTS per row, newest first)", ["history", "--location", "completed"]),
    ("history --target (substring: reads rows until 20 match)", ["history", "--target", "C999"]),
    ("history --target (no match: reads every row)", ["history", "--target", "no-such-name"]),
    ("stats --since (last week)", ["stats", "--since", "2026-12-24"]),
    ("stats (every upload: a year, 950,000)", ["stats"]),
    ("fleet", ["fleet"]),
    ("show ID-PREFIX", ["show", "SHOW_ID"]),
)
# These ask the bucket too (a HEAD; a listing of the prefix): timed only with --endpoint-url.
S3_COMMANDS: tuple[tuple[str, list[str]], ...] = (
    ("status NAME (its operations by key, path and name)", ["status", "A0500_C123.MP4"]),
    ("search KEYWORD s3 (objects listed, joined with every upload's summary)", ["search", "C999", "s3"]),
)


def time_command(db: Path, args: Sequence[str], rounds: int, s3: dict[str, str] | None = None) -> tuple[float, int]:
    env = {
        **os.environ,
        "MGMT_DB_PATH": str(db),
        "MGMT_BUCKET": "media",
        "MGMT_LOCAL_DIR": str(db.parent / "media"),
        "MGMT_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        **(s3 or {}),
    }
    walls = []
    code = 0
    for _ in range(rounds):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "amgmt", *args], env=env, capture_output=True, check=False)
        walls.append(time.perf_counter() - started)
        code = done.returncode
    return statistics.median(walls), code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--operations", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=Path("/tmp/amgmt-history-scale/operations.db"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--endpoint-url", help="an S3 endpoint with a bucket `media`, for status and search")
    parser.add_argument("--access-key", default="testkey")
    parser.add_argument("--secret-key", default="testsecret")
    parser.add_argument("--only", help="time only the commands whose label contains this")
    args = parser.parse_args(argv)
    if not args.db.exists():
        args.db.parent.mkdir(parents=True, exist_ok=True)
        build(args.db, args.operations)
    (args.db.parent / "media").mkdir(exist_ok=True)
    conn = sqlite3.connect(args.db)
    count = conn.execute("SELECT count(*) FROM operations").fetchone()[0]
    stats = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone()[0]
    some_id = conn.execute("SELECT operation_id FROM operations LIMIT 1 OFFSET 123456").fetchone()[0]
    conn.close()
    baseline, _ = time_command(args.db, ["--version"], args.rounds)
    print(
        f"{count:,} operations ({'with' if stats else 'without'} ANALYZE statistics);"
        f" `amgmt --version` (start-up alone): {baseline:.2f} s\n"
    )
    print("| command | wall s (median) | exit |")
    print("| --- | ---: | ---: |")
    s3 = None
    commands = list(COMMANDS)
    if args.endpoint_url:
        s3 = {
            "MGMT_ENDPOINT_URL": args.endpoint_url,
            "AWS_ACCESS_KEY_ID": args.access_key,
            "AWS_SECRET_ACCESS_KEY": args.secret_key,
        }
        commands += S3_COMMANDS
    for label, command in commands:
        if args.only and args.only not in label:
            continue
        command = [some_id[:8] if arg == "SHOW_ID" else arg for arg in command]
        wall, code = time_command(args.db, [*command, "--json"], args.rounds, s3)
        print(f"| `{label}` | {wall:.2f} | {code} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
