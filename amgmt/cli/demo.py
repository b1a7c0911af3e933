"""`amgmt demo`: a sample media folder uploaded to the embedded local S3 server, then the history."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncclick as click
from anyio.abc import Process

from amgmt.bench.datasets import make_demo_media
from amgmt.bench.localserver import LOCAL_CREDENTIALS, LOCAL_REGION, LocalS3Server
from amgmt.cli.common import STOP_SIGNALS, create_local_bucket, say
from amgmt.errors import AmgmtError, ConfigError, ExitCode

MARKER = ".amgmt-demo"
BUCKET = "amgmt-demo"


def _fresh_dir(root: Path) -> None:
    if root.exists():
        if not (root / MARKER).exists() and any(root.iterdir()):
            raise ConfigError(f"{root} exists and was not made by `amgmt demo`; choose another --dir")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER).write_text("made by `amgmt demo`; safe to delete\n")


class _Steps:
    """Runs the demo's `amgmt` commands one at a time, each in its own session, and owns what a stop signal does.

    In its own session a command does not also get the terminal's Ctrl-C, so it receives each signal exactly once,
    from here: its first stops it the way `amgmt upload` documents (entries in flight are recorded as cancelled), a
    second at once. A signal while no command runs cancels `scope`, the demo's own work.
    """

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.stopped_by: int | None = None
        self._process: Process | None = None

    async def watch(self, signals: AsyncIterator[signal.Signals]) -> None:
        async for signum in signals:
            self.stopped_by = signum
            if self._process is not None and self._process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._process.send_signal(signum)
            else:
                self.scope.cancel()

    async def run(self, args: list[str], env: dict[str, str]) -> int:
        async with await anyio.open_process(
            [sys.executable, "-m", "amgmt", *args],
            env=env,
            stdin=None,
            stdout=None,
            stderr=None,
            start_new_session=True,
        ) as process:
            self._process = process
            try:
                return await process.wait()
            finally:
                self._process = None


@click.command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=Path(".amgmt-demo"),
    show_default=True,
    help="Working folder (re-created at each run).",
)
@click.option("-c", "--concurrency", type=click.IntRange(1, 256), default=8, show_default=True)
async def demo(directory: Path, concurrency: int) -> None:
    """Make a sample media folder, start a local S3 server on 127.0.0.1, run
    `amgmt upload all --concurrency N` against it, then `amgmt history`. Nothing leaves this machine.

    Ctrl-C, SIGTERM or SIGHUP stops the step under way (as it stops `amgmt upload`), then the server; the exit code
    is then 130.
    """
    root = directory.resolve()
    _fresh_dir(root)
    media = make_demo_media(root / "media")
    say(f"sample media folder: {media}")
    server = LocalS3Server()
    steps = _Steps()
    code = 0
    failure: AmgmtError | None = None
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with anyio.create_task_group() as tg:
            tg.start_soon(steps.watch, signals)
            try:
                with steps.scope:
                    code = await _run_demo(server, root, media, concurrency, steps)
            except AmgmtError as exc:
                failure = exc  # raised below, outside the task group, so that it is not wrapped in an ExceptionGroup
            finally:
                server.stop()
                tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if steps.stopped_by is not None:
        raise click.exceptions.Exit(int(ExitCode.INTERRUPTED))
    if code:
        raise click.exceptions.Exit(code)


async def _run_demo(server: LocalS3Server, root: Path, media: Path, concurrency: int, steps: _Steps) -> int:
    await anyio.to_thread.run_sync(server.start)
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
    await create_local_bucket(server.endpoint_url, BUCKET)
    say(f"local S3 server: {server.endpoint_url}, bucket {BUCKET!r}\n")
    code = 0
    for args in (["upload", "all", "--concurrency", str(concurrency)], ["history"]):
        say(f"$ amgmt {' '.join(args)}")
        returncode = await steps.run(args, env)
        code = code or returncode
        say("")
        if steps.stopped_by is not None:
            return int(ExitCode.INTERRUPTED)
    say(f"originals now in {media / 'completed'}; records in {media / 'completed/.metadata/operations.db'}")
    return code


def register(group: click.Group) -> None:
    group.add_command(demo)
