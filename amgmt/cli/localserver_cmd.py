"""`amgmt local-s3`: run the embedded S3 server in the foreground to try amgmt without an AWS account."""

from __future__ import annotations

import contextlib

import anyio
import asyncclick as click

from amgmt.bench.localserver import LOCAL_CREDENTIALS, LOCAL_REGION, LocalS3Server
from amgmt.cli.common import STOP_SIGNALS, create_local_bucket, say


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
            click.echo(
                "  export "
                + " ".join(f"{k}={v}" for k, v in LOCAL_CREDENTIALS.items())
                + f" AWS_DEFAULT_REGION={LOCAL_REGION}"
            )
            say("press Ctrl-C to stop")
            async for _ in signals:
                break
        finally:
            server.stop()
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
        say("local S3 server stopped", err=True)


def register(group: click.Group) -> None:
    group.add_command(local_s3)
