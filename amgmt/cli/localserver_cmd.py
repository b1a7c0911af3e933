"""`amgmt local-s3`: run the embedded S3 server in the foreground to try amgmt without an AWS account."""

from __future__ import annotations

import contextlib
import signal

import anyio
import asyncclick as click

from amgmt.bench.localserver import LOCAL_CREDENTIALS, LOCAL_KEYS, LOCAL_REGION, LocalS3Server

# The server runs in its own session (a Ctrl-C in the terminal does not reach it), so every way this command can be
# told to stop must stop it: Ctrl-C, `kill`, and the terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def create_local_bucket(endpoint_url: str, bucket: str) -> None:
    from amgmt.s3 import ClientOptions, S3Bucket  # aioboto3 loads only when a server runs, not for --help

    options = ClientOptions(bucket=bucket, endpoint_url=endpoint_url, region=LOCAL_REGION,
                            checksum_mode="when_required", addressing_style="path", max_connections=2,
                            local_credentials=LOCAL_KEYS)
    async with S3Bucket.connect(options) as s3:
        await s3.create_bucket()


@click.command("local-s3")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port on 127.0.0.1 [default: a free one].")
@click.option("--bucket", type=str, default="amgmt-local", show_default=True, help="Bucket to create at start.")
async def local_s3(port: int | None, bucket: str) -> None:
    """Start a local S3 server (moto) on 127.0.0.1 and keep it running until Ctrl-C.

    Data lives in memory and is gone when it stops. Point amgmt at it with the variables it prints.

    Ctrl-C, SIGTERM or SIGHUP stops the server and exits 0: stopping is how this command ends, not a failure.
    """
    server = LocalS3Server(port=port)
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        # A signal during start-up waits in `signals` and stops the server as soon as it is up.
        try:
            await anyio.to_thread.run_sync(server.start)
            await create_local_bucket(server.endpoint_url, bucket)
            click.echo(f"local S3 server on {server.endpoint_url} (pid {server.pid}); bucket {bucket!r} created")
            click.echo("use it from another shell with:")
            click.echo(f"  export MGMT_ENDPOINT_URL={server.endpoint_url} MGMT_BUCKET={bucket}")
            click.echo("  export " + " ".join(f"{k}={v}" for k, v in LOCAL_CREDENTIALS.items())
                       + f" AWS_DEFAULT_REGION={LOCAL_REGION}")
            click.echo("press Ctrl-C to stop")
            async for _ in signals:
                break
        finally:
            server.stop()
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
        click.echo("local S3 server stopped", err=True)


def register(group: click.Group) -> None:
    group.add_command(local_s3)
