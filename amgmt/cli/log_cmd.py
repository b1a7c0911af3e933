"""`amgmt log`: the end of amgmt's rotating log file, and with --follow what is appended to it."""

from __future__ import annotations

import signal
from pathlib import Path

import aiofiles
import aiofiles.os
import anyio
import asyncclick as click

from amgmt.cli.common import log_path, say


async def _last_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines, without their newline. The whole file is read in one call: it is rotated at 5 MiB,
    and reading it line by line through aiofiles would cost one thread hand-over per line."""
    if count == 0:
        return []
    try:
        async with aiofiles.open(path, encoding="utf-8", errors="replace") as handle:
            text = await handle.read()
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines[-count:]


async def _follow(path: Path, position: int, identity: tuple[int, int] | None) -> None:
    """Print what is appended to `path` from `position`; start over when the file is rotated or truncated."""
    partial = ""
    while True:
        await anyio.sleep(0.2)
        try:
            stat = await aiofiles.os.stat(path)
        except FileNotFoundError:
            continue
        if (stat.st_dev, stat.st_ino) != identity or stat.st_size < position:
            identity, position, partial = (stat.st_dev, stat.st_ino), 0, ""
        if stat.st_size == position:
            continue
        async with aiofiles.open(path, "rb") as handle:
            await handle.seek(position)
            chunk = await handle.read()
        position += len(chunk)
        text = partial + chunk.decode("utf-8", errors="replace")
        *complete, partial = text.split("\n")
        for line in complete:
            click.echo(line)


@click.command("log")
@click.option(
    "-n",
    "--lines",
    "count",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many of the last lines to print.",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until Ctrl-C.")
async def log(count: int, follow: bool) -> None:
    """Print the last lines of amgmt's log file, and with --follow the new ones.

    The file is $XDG_STATE_HOME/amgmt/amgmt.log (default ~/.local/state/amgmt/amgmt.log), rotated at 5 MiB with
    3 old files kept. Commands that do work log there; -v/--verbose or --debug also print the lines on stderr.
    """
    path = log_path()
    try:
        stat = await aiofiles.os.stat(path)
        position, identity = stat.st_size, (stat.st_dev, stat.st_ino)
    except FileNotFoundError:
        position, identity = 0, None
    for line in await _last_lines(path, count):
        click.echo(line)
    if not follow:
        if identity is None:
            say(f"(no log yet: {path})", err=True)
        return
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        tg.start_soon(_follow, path, position, identity)


def register(group: click.Group) -> None:
    group.add_command(log)
