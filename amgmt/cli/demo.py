"""`amgmt demo`: a sample media folder uploaded to the embedded local S3 server, then the history."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import anyio
import asyncclick as click

from amgmt.datasets import make_demo_media
from amgmt.errors import ConfigError
from amgmt.localserver import LOCAL_CREDENTIALS, LOCAL_KEYS, LOCAL_REGION, LocalS3Server
from amgmt.s3 import ClientOptions, S3Bucket

MARKER = ".amgmt-demo"
BUCKET = "amgmt-demo"


def _fresh_dir(root: Path) -> None:
    if root.exists():
        if not (root / MARKER).exists() and any(root.iterdir()):
            raise ConfigError(f"{root} exists and was not made by `amgmt demo`; choose another --dir")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER).write_text("made by `amgmt demo`; safe to delete\n")


@click.command("demo")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path(".amgmt-demo"), show_default=True,
              help="Working folder (re-created at each run).")
@click.option("-c", "--concurrency", type=click.IntRange(1, 256), default=8, show_default=True)
async def demo(directory: Path, concurrency: int) -> None:
    """Make a sample media folder, start a local S3 server on 127.0.0.1, run
    `amgmt upload all --concurrency N` against it, then `amgmt history`. Nothing leaves this machine."""
    root = directory.resolve()
    _fresh_dir(root)
    media = make_demo_media(root / "media")
    click.echo(f"sample media folder: {media}")
    server = await anyio.to_thread.run_sync(LocalS3Server().start)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MGMT_", "AWS_"))}
        env.update(LOCAL_CREDENTIALS)
        env.update(
            AWS_DEFAULT_REGION=LOCAL_REGION,
            MGMT_ENDPOINT_URL=server.endpoint_url,
            MGMT_BUCKET=BUCKET,
            MGMT_OBJECT_PREFIX="demo",
            MGMT_LOCAL_DIR=str(media),
            XDG_CONFIG_HOME=str(root / "config"),  # the user's own config file stays out of the demo
        )
        options = ClientOptions(bucket=BUCKET, endpoint_url=server.endpoint_url, region=LOCAL_REGION,
                                checksum_mode="when_required", addressing_style="path", max_connections=2,
                                local_credentials=LOCAL_KEYS)
        async with S3Bucket.connect(options) as s3:
            await s3.create_bucket()
        click.echo(f"local S3 server: {server.endpoint_url}, bucket {BUCKET!r}\n")
        code = 0
        for args in (["upload", "all", "--concurrency", str(concurrency)], ["history"]):
            click.echo(f"$ amgmt {' '.join(args)}", err=False)
            done = await anyio.run_process([sys.executable, "-m", "amgmt", *args], env=env, check=False,
                                           stdout=None, stderr=None)
            code = code or done.returncode
            click.echo("")
        click.echo(f"originals now in {media / 'completed'}; records in {media / 'completed/.metadata/operations.db'}")
    finally:
        server.stop()
    if code:
        raise click.exceptions.Exit(code)


def register(group: click.Group) -> None:
    group.add_command(demo)
