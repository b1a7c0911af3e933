"""The same upload run on each store backend, side by side: N small entries (incompressible, like photos) sent by one
`upload_batch` to the embedded moto server, records in SQLite (a fresh file) or PostgreSQL (a fresh database of a
server). Runs alternate (sqlite, postgres, sqlite, ...) so that a drift of the machine hits both alike; prints each
run's wall time and the medians' ratio (`--json` for a machine).

    python benchmarks/store_backends.py [--entries 1000] [--size 16384] [--repeats 3] [--concurrency 8]
                                        [--pg-url postgresql://USER:PASSWORD@127.0.0.1:PORT/DB]

Without --pg-url (or MGMT_BENCH_PG_URL) it starts its own server with tests/tools/pg_up.sh, durable as a real one
(fsync and synchronous_commit on, PostgreSQL's defaults), and stops it at the end. The URL's user must be allowed to
create databases. The password is never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio

from amgmt.bench.datasets import make_photo_set
from amgmt.bench.localserver import LOCAL_KEYS, LOCAL_REGION, LocalS3Server, free_port
from amgmt.config import load_settings
from amgmt.local.entries import list_entries
from amgmt.models import OperationStatus
from amgmt.s3 import ClientOptions, S3Bucket
from amgmt.text import redacted_url
from amgmt.upload.batch import upload_batch

PG_SCRIPT = Path(__file__).parent.parent / "tests" / "tools" / "pg_up.sh"


def database_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def create_database(url: str, name: str) -> None:
    import asyncpg  # a benchmark of the store's backends may talk to the server directly

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()


async def one_run(
    backend: str, source: Path, work: Path, *, endpoint: str, bucket: str, pg_url: str | None, concurrency: int
) -> dict[str, object]:
    run_dir = work / f"{backend}-{uuid.uuid4().hex[:8]}"
    local = run_dir / "local"
    shutil.copytree(source, local)
    flags: dict[str, object] = {
        "bucket": bucket,
        "endpoint_url": endpoint,
        "region": LOCAL_REGION,
        "local_dir": str(local),
        "object_prefix": run_dir.name,
        "concurrency": concurrency,
        "db_url": "",
    }
    if backend == "postgres":
        assert pg_url is not None
        name = f"bench_{uuid.uuid4().hex[:12]}"
        await create_database(pg_url, name)
        flags["db_url"] = database_url(pg_url, name)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MGMT_")}
    settings = load_settings(flags=flags, environ=environ, require_bucket=True, cwd=run_dir)
    entries, _ = list_entries(settings)
    started = time.perf_counter()
    report = await upload_batch(settings, entries, credentials=LOCAL_KEYS)
    wall = time.perf_counter() - started
    ok = sum(1 for r in report.records if r.status == OperationStatus.SUCCESS)
    shutil.rmtree(run_dir, ignore_errors=True)
    if ok != len(entries) or report.aborted:
        raise SystemExit(f"{backend}: {ok} of {len(entries)} entries uploaded ({report.aborted or 'no abort'})")
    return {"backend": backend, "entries": len(entries), "wall_seconds": round(wall, 3)}


@asynccontextmanager
async def bench_servers(work: Path, pg_url: str | None, bucket: str) -> AsyncIterator[tuple[str, str, bool]]:
    """(PostgreSQL URL, S3 endpoint, whether the PostgreSQL server is this script's own) for the block: the given
    server, else one of tests/tools/pg_up.sh in `work` (durable: fsync on); the embedded moto server with `bucket`
    created. Both stopped after the block."""
    own_pg = None
    if pg_url is None:
        own_pg = work / "pg"
        subprocess.run(["bash", str(PG_SCRIPT), str(own_pg), str(free_port())], check=True, capture_output=True)
        pg_url = (own_pg / "url").read_text().strip()
    server = LocalS3Server().start()
    try:
        options = ClientOptions(
            bucket=bucket,
            endpoint_url=server.endpoint_url,
            region=LOCAL_REGION,
            checksum_algorithm="md5",
            addressing_style="path",
            max_connections=2,
            local_credentials=LOCAL_KEYS,
        )
        async with S3Bucket.connect(options) as s3:
            await s3.create_bucket()
        yield pg_url, server.endpoint_url, own_pg is not None
    finally:
        server.stop()
        if own_pg is not None:
            subprocess.run(["bash", str(PG_SCRIPT), str(own_pg), "stop"], capture_output=True)


async def main(args: argparse.Namespace) -> dict[str, object]:
    pg_url = args.pg_url or os.environ.get("MGMT_BENCH_PG_URL")
    with tempfile.TemporaryDirectory(prefix="amgmt-store-bench-") as tmp:
        work = Path(tmp)
        bucket = "store-bench"
        async with bench_servers(work, pg_url, bucket) as (url, endpoint, own_pg):
            source = make_photo_set(work / "data", count=args.entries, size=args.size)
            runs = []
            for repeat in range(args.repeats):
                for backend in ("sqlite", "postgres"):
                    result = await one_run(
                        backend,
                        source,
                        work,
                        endpoint=endpoint,
                        bucket=bucket,
                        pg_url=url,
                        concurrency=args.concurrency,
                    )
                    result["repeat"] = repeat
                    runs.append(result)
                    print(f"  {backend:8s} repeat {repeat}: {result['wall_seconds']:.2f} s", file=sys.stderr)
    medians = {
        b: statistics.median(float(r["wall_seconds"]) for r in runs if r["backend"] == b)  # type: ignore[arg-type]
        for b in ("sqlite", "postgres")
    }
    return {
        "entries": args.entries,
        "size": args.size,
        "concurrency": args.concurrency,
        "repeats": args.repeats,
        "postgres": redacted_url(url) if not own_pg else "own pg_up.sh server (fsync on)",
        "runs": runs,
        "median_seconds": medians,
        "postgres_over_sqlite": round(medians["postgres"] / medians["sqlite"], 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--size", type=int, default=16 * 1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pg-url", default=None)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    result = anyio.run(main, arguments)
    if arguments.json:
        print(json.dumps(result, indent=2))
    else:
        m = result["median_seconds"]
        print(
            f"{arguments.entries} entries of {arguments.size} bytes, concurrency {arguments.concurrency}, "
            f"median of {arguments.repeats}: SQLite {m['sqlite']:.2f} s, PostgreSQL {m['postgres']:.2f} s, "  # type: ignore[index]
            f"ratio {result['postgres_over_sqlite']}"
        )
