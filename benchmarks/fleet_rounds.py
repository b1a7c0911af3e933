"""Whole `amgmt upload all` runs (the CLI, timed with /usr/bin/time) side by side in one process, alternating rounds on
fresh copies of one data set, against the embedded moto server:

- `backends`: one run on N small entries with the records in SQLite (a fresh file) vs PostgreSQL (a fresh database);
- `fleet`: on PostgreSQL, one run vs RUNS runs at once on the same folder (each entry claimed by one of them), the
  wall time until the last run ends.

    python benchmarks/fleet_rounds.py backends [--entries 1000] [--size 16384] [--rounds 3] [--pg-url URL]
    python benchmarks/fleet_rounds.py fleet [--entries 600] [--large 4] [--large-size 33554432] [--runs 3] ...

Without --pg-url (or MGMT_BENCH_PG_URL) it starts its own server with tests/tools/pg_up.sh (durable: fsync and
synchronous_commit on, the defaults) and stops it at the end. The URL's password is never printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import anyio
from store_backends import bench_servers, create_database, database_url

from amgmt.bench.datasets import make_photo_set
from amgmt.bench.localserver import LOCAL_KEYS, LOCAL_REGION

ROOT = Path(__file__).resolve().parent.parent


def timed_runs(local: Path, env: dict[str, str], count: int, work: Path) -> tuple[float, float, float]:
    """`count` CLI runs at once on `local`, each under /usr/bin/time: (wall until the last ends, user, sys)."""
    procs = []
    for n in range(count):
        out = work / f"time-{n}-{uuid.uuid4().hex[:6]}"
        command = ["/usr/bin/time", "-f", "%e %U %S", "-o", str(out), sys.executable, "-m", "amgmt", "upload", "all"]
        run_env = {**env, "MGMT_LOCAL_DIR": str(local), "MGMT_HOST_ID": f"bench-{n}"}
        procs.append((subprocess.Popen([*command, "-q", "--no-progress"], env=run_env, cwd=ROOT), out))
    wall = user = system = 0.0
    for proc, out in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a run exited {proc.returncode}")
        w, u, s = (float(x) for x in out.read_text().split()[-3:])
        wall, user, system = max(wall, w), user + u, system + s
    left = [p.name for p in local.iterdir() if p.name != "completed"]
    if left:
        raise SystemExit(f"{len(left)} entries left in {local}")
    return wall, user, system


def run_env(endpoint: str, bucket: str, prefix: str, db_url: str | None, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGMT_")}
    env.update(
        MGMT_ENDPOINT_URL=endpoint,
        MGMT_BUCKET=bucket,
        MGMT_REGION=LOCAL_REGION,
        MGMT_OBJECT_PREFIX=prefix,
        AWS_ACCESS_KEY_ID=LOCAL_KEYS[0],
        AWS_SECRET_ACCESS_KEY=LOCAL_KEYS[1],
        HOME=str(home),
        PYTHONPATH=str(ROOT),
    )
    if db_url:
        env["MGMT_DB_URL"] = db_url
    return env


async def main(args: argparse.Namespace) -> None:
    pg_url = args.pg_url or os.environ.get("MGMT_BENCH_PG_URL")
    with tempfile.TemporaryDirectory(prefix="amgmt-fleet-bench-") as tmp:
        work = Path(tmp)
        bucket = "fleet-bench"
        async with bench_servers(work, pg_url, bucket) as (url, endpoint, _):
            source = make_photo_set(work / "data", count=args.entries, size=args.size)
            for n in range(args.large if args.mode == "fleet" else 0):
                with open(source / f"TAKE_{n:03d}.mov", "wb") as out:
                    out.write(os.urandom(args.large_size))
            kinds = ["sqlite", "postgres"] if args.mode == "backends" else ["one", f"{args.runs}-runs"]
            results: dict[str, list[float]] = {k: [] for k in kinds}
            for round_ in range(args.rounds):
                for kind in kinds:
                    run_dir = work / f"{kind}-{uuid.uuid4().hex[:8]}"
                    local = run_dir / "local"
                    shutil.copytree(source, local)
                    db_url = None
                    if kind != "sqlite":
                        name = f"bench_{uuid.uuid4().hex[:12]}"
                        await create_database(url, name)
                        db_url = database_url(url, name)
                    env = run_env(endpoint, bucket, run_dir.name, db_url, run_dir)
                    count = args.runs if kind.endswith("-runs") else 1
                    wall, user, system = await anyio.to_thread.run_sync(timed_runs, local, env, count, run_dir)
                    results[kind].append(wall)
                    print(
                        f"round={round_} kind={kind} entries={len(list(source.iterdir()))} wall={wall:.2f}"
                        f" user={user:.2f} sys={system:.2f}",
                        flush=True,
                    )
                    shutil.rmtree(run_dir, ignore_errors=True)
    medians = {k: statistics.median(v) for k, v in results.items()}
    first, second = kinds
    print(
        f"median wall: {first} {medians[first]:.2f} s, {second} {medians[second]:.2f} s,"
        f" ratio {medians[second] / medians[first]:.3f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("mode", choices=["backends", "fleet"])
    parser.add_argument("--entries", type=int, default=None)
    parser.add_argument("--size", type=int, default=16 * 1024)
    parser.add_argument("--large", type=int, default=4)
    parser.add_argument("--large-size", type=int, default=32 * 1024 * 1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-url", default=None)
    arguments = parser.parse_args()
    if arguments.entries is None:
        arguments.entries = 1000 if arguments.mode == "backends" else 600
    anyio.run(main, arguments)
