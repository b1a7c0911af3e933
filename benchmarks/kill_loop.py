"""The random-kill loop: `amgmt upload all` killed with SIGKILL at random moments, again and again, the iron rule
checked after every kill, then a last run that must finish everything exactly once.

    python benchmarks/kill_loop.py --rounds 40 [--cross-fs] [--seed 1]

It starts its own moto server on 127.0.0.1 and works in a temp dir. After each kill, every entry must still be whole
somewhere on disk (the local dir or the completed dir, leftovers of an interrupted move included), and an entry that
sits whole in the completed dir must have its object in the bucket, holding exactly the archive its metadata names.
Every few rounds a fresh set of entries is added, so the kills land in every stage. The last, unkilled run must leave
every entry in the completed dir exactly once with a verified object, nothing pending, no multipart upload open, the
staging dir empty and no `.amgmt-*` leftover. `--cross-fs` puts the completed dir on /dev/shm (another filesystem),
which exercises the copy-then-remove move. Prints the counts as JSON; exit 1 on any loss or violation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

from amgmt.bench.localserver import LOCAL_CREDENTIALS, LOCAL_REGION, LocalS3Server

MiB = 1024 * 1024
BUCKET = "kill-loop"


def manifest(path: Path, name: str) -> str:
    """The entry's content digest as amgmt's `checksum_original` defines it, with the root named `name` (so that a
    leftover under a temporary name is recognised as the entry)."""
    st = path.lstat()
    if stat.S_ISREG(st.st_mode):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    lines = []
    for root, _dirs, files in os.walk(path):
        rel_root = os.path.relpath(root, path)
        prefix = name if rel_root == "." else f"{name}/{rel_root}"
        lines.append((os.fsencode(prefix), b"dir", b"0", b""))
        for file in files:
            full = Path(root, file)
            if full.is_symlink():
                lines.append((os.fsencode(f"{prefix}/{file}"), b"symlink", b"0", os.fsencode(os.readlink(full))))
                continue
            data = full.read_bytes()
            digest = hashlib.sha256(data).hexdigest().encode()
            lines.append((os.fsencode(f"{prefix}/{file}"), b"file", str(len(data)).encode(), digest))
    return hashlib.sha256(b"".join(b"\0".join(line) + b"\n" for line in sorted(lines))).hexdigest()


def make_entries(local: Path, rng: random.Random, batch: int) -> dict[str, str]:
    made: dict[str, str] = {}
    for i in range(4):
        name = f"b{batch}-clip{i}.mp4"
        (local / name).write_bytes(rng.randbytes(rng.choice([30_000, 2 * MiB, 11 * MiB])))
        made[name] = manifest(local / name, name)
    folder = local / f"b{batch}-project"
    (folder / "raw").mkdir(parents=True)
    for i in range(12):
        (folder / "raw" / f"t{i}.csv").write_text(f"{batch},{i}," * rng.randint(10, 3000))
    (folder / "take.bin").write_bytes(rng.randbytes(3 * MiB))
    made[folder.name] = manifest(folder, folder.name)
    return made


def whole_somewhere(name: str, digest: str, roots: list[Path]) -> list[Path]:
    """Paths under `roots` (one level deep: the entry itself, or a leftover named after it) holding the entry whole."""
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        for item in root.iterdir():
            if item.name == name or (item.name.startswith(".amgmt-") and name[:60] in item.name):
                try:
                    if manifest(item, name) == digest:
                        found.append(item)
                except OSError:
                    continue
    return found


def check(entries: dict[str, str], local: Path, completed: Path, client: Any) -> list[str]:
    problems = []
    for name, digest in entries.items():
        if not whole_somewhere(name, digest, [local, completed]):
            problems.append(f"LOSS: {name} is whole nowhere on disk")
        target = completed / name
        if target.exists():
            try:
                same = manifest(target, name) == digest
            except OSError:
                same = False
            if not same:
                continue  # an interrupted copy under the plain name would be a violation of its own
            try:
                head = client.head_object(Bucket=BUCKET, Key=f"{name}.tar.gz")
            except client.exceptions.ClientError:
                problems.append(f"{name} is in the completed dir without an object")
                continue
            if head["Metadata"].get("amgmt-source-sha256") != digest:
                problems.append(f"{name} is in the completed dir, its object holds other content")
                continue
            data = client.get_object(Bucket=BUCKET, Key=f"{name}.tar.gz")["Body"].read()
            if hashlib.sha256(data).hexdigest() != head["Metadata"].get("amgmt-archive-sha256"):
                problems.append(f"{name}: the object is not the archive its metadata names")
    return problems


def final_check(entries: dict[str, str], local: Path, completed: Path, db: Path, staging: Path,
                client: Any) -> list[str]:
    problems = check(entries, local, completed, client)
    for name, digest in entries.items():
        if (local / name).exists():
            problems.append(f"{name} is still in the local dir after the last run")
        if not (completed / name).exists() or manifest(completed / name, name) != digest:
            problems.append(f"{name} is not whole in the completed dir after the last run")
    leftovers = [p.name for root in (local, completed) if root.is_dir() for p in root.iterdir()
                 if p.name.startswith(".amgmt-")]
    if leftovers:
        problems.append(f"leftovers after the last run: {leftovers}")
    if client.list_multipart_uploads(Bucket=BUCKET).get("Uploads"):
        problems.append("multipart uploads left open")
    if staging.is_dir() and any(staging.iterdir()):
        problems.append(f"staging not empty: {sorted(p.name for p in staging.iterdir())}")
    with sqlite3.connect(db) as conn:
        pending = conn.execute("SELECT count(*) FROM operations WHERE status = 'pending'").fetchone()[0]
    if pending:
        problems.append(f"{pending} operations still pending")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cross-fs", action="store_true", help="completed dir on /dev/shm (another filesystem)")
    parser.add_argument("--new-entries-every", type=int, default=4)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="amgmt-kill-loop-"))
    shm = Path(tempfile.mkdtemp(prefix="amgmt-kill-loop-", dir="/dev/shm")) if args.cross_fs else None
    local = work / "media"
    local.mkdir()
    completed = (shm / "completed") if shm else local / "completed"
    metadata = work / "metadata"
    counts: dict[str, Any] = {"rounds": args.rounds, "kills": 0, "finished_before_kill": 0, "checks": 0,
                              "entries": 0, "losses": 0, "violations": 0, "cross_fs": args.cross_fs}
    problems: list[str] = []
    with LocalS3Server() as server:
        client = boto3.client("s3", endpoint_url=server.endpoint_url, region_name=LOCAL_REGION,
                              aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket=BUCKET)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MGMT_", "AWS_"))}
        env.update(LOCAL_CREDENTIALS, AWS_DEFAULT_REGION=LOCAL_REGION, MGMT_BUCKET=BUCKET,
                   MGMT_LOCAL_DIR=str(local), MGMT_ENDPOINT_URL=server.endpoint_url, MGMT_PART_SIZE="5MiB",
                   MGMT_CONCURRENCY="3", MGMT_COMPLETED_DIR=str(completed),
                   MGMT_DB_PATH=str(metadata / "operations.db"), MGMT_STAGING_DIR=str(metadata / "staging"))
        entries: dict[str, str] = {}
        for round_ in range(args.rounds):
            if round_ % args.new_entries_every == 0:
                entries.update(make_entries(local, rng, round_ // args.new_entries_every))
            proc = subprocess.Popen([sys.executable, "-m", "amgmt", "upload", "all", "--no-progress"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.2, 2.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                counts["kills"] += 1
            else:
                counts["finished_before_kill"] += 1
            _, stderr = proc.communicate()
            if b"Traceback" in stderr:
                problems.append(f"round {round_}: traceback: {stderr.decode(errors='replace')[-400:]}")
            found = check(entries, local, completed, client)
            counts["checks"] += 1
            problems += [f"round {round_}: {p}" for p in found]
        last = subprocess.run([sys.executable, "-m", "amgmt", "upload", "all", "--no-progress"], env=env,
                              capture_output=True, text=True)
        counts["last_run_exit"] = last.returncode
        if last.returncode != 0:
            problems.append(f"last run exit {last.returncode}: {last.stderr[-600:]}")
        problems += [f"last run: {p}" for p in final_check(entries, local, completed, metadata / "operations.db",
                                                            metadata / "staging", client)]
    counts["entries"] = len(entries)
    counts["losses"] = sum("LOSS" in p for p in problems)
    counts["violations"] = len(problems) - counts["losses"]
    counts["problems"] = problems[:20]
    print(json.dumps(counts, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    if shm:
        shutil.rmtree(shm, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
