"""The metadata store's cost per save: N `save_operation` calls of an upload with its four file records, wall and CPU.

Three shapes: one task saving in turn (`serial`), 8 tasks at once (`concurrent`, a run's default concurrency), and
one task saving while 16 others keep the event loop busy (`busy`, as during an upload; each hand-over between the
loop and the connection's thread waits for a turn). Prints one line per shape; `--json` for a machine.

    python benchmarks/store_saves.py [--saves 10000] [--json]

Before the layout split (b517d6c and earlier) MetadataStore is imported from amgmt.store.sqlite.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio

from amgmt.models import FileRecord, FileRole, FileStatus, Location, UploadRecord, new_operation_id
from amgmt.store import MetadataStore

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LOCATIONS = {FileRole.SOURCE: Location.LOCAL, FileRole.COMPRESSED: Location.LOCAL, FileRole.S3: Location.S3,
             FileRole.COMPLETED: Location.COMPLETED}


def make_upload(number: int) -> UploadRecord:
    name = f"entry-{number:06d}"
    record = UploadRecord(operation_id=new_operation_id(), target_path=f"/media/in/{name}", target_name=name,
                          started_at=T0, s3_bucket="media", s3_object_key=f"archive/{name}.tar.gz",
                          original_size=65536, checksum_original=f"sha-{name}", user="bench",
                          command_args={"source": "/media/in", "workers": 8})
    for role, location in LOCATIONS.items():
        record.set_file_record(role, FileRecord(
            name=name, path=f"/media/{role.value}/{name}", location=location, size=65536,
            is_directory=False, mime_type=None, created_at=T0, modified_at=T0, accessed_at=None,
            checksum="ab" * 32, tags={"role": role.value}, status=FileStatus.COMPLETED))
    return record


async def serial(store: MetadataStore, records: list[UploadRecord]) -> None:
    for record in records:
        await store.save_operation(record)


async def concurrent(store: MetadataStore, records: list[UploadRecord], tasks: int = 8) -> None:
    async with anyio.create_task_group() as tg:
        for start in range(tasks):
            tg.start_soon(serial, store, records[start::tasks])


async def busy(store: MetadataStore, records: list[UploadRecord], spinners: int = 16) -> None:
    done = anyio.Event()

    async def spin() -> None:
        while not done.is_set():
            deadline = time.perf_counter() + 0.0002  # a turn of the loop that does some work (hashing, parsing)
            while time.perf_counter() < deadline:
                pass
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        for _ in range(spinners):
            tg.start_soon(spin)
        await serial(store, records)
        done.set()


SHAPES: dict[str, Callable[[MetadataStore, list[UploadRecord]], Awaitable[None]]] = {
    "serial": serial, "concurrent": concurrent, "busy": busy}


async def measure(saves: int) -> dict[str, dict[str, float]]:
    results = {}
    for shape, run in SHAPES.items():
        count = saves // 20 if shape == "busy" else saves  # the busy loop makes every save slow: fewer of them
        records = [make_upload(n) for n in range(count)]
        with tempfile.TemporaryDirectory() as tmp:
            async with MetadataStore(Path(tmp) / "operations.db") as store:
                wall, cpu = time.perf_counter(), time.process_time()
                await run(store, records)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        results[shape] = {"saves": count, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                          "us_per_save": round(wall / count * 1e6, 1)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = anyio.run(measure, args.saves)
    if args.json:
        print(json.dumps(results))
        return
    for shape, r in results.items():
        print(f"{shape:<11} {r['saves']:>6} saves  wall {r['wall_s']:>7.3f} s  cpu {r['cpu_s']:>7.3f} s  "
              f"{r['us_per_save']:>8.1f} us/save")


if __name__ == "__main__":
    main()
