"""Does `--bwlimit` hold? Uploads generated media with `amgmt upload all --bwlimit RATE` (the CLI, in a subprocess)
to the embedded moto server through a counting TCP proxy on 127.0.0.1, which timestamps every byte amgmt sends,
then reports the rate over the whole run (first to last byte sent) and the worst (lowest and highest) rate over any
window of --window seconds inside it.

    .venv/bin/python benchmarks/bwlimit.py                           # 200 MiB, --bwlimit 20M, 10 s windows
    .venv/bin/python benchmarks/bwlimit.py --mib 400 --rate 10M --window 5

The data set mixes what shares the limit: four large files (multipart uploads, parts in flight at once) and many
1 MiB files (single PUTs), all random bytes (incompressible: what goes on the wire is the data set). Wire bytes
include the requests' headers, HEADs and the checksum probe: a few KiB. The run is measured from the first to the last
time slot (50 ms) that carried bodies; the seconds before (the bucket check, the probe, packing the first entries)
send nothing to limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3

from amgmt.bench.localserver import LOCAL_CREDENTIALS, LOCAL_REGION, LocalS3Server, free_port
from amgmt.config.values import format_rate, parse_rate
from amgmt.parts import MiB

BUCKET_SECONDS = 0.05  # the proxy counts bytes in slots of this length
BODY_SLOT = 32 * 1024  # a slot with this many bytes carried bodies (a HEAD, a probe or a complete is a few KiB)


class CountingProxy:
    """A TCP proxy (its own thread and event loop) that counts the bytes sent upstream, per time slot."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.slots: dict[int, int] = {}
        self.started = time.monotonic()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pipe(reader, up_writer, count=True), self._pipe(up_reader, writer, count=False))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool) -> None:
        try:
            while data := await reader.read(256 * 1024):
                if count:
                    slot = int((time.monotonic() - self.started) / BUCKET_SECONDS)
                    self.slots[slot] = self.slots.get(slot, 0) + len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


def make_media(root: Path, total_mib: int) -> None:
    """Four large files holding 80% of the bytes, the rest as 1 MiB files."""
    rng = random.Random(20)
    large = total_mib * 4 // 5 // 4
    for i in range(4):
        (root / f"GX01{i:04d}.MP4").write_bytes(rng.randbytes(large * MiB))
    for i in range(total_mib - 4 * large):
        (root / f"IMG_{i:04d}.JPG").write_bytes(rng.randbytes(MiB))


def rates(slots: dict[int, int], window: float) -> tuple[float, float, float, float, int]:
    """(MiB/s over the whole run, lowest and highest MiB/s over any `window` seconds in it, seconds, bytes). The run
    is from the first to the last slot that carried request bodies (BODY_SLOT bytes): the bucket check, the checksum
    probe and the compression of the first entries come before any body, the last verification after."""
    carrying = [slot for slot, count in slots.items() if count >= BODY_SLOT]
    first, last = min(carrying), max(carrying)
    series = [slots.get(i, 0) for i in range(first, last + 1)]
    seconds = len(series) * BUCKET_SECONDS
    total = sum(series)
    width = max(1, round(window / BUCKET_SECONDS))
    if width >= len(series):
        windows = [total / seconds]
    else:
        running = sum(series[:width])
        windows = [running]
        for i in range(width, len(series)):
            running += series[i] - series[i - width]
            windows.append(running)
        windows = [w / (width * BUCKET_SECONDS) for w in windows]
    return total / seconds / MiB, min(windows) / MiB, max(windows) / MiB, seconds, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=200, help="data set size in MiB (default 200)")
    parser.add_argument("--rate", default="20M", help="the --bwlimit to test (default 20M)")
    parser.add_argument("--window", type=float, default=10.0, help="window length in seconds (default 10)")
    args = parser.parse_args()
    limit = parse_rate(args.rate) / MiB
    with tempfile.TemporaryDirectory(prefix="amgmt-bwlimit-") as tmp, LocalS3Server() as server:
        boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            region_name=LOCAL_REGION,
            aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket="amgmt-local")
        local = Path(tmp) / "media"
        local.mkdir()
        make_media(local, args.mib)
        with CountingProxy(server.port) as proxy:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("MGMT_", "AWS_"))}
            env.update(LOCAL_CREDENTIALS, AWS_DEFAULT_REGION=LOCAL_REGION, AWS_CONFIG_FILE=os.devnull)
            env.update(MGMT_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}", MGMT_BUCKET="amgmt-local",
                       MGMT_LOCAL_DIR=str(local), XDG_STATE_HOME=tmp, XDG_CONFIG_HOME=tmp)
            command = [sys.executable, "-m", "amgmt", "upload", "all", "--bwlimit", args.rate, "--no-progress"]
            started = time.monotonic()
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            wall = time.monotonic() - started
        if done.returncode != 0:
            print(done.stdout, done.stderr, sep="\n", file=sys.stderr)
            return 1
    whole, low, high, seconds, total = rates(proxy.slots, args.window)
    print(f"amgmt upload all --bwlimit {args.rate} ({format_rate(parse_rate(args.rate))}/s): "
          f"{args.mib} MiB of media, command {wall:.1f} s")
    print(done.stdout.strip())
    print(f"wire: {total / MiB:.1f} MiB of bodies in {seconds:.2f} s (first to last): {whole:.2f} MiB/s")
    print(f"any {args.window:g} s window: lowest {low:.2f} MiB/s, highest {high:.2f} MiB/s")
    inside = 0.9 * limit <= whole <= 1.1 * limit and high <= 1.1 * limit
    print(f"within 10% of {limit:g} MiB/s: {'yes' if inside else 'NO'}")
    return 0 if inside else 1


if __name__ == "__main__":
    sys.exit(main())
